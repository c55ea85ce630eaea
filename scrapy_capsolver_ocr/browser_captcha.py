"""Moved to :mod:`scrapy_capsolver_ocr.integration.playwright_pages`; this path keeps working
for the page method that browser requests queued in a JOBDIR by earlier versions name, and
for ``solve_page_captcha`` imported from here."""

from .integration.playwright_pages import capture_element, solve_page_captcha

__all__ = ["capture_element", "solve_page_captcha"]
