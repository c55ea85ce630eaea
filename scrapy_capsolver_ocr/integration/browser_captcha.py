"""Captchas on live browser pages (scrapy-playwright): an element screenshot, solved, typed in.

A captcha drawn in a ``<canvas>``, set as a CSS background, or valid only in the browser
session that loaded it cannot be downloaded by URL; a screenshot of its element can be
solved like any image. Playwright is imported inside the functions only: the plugin imports
and works without it (``pip install "scrapy-capsolver-ocr[playwright]"`` adds it).
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Any

from ..errors import (
    CaptchaImageError,
    CaptchaInjectionError,
    CaptchaNotFoundError,
    CaptchaOptionsError,
)
from .page_captcha import check_displayed, http_url

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page
    from scrapy import Request
    from scrapy.crawler import Crawler
    from scrapy.http import Response

    from ..solution import CaptchaSolution
    from ..solving.options import SolveOptions
    from ..solving.solver import CaptchaSolver

logger = logging.getLogger(__name__)

#: The key of the capturing page method when ``playwright_page_methods`` is a dict.
PAGE_METHOD_KEY = "capsolver_captcha"

# A screenshot of a half-loaded <img> has nothing to solve: wait for its load or error
# event, at most `ms` milliseconds. Other elements are ready once visible.
_IMAGE_STATE = """(element, ms) => {
  if (element.tagName !== "IMG") return "ready";
  if (element.complete) return element.naturalWidth > 0 ? "ready" : "broken";
  return new Promise(resolve => {
    element.addEventListener("load", () => resolve("ready"), {once: true});
    element.addEventListener("error", () => resolve("broken"), {once: true});
    setTimeout(() => resolve("loading"), ms);
  });
}"""


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
            return await solve_page_captcha(
                page,
                options.selector,
                fill=options.fill,
                solver=solver,
                module=options.module,
                score=options.score,
                website_url=options.website_url,
                timeout=timeout,
                local=options.local,
                length=options.length,
                charset=options.charset,
                attempt=attempt,
            )
        return await solver.solve(
            capture.result,
            module=options.module,
            score=options.score,
            website_url=options.website_url or http_url(response.url),
            source=f"{options.selector!r} on {response.url}",
            local=options.local,
            length=options.length,
            charset=options.charset,
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


# Pages


async def solve_page_captcha(
    page: Page,
    selector: str,
    *,
    fill: str | None = None,
    crawler: Crawler | None = None,
    solver: CaptchaSolver | None = None,
    module: str | None = None,
    score: float | None = None,
    website_url: str | None = None,
    timeout: float | None = None,
    local: bool | None = None,
    length: int | None = None,
    charset: str | None = None,
    attempt: int = 1,
) -> CaptchaSolution:
    """Solve the captcha shown by the element ``selector`` of a live Playwright page, and
    type its text into the input ``fill`` when given.

    For spiders: to solve a fresh captcha after the site rejected one (``await
    page.reload()`` first, and pass ``attempt=2``: CapSolver reads it even when local-first
    is on), or a captcha that appears after the response. Pass the ``crawler`` (or a
    ``solver``); ``timeout`` (seconds to wait for the element and the input) defaults to
    ``CAPSOLVER_ELEMENT_TIMEOUT``; ``local``, ``length`` and ``charset`` are as for
    :meth:`CaptchaSolver.solve`. Raises a :class:`CaptchaSolveError`; the page stays open
    either way.
    """
    if solver is None:
        if crawler is None:
            raise TypeError("solve_page_captcha() needs crawler= (or solver=)")
        from .. import get_solver

        solver = get_solver(crawler)
    if timeout is None:
        timeout = solver.config.element_timeout
    image = await capture_element(page, selector, timeout)
    solution = await solver.solve(
        image,
        module=module,
        score=score,
        website_url=website_url or http_url(page.url),
        source=f"{selector!r} on {page.url}",
        local=local,
        length=length,
        charset=charset,
        attempt=attempt,
    )
    logger.debug("Solved the captcha %r on %s as %r", selector, page.url, solution.text)
    if fill is not None:
        await type_text(page, fill, solution.text, timeout)
    return solution


async def capture_element(page: Page, selector: str, timeout: float) -> bytes:
    """A PNG screenshot of the one element ``selector`` matches, once it is visible (an
    ``<img>`` once loaded), waiting at most ``timeout`` seconds for it.

    Raises :class:`CaptchaNotFoundError` when nothing matches, :class:`CaptchaImageError`
    when the element has no size, stays hidden, or the page was closed.
    """
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import TimeoutError as PlaywrightTimeoutError

    where = f"{selector!r} on {page.url}"
    closed = CaptchaImageError(f"The page was closed before the captcha {where} was captured.")
    if page.is_closed():
        raise closed
    locator = page.locator(selector)
    milliseconds = timeout * 1000
    try:
        try:
            await locator.wait_for(state="visible", timeout=milliseconds)
        except PlaywrightTimeoutError:
            raise await _not_visible(locator, where, timeout) from None
        state = await locator.evaluate(_IMAGE_STATE, milliseconds)
        if state != "ready":
            raise CaptchaImageError(
                f"The captcha image {where} "
                + ("failed to load." if state == "broken" else f"did not load in {timeout:g} s.")
            )
        image: bytes = await locator.screenshot(
            type="png", animations="disabled", timeout=milliseconds
        )
    except PlaywrightError as exc:
        if page.is_closed():
            raise closed from None
        raise CaptchaImageError(f"Could not capture the captcha {where}: {_message(exc)}") from None
    return image


async def _not_visible(locator: Locator, where: str, timeout: float) -> CaptchaImageError:
    """Why the element did not become visible in time, in the user's terms."""
    if await locator.count() == 0:
        return CaptchaNotFoundError(f"No element matches {where} (waited {timeout:g} s).")
    box = await locator.first.bounding_box(timeout=1000)
    if box is not None and (box["width"] == 0 or box["height"] == 0):
        return CaptchaImageError(
            f"The captcha {where} has zero size ({box['width']:g}x{box['height']:g} px): "
            "there is nothing to capture."
        )
    return CaptchaImageError(
        f"The captcha {where} stayed hidden (display or visibility) for {timeout:g} s."
    )


async def type_text(page: Page, selector: str, text: str, timeout: float) -> None:
    """Type ``text`` into the input ``selector``; raises :class:`CaptchaInjectionError`."""
    from playwright.async_api import Error as PlaywrightError

    where = f"{selector!r} on {page.url}"
    try:
        await page.locator(selector).fill(text, timeout=timeout * 1000)
    except PlaywrightError as exc:
        if page.is_closed():
            reason = "the page was closed"
        elif await page.locator(selector).count() == 0:
            reason = f"no element matches it (waited {timeout:g} s)"
        else:
            reason = _message(exc)
        raise CaptchaInjectionError(
            f"Could not type the solved captcha text into {where}: {reason}."
        ) from None


async def _close_quietly(page: Page) -> None:
    # The failure being raised says what went wrong; a page that will not close adds nothing.
    with contextlib.suppress(Exception):
        await page.close()


def _message(exc: BaseException) -> str:
    """The first line of a Playwright error (the rest is a call log)."""
    message = getattr(exc, "message", "") or str(exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__
