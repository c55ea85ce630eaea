"""The exceptions a request's errback can receive from the middleware.

Every failure of a solve is a :class:`CaptchaSolveError`; the subclasses say which kind,
so an errback can decide with ``failure.check(...)`` whether to retry, skip or stop.
"""

from __future__ import annotations

import logging

logger = logging.getLogger(__name__)

#: The crawl's finish reasons when solving cannot go on; static, so stats group them.
CLOSE_BAD_KEY = "capsolver_bad_key"
CLOSE_ZERO_BALANCE = "capsolver_zero_balance"
CLOSE_BLOCKED = "capsolver_blocked"
CLOSE_MAX_TASKS = "capsolver_max_tasks"


class CaptchaSolveError(Exception):
    """Base class: a captcha could not be solved for this request."""


class CaptchaOptionsError(CaptchaSolveError):
    """The request's ``solve_image`` (or another captcha meta key) has a wrong value."""


class CaptchaImageError(CaptchaSolveError):
    """The response is not a captcha image that can be sent: empty, not a raster image,
    truncated, too large, or an HTTP error page. No API call was made."""


class CaptchaNotFoundError(CaptchaImageError):
    """Page mode: the page has no element matching the selector, or the element has no
    image (no ``src``). Often the page simply shows no captcha this time."""


class CaptchaApiError(CaptchaSolveError):
    """CapSolver answered with an error (``errorId`` != 0) or could not be reached.

    ``error_code`` is CapSolver's ``errorCode`` (or a transport reason such as
    ``HTTP_503``); ``retry_limit`` is how many times such a failure may be retried
    (``None``: up to ``CAPSOLVER_MAX_RETRIES``), from the table in :mod:`.api_errors`.
    """

    def __init__(
        self,
        message: str,
        error_code: str = "",
        description: str = "",
        *,
        retry_limit: int | None = 0,
    ) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.description = description
        self.retry_limit = retry_limit


class CaptchaTaskError(CaptchaApiError):
    """CapSolver refused or could not solve this image; other images are not affected."""


class CaptchaTransientError(CaptchaApiError):
    """A transient failure (busy service, rate limit, HTTP 5xx, connection trouble) that
    persisted through every retry."""

    def __init__(
        self,
        message: str,
        error_code: str = "",
        description: str = "",
        *,
        retry_limit: int | None = None,
    ) -> None:
        super().__init__(message, error_code, description, retry_limit=retry_limit)


class CaptchaTimeoutError(CaptchaTransientError):
    """The API call took longer than ``CAPSOLVER_TIMEOUT`` seconds, on every attempt."""


class CaptchaNoSlotError(CaptchaTransientError):
    """The service takes no tasks for now (``ERROR_NO_SLOT_AVAILABLE`` of Anti-Captcha,
    CapMonster Cloud and 2Captcha: no idle workers, or the bid is too low): retried with
    backoff like any transient failure, and still refused after every retry."""


class CaptchaFleetError(CaptchaTransientError):
    """Fleet mode: the shared state (Redis at ``CAPSOLVER_REDIS_URL``) could not be
    reached through every retry. Nothing was paid without it: the budget is never
    bypassed."""


class CaptchaAccountError(CaptchaApiError):
    """The account cannot solve anything (missing or bad key, no balance, blocked):
    continuing is pointless, so the crawl is closed with :attr:`close_reason`."""

    def __init__(
        self, message: str, error_code: str = "", description: str = "", close_reason: str = ""
    ) -> None:
        super().__init__(message, error_code, description, retry_limit=0)
        self.close_reason = close_reason


class CaptchaBlockedError(CaptchaAccountError):
    """CapSolver blocked the key or this IP for a while (``ERROR_KEY_TEMP_BLOCKED``,
    ``ERROR_IP_BANNED``). Solving pauses; a second block closes the crawl."""


class CaptchaBudgetError(CaptchaSolveError):
    """``CAPSOLVER_MAX_TASKS`` createTask calls were made; no more are allowed in this crawl."""

    close_reason = CLOSE_MAX_TASKS


class CaptchaCrawlClosingError(CaptchaSolveError):
    """The crawl is closing; the solve was not started."""

    def __init__(self, message: str = "The crawl is closing; the captcha was not solved.") -> None:
        super().__init__(message)


class CaptchaRejectedError(CaptchaSolveError):
    """The site rejected the solved answers ``CAPSOLVER_MAX_ATTEMPTS`` times in a row."""


class CaptchaInjectionError(CaptchaSolveError):
    """The solved text could not be put into the follow-up request."""


def unexpected_error(exc: Exception, source: str) -> CaptchaSolveError:
    """What an errback gets for an error that is no captcha failure but a bug: still a
    :class:`CaptchaSolveError`, with the original as its ``__cause__`` and in the log."""
    logger.error(
        "Unexpected error while solving the captcha of %s",
        source,
        exc_info=(type(exc), exc, exc.__traceback__),
    )
    return CaptchaSolveError(
        f"Unexpected {type(exc).__name__} while solving the captcha of {source}"
    )
