"""The one way this package finds Twisted's reactor."""

from __future__ import annotations

from typing import Any


def installed_reactor(reactor: Any = None) -> Any:
    """``reactor`` when given (tests pass a clock or their own), else the installed one.

    The import is late on purpose: importing ``twisted.internet.reactor`` installs the
    default reactor, and at import time Scrapy has not yet installed the one that
    ``TWISTED_REACTOR`` names.
    """
    if reactor is not None:
        return reactor
    from twisted.internet import reactor as installed

    return installed
