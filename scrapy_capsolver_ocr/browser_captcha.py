"""Moved to :mod:`scrapy_capsolver_ocr.integration.playwright_pages`; this path keeps working
for the page method that browser requests queued in a JOBDIR by earlier versions name."""

from .integration.playwright_pages import capture_element

__all__ = ["capture_element"]
