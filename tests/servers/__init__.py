"""Test servers run in subprocesses, and :mod:`servers.process` to start them.

pytest puts ``tests/`` on ``sys.path`` (there is no ``tests/__init__.py``): import them as
``servers.…``.
"""
