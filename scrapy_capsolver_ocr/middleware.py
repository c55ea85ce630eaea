"""Moved to :mod:`scrapy_capsolver_ocr.integration.middleware`; this path keeps working."""

from .integration.middleware import CaptchaSolverMiddleware

__all__ = ["CaptchaSolverMiddleware"]
