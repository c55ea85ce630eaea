"""The ``scrapy-capsolver-ocr`` command (also ``python -m scrapy_capsolver_ocr``)."""

from .commands import main

__all__ = ["main"]
