"""Captchas on live Playwright pages: an element's screenshot, solved, its text typed in.

:func:`solve_page_captcha` is the public helper for spiders (a captcha that appears after
the response, or a fresh one after a rejected answer); the middleware solves the browser
responses of requests through :func:`solve_on_page`. Playwright is imported inside the
functions only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ..errors import CaptchaImageError, CaptchaInjectionError, CaptchaNotFoundError
from ..solving.options import SolveOptions, check_attempt, checked_options
from .page_captcha import http_url

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page
    from scrapy.crawler import Crawler

    from ..solution import CaptchaSolution
    from ..solving.solver import CaptchaSolver

logger = logging.getLogger(__name__)

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
        from .middleware import get_solver  # the middleware imports this module

        solver = get_solver(crawler)
    # Checked before the screenshot: a bad option is not worth waiting for the element.
    options = checked_options(
        selector=selector,
        fill=fill,
        module=module,
        score=score,
        website_url=website_url,
        local=local,
        length=length,
        charset=charset,
    )
    if timeout is None:
        timeout = solver.config.element_timeout
    return await solve_on_page(page, options, solver, timeout, check_attempt(attempt))


async def solve_on_page(
    page: Page, options: SolveOptions, solver: CaptchaSolver, timeout: float, attempt: int
) -> CaptchaSolution:
    """Solve the captcha of the element ``options.selector`` on ``page``, and type its
    text into ``options.fill`` when given; ``options`` and ``attempt`` are checked ones."""
    assert options.selector is not None  # the browser options of a request always have one
    image = await capture_element(page, options.selector, timeout)
    solution = await solver.solve_with(
        image,
        options.with_page_url(http_url(page.url)),
        source=f"{options.selector!r} on {page.url}",
        attempt=attempt,
    )
    logger.debug("Solved the captcha %r on %s as %r", options.selector, page.url, solution.text)
    if options.fill is not None:
        await type_text(page, options.fill, solution.text, timeout)
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


def _message(exc: BaseException) -> str:
    """The first line of a Playwright error (the rest is a call log)."""
    message = getattr(exc, "message", "") or str(exc)
    return message.strip().splitlines()[0] if message.strip() else type(exc).__name__
