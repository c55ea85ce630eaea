"""Wrong answers: a site that rejects the injected text gets a fresh captcha, solved again.

``captcha_retry_if`` says how the site shows a rejection. On one, the answer is reported
to CapSolver and dropped from the cache, and the request that brought the captcha (the page
or the image) is scheduled again, so the spider's callbacks run again with a new one.
"""

from __future__ import annotations

import inspect
import logging
import re
from collections.abc import Callable
from typing import Any

from scrapy import Request
from scrapy.http import Response, TextResponse
from scrapy.statscollectors import StatsCollector

from .errors import CaptchaOptionsError, CaptchaRejectedError
from .injection import INJECTED, Injected
from .solver import CaptchaSolver

logger = logging.getLogger(__name__)

RetryIf = re.Pattern[str] | Callable[[Response], Any]
#: Meta keys that belong to one solve, left out when its request is scheduled again.
_SOLVE_META = ("captcha_solution", "captcha_text", INJECTED)


def retry_condition(meta: dict[str, Any]) -> RetryIf | None:
    value = meta.get("captcha_retry_if")
    if value is None:
        return None
    if "captcha_field" not in meta:
        raise CaptchaOptionsError(
            "meta['captcha_retry_if'] needs meta['captcha_field']: it tells whether the site "
            "rejected the answer put into that field."
        )
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise CaptchaOptionsError(
                f"meta['captcha_retry_if']={value!r} is not a valid regular expression: {exc}"
            ) from None
    if isinstance(value, re.Pattern):
        if not isinstance(value.pattern, str):
            raise CaptchaOptionsError(
                "meta['captcha_retry_if'] must be a str pattern (it is searched in "
                "response.text), not a bytes one"
            )
        return value
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise CaptchaOptionsError(
        "meta['captcha_retry_if'] must be a regular expression (str or compiled) or a "
        f"callable(response) -> bool, not {type(value).__name__}"
    )


def attempt_of(meta: dict[str, Any]) -> int:
    """Which attempt at the captcha chain this request is (1 for the first)."""
    value = meta.get("captcha_attempt", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CaptchaOptionsError(f"meta['captcha_attempt'] must be an int >= 1, not {value!r}")
    return value


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


def solve_again(origin: Request, attempt: int) -> Request:
    """``origin`` (the request that brought the captcha) as attempt number ``attempt``."""
    meta = {key: value for key, value in origin.meta.items() if key not in _SOLVE_META}
    meta["captcha_attempt"] = attempt
    return origin.replace(meta=meta, dont_filter=True)


class RejectionHandler:
    """Checks the responses of requests that got an answer injected."""

    def __init__(self, solver: CaptchaSolver, stats: StatsCollector, max_attempts: int) -> None:
        self._solver = solver
        self._stats = stats
        self._max_attempts = max_attempts

    async def process_response(self, request: Request, response: Response) -> Request | None:
        """The request to schedule instead of passing ``response`` on, or None to pass it
        on. Raises :class:`CaptchaRejectedError` when the chain gives up."""
        # Popped: a request the spider builds from response.meta must get its own answer.
        injected: Injected | None = request.meta.pop(INJECTED, None)
        if injected is None:
            return None
        condition = retry_condition(request.meta)
        if condition is None or not await is_rejected(condition, request, response):
            return None
        self._stats.inc_value("capsolver/rejected")
        if injected.solution is not None:
            await self._solver.report_wrong(injected.solution)
        solved = injected.solved
        if solved is None or solved.origin is None:
            self._stats.inc_value("capsolver/gave_up")
            raise CaptchaRejectedError(
                f"{response.url} rejected the captcha answer {injected.text!r}; it was not "
                "solved in this session by the middleware, so there is no captcha request to "
                "send again."
            )
        if solved.attempt >= self._max_attempts:
            self._stats.inc_value("capsolver/gave_up")
            raise CaptchaRejectedError(
                f"{response.url} rejected the captcha answers {solved.attempt} times in a "
                f"row (CAPSOLVER_MAX_ATTEMPTS = {self._max_attempts}); giving up."
            )
        logger.info(
            "%s rejected the captcha answer %r (attempt %d of %d): solving a new captcha from %s",
            response.url,
            injected.text,
            solved.attempt,
            self._max_attempts,
            solved.origin.url,
        )
        return solve_again(solved.origin, solved.attempt + 1)
