"""Wrong answers: a site that rejects the injected text gets a fresh captcha, solved again.

``captcha_retry_if`` says how the site shows a rejection. On one, the answer is reported
to CapSolver and dropped from the cache (a local answer is only counted), and the request
that brought the captcha (the page or the image) is scheduled again, so the spider's
callbacks run again with a new one. An answer the site accepted teaches local-first the
format of the site's captchas. A captcha image requested again this way that is gone (a
single-use URL) fails with a message that says what works instead.
"""

from __future__ import annotations

import inspect
import logging
import re

from scrapy import Request
from scrapy.http import Response, TextResponse
from scrapy.statscollectors import StatsCollector

from ..errors import CaptchaOptionsError, CaptchaRejectedError
from ..solving.solver import CaptchaSolver
from .injection import ANSWER, LOGGED_TEXT, BoundAnswer, CaptchaInjector
from .page_captcha import SINGLE_USE_STATUSES, single_use_error
from .request_meta import RetryIf

logger = logging.getLogger(__name__)

#: Meta keys that belong to one solve, left out when its request is scheduled again.
_SOLVE_META = ("captcha_solution", "captcha_text", ANSWER)


async def is_rejected(condition: RetryIf, request: Request, response: Response) -> bool:
    if isinstance(condition, re.Pattern):
        if isinstance(response, TextResponse):
            text = response.text
        else:
            text = response.body.decode("utf-8", "replace")
        return condition.search(text) is not None
    if response.request is None:
        # Scrapy ties the response to its request only after the middlewares; the
        # callable may well read response.meta.
        response.request = request
    try:
        verdict = condition(response)
        if inspect.isawaitable(verdict):
            verdict = await verdict
    except Exception as exc:
        raise CaptchaOptionsError(
            f"meta['captcha_retry_if'] raised {type(exc).__name__}: {exc}"
        ) from exc
    return bool(verdict)


def is_resent_image(request: Request) -> bool:
    """Whether ``request`` is a captcha image request that a refused answer sent again (a
    page-mode or browser request brings a new image with its new page)."""
    options = request.meta.get("solve_image")
    if request.meta.get("playwright") or not (
        options is True or (isinstance(options, dict) and not options.get("selector"))
    ):
        return False
    return bool(request.meta.get("captcha_attempt", 1) > 1)


def solve_again(origin: Request, attempt: int) -> Request:
    """``origin`` (the request that brought the captcha) as attempt number ``attempt``."""
    meta = {key: value for key, value in origin.meta.items() if key not in _SOLVE_META}
    meta["captcha_attempt"] = attempt
    return origin.replace(meta=meta, dont_filter=True)


class RejectionHandler:
    """Checks the responses of requests that got an answer injected."""

    def __init__(
        self,
        solver: CaptchaSolver,
        injector: CaptchaInjector,
        stats: StatsCollector,
        max_attempts: int,
    ) -> None:
        self._solver = solver
        self._injector = injector
        self._stats = stats
        self._max_attempts = max_attempts

    async def process_response(
        self, request: Request, response: Response, retry_if: RetryIf | None
    ) -> Request | None:
        """The request to schedule instead of passing ``response`` on, or None to pass it
        on. Raises :class:`CaptchaRejectedError` when the chain gives up, and
        :class:`CaptchaImageError` when a captcha image it sent again is gone."""
        # Popped: a request the spider builds from response.meta must get its own answer.
        bound: BoundAnswer | None = request.meta.pop(ANSWER, None)
        if response.status in SINGLE_USE_STATUSES and is_resent_image(request):
            # The image check would refuse the error page anyway; only the message differs.
            raise single_use_error(response.url, response.status, request.meta["captcha_attempt"])
        if bound is None or not bound.in_body or retry_if is None:
            return None
        if not await is_rejected(retry_if, request, response):
            if bound.solution is not None:
                self._solver.report_right(bound.solution)
            return None
        self._stats.inc_value("capsolver/rejected")
        if bound.solution is not None:
            await self._solver.report_wrong(bound.solution)
        shown = repr(bound.text[:LOGGED_TEXT])
        origin = self._injector.origin_of(bound)
        if origin is None:
            self._stats.inc_value("capsolver/gave_up")
            raise CaptchaRejectedError(
                f"{response.url} rejected the captcha answer {shown}; it was not solved in "
                "this crawl by the middleware, so there is no captcha request to send again."
            )
        if bound.attempt >= self._max_attempts:
            self._stats.inc_value("capsolver/gave_up")
            raise CaptchaRejectedError(
                f"{response.url} rejected the captcha answers {bound.attempt} times in a "
                f"row (CAPSOLVER_MAX_ATTEMPTS = {self._max_attempts}); giving up."
            )
        logger.info(
            "%s rejected the captcha answer %s (attempt %d of %d): solving a new captcha from %s",
            response.url,
            shown,
            bound.attempt,
            self._max_attempts,
            origin.url,
        )
        return solve_again(origin, bound.attempt + 1)
