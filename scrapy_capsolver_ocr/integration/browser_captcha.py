"""The middleware's browser responses (scrapy-playwright): checked before they are sent,
and their captcha solved when they come back.

A captcha drawn in a ``<canvas>``, set as a CSS background, or valid only in the browser
session that loaded it cannot be downloaded by URL; a screenshot of its element can be
solved like any image (:mod:`.playwright_pages`). Playwright is imported inside the functions
only: the plugin imports and works without it (``pip install
"scrapy-capsolver-ocr[playwright]"`` adds it).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import CaptchaImageError, CaptchaOptionsError
from .page_captcha import check_displayed, http_url
from .playwright_pages import capture_element, solve_on_page

if TYPE_CHECKING:
    from playwright.async_api import Page
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from ..solution import CaptchaSolution
    from ..solving.options import SolveOptions
    from ..solving.solver import CaptchaSolver

logger = logging.getLogger(__name__)

#: The key of the capturing page method when ``playwright_page_methods`` is a dict.
PAGE_METHOD_KEY = "capsolver_captcha"

# Requests


def check_request(request: Request, options: SolveOptions, timeout: float) -> None:
    """Check the browser options of a request before it is downloaded.

    On a Playwright request without ``playwright_include_page``, scrapy-playwright closes
    the page before the response exists, so a page method is added that takes the
    screenshot in the browser, after the request's own page methods.
    """
    if not request.meta.get("playwright"):
        if options.fill is not None:
            raise CaptchaOptionsError(
                "meta['solve_image']['fill'] types into a live browser page: it needs "
                "meta['playwright'] = True and meta['playwright_include_page'] = True "
                "(scrapy-playwright)."
            )
        return
    if options.selector is None:
        raise CaptchaOptionsError(
            "On a Playwright request, meta['solve_image'] needs a 'selector' of the captcha "
            "element (an <img>, a <canvas>, any element): the browser shows the captcha "
            "inside a page, and the middleware captures that element."
        )
    try:
        from scrapy_playwright.page import PageMethod
    except ImportError:
        raise CaptchaOptionsError(
            "meta['playwright'] is set but scrapy-playwright is not installed: "
            'pip install "scrapy-capsolver-ocr[playwright]"'
        ) from None
    if request.meta.get("playwright_include_page"):
        return
    if options.fill is not None:
        raise CaptchaOptionsError(
            "meta['solve_image']['fill'] types into the live page, but scrapy-playwright "
            "closes the page before the callback unless meta['playwright_include_page'] is "
            "True: set it, and close response.meta['playwright_page'] in the callback."
        )
    capture = PageMethod(capture_element, options.selector, timeout)
    methods = request.meta.get("playwright_page_methods") or []
    if isinstance(methods, dict):
        request.meta["playwright_page_methods"] = {**methods, PAGE_METHOD_KEY: capture}
    else:
        # A retried request carries the capture of its first attempt: replace it.
        kept = [
            method for method in methods if getattr(method, "method", None) is not capture_element
        ]
        request.meta["playwright_page_methods"] = [*kept, capture]


async def solve_browser_response(
    crawler: Crawler,
    solver: CaptchaSolver,
    request: Request,
    response: Response,
    options: SolveOptions,
    timeout: float,
    attempt: int = 1,
) -> CaptchaSolution | None:
    """Solve the captcha of a Playwright response; None when it is not one.

    The live page (``playwright_include_page``) is closed when solving fails, before the
    errback runs: a request that failed never leaves a page open. A page the spider will
    not get (an HTTP error status it does not handle) is not solved.
    """
    if not request.meta.get("playwright") or options.selector is None:
        return None  # no selector: an image body that CAPSOLVER_URL_PATTERNS matched
    page: Page | None = request.meta.get("playwright_page")
    # The page method check_request added, when scrapy-playwright kept the page to itself.
    capture: Any = None
    if page is None:
        capture = _capture_of(request.meta.get("playwright_page_methods"))
    try:
        if page is None and not isinstance(getattr(capture, "result", None), bytes):
            raise CaptchaImageError(
                f"The Playwright request {request.url} came back without a browser page or "
                "screenshot: scrapy-playwright did not handle it. Set DOWNLOAD_HANDLERS for "
                "http and https to scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler."
            )
        check_displayed(request, response, crawler)
        if page is not None:
            return await solve_on_page(page, options, solver, timeout, attempt)
        return await solver.solve_with(
            capture.result,
            options.with_page_url(http_url(response.url)),
            source=f"{options.selector!r} on {response.url}",
            attempt=attempt,
        )
    except BaseException:
        if page is not None:
            await _close_quietly(page)
        raise


def _capture_of(methods: Any) -> Any:
    """The capturing page method :func:`check_request` added, or None."""
    for method in methods.values() if isinstance(methods, dict) else methods or ():
        if getattr(method, "method", None) is capture_element:
            return method
    return None


async def _close_quietly(page: Page) -> None:
    # The failure being raised says what went wrong; a page that will not close adds nothing.
    with contextlib.suppress(Exception):
        await page.close()
