"""What each CapSolver error code means for a crawl: one table, code -> class -> retries.

The retry policy is data: :data:`ERROR_TABLE` says, for every ``errorCode`` CapSolver
documents and for the plugin's own answer checks, which public exception a request's errback
gets, how often the call may be retried, and which close reason ends the crawl when the
whole account is affected. docs/faults.md lists it, and a test keeps the two in step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import (
    CLOSE_BAD_KEY,
    CLOSE_BLOCKED,
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaBlockedError,
    CaptchaTaskError,
    CaptchaTransientError,
)

#: ``retry_limit`` of the rules whose failures are retried up to ``CAPSOLVER_MAX_RETRIES``.
UP_TO_MAX_RETRIES = None


@dataclass(frozen=True)
class ErrorRule:
    """How a crawl treats one error code."""

    exception: type[CaptchaApiError]
    #: Retries allowed (``None``: up to ``CAPSOLVER_MAX_RETRIES``); never more than that.
    retry_limit: int | None
    #: What the code means for the user, after "CapSolver answered CODE (description)".
    meaning: str
    #: Account errors: the crawl's close reason.
    close_reason: str = ""


_BUSY = ErrorRule(
    CaptchaTransientError, UP_TO_MAX_RETRIES, "the service is busy; retried with backoff"
)
# Worth one more try, not more: CapSolver does not charge for them, but repeating the same
# image rarely changes the outcome.
_ONCE = ErrorRule(CaptchaTaskError, 1, "this image could not be solved")
_BAD_TASK = ErrorRule(
    CaptchaTaskError, 0, "CapSolver refused this task; check the image and the task options"
)
_NO_MONEY = ErrorRule(
    CaptchaAccountError,
    0,
    "the account has no balance left; top it up to go on solving",
    CLOSE_ZERO_BALANCE,
)
_BLOCKED = ErrorRule(
    CaptchaBlockedError,
    0,
    "CapSolver blocked the key or this IP for a while after too many errors; solving "
    "pauses for CAPSOLVER_BLOCK_PAUSE seconds",
    CLOSE_BLOCKED,
)

#: Every code with a meaning of its own. Codes not listed are treated as ``_BAD_TASK``.
ERROR_TABLE: dict[str, ErrorRule] = {
    # CapSolver's documented codes (guide page api-error).
    "ERROR_SERVICE_UNAVALIABLE": _BUSY,  # sic: CapSolver's own spelling
    "ERROR_SERVICE_UNAVAILABLE": _BUSY,
    "ERROR_RATE_LIMIT": _BUSY,
    "ERROR_TASK_TIMEOUT": _BUSY,
    "ERROR_CAPTCHA_UNSOLVABLE": _ONCE,
    "ERROR_BAD_REQUEST": _ONCE,
    "ERROR_KEY_DENIED_ACCESS": ErrorRule(
        CaptchaAccountError, 0, "the API key was refused; check CAPSOLVER_API_KEY", CLOSE_BAD_KEY
    ),
    "ERROR_ZERO_BALANCE": _NO_MONEY,
    "ERROR_SETTLEMENT_FAILED": _NO_MONEY,
    "ERROR_KEY_TEMP_BLOCKED": _BLOCKED,
    "ERROR_IP_BANNED": _BLOCKED,
    "ERROR_INVALID_TASK_DATA": _BAD_TASK,
    "ERROR_TASK_NOT_SUPPORTED": _BAD_TASK,
    "ERROR_INVALID_IMAGE": _BAD_TASK,
    "ERROR_PARSE_IMAGE_FAIL": ErrorRule(
        CaptchaTaskError, 0, "CapSolver could not decode the image; check that it is one"
    ),
    "ERROR_UNKNOWN_QUESTION": ErrorRule(
        CaptchaTaskError, 0, "CapSolver does not know this kind of captcha (module)"
    ),
    "ERROR_PROXY_BANNED": ErrorRule(
        CaptchaTaskError, 0, "the task's proxy is banned; image tasks need none"
    ),
    "ERROR_TASKID_INVALID": ErrorRule(
        CaptchaTaskError, 0, "CapSolver does not know this task id (expired, or not its own)"
    ),
    # The plugin's own checks of an answer.
    "MALFORMED_ANSWER": ErrorRule(
        CaptchaTransientError, UP_TO_MAX_RETRIES, "not a complete API answer"
    ),
    "EMPTY_SOLUTION": ErrorRule(CaptchaTaskError, 1, "the answer's text is empty"),
    "SOLUTION_TOO_LONG": ErrorRule(
        CaptchaTaskError, 0, "the answer's text is far longer than any captcha's"
    ),
    "TASK_NOT_READY": ErrorRule(
        CaptchaTaskError,
        0,
        "the task was accepted but not ready in time; it is not created again, so it is "
        "never paid twice",
    ),
}

#: The rule of an answer refused with HTTP 401 and no code the table knows.
_HTTP_401 = ERROR_TABLE["ERROR_KEY_DENIED_ACCESS"]


def rule_for(code: str, status: int = 200) -> ErrorRule:
    """The rule for ``code``; an unknown code answered with HTTP 401 is a refused key."""
    rule = ERROR_TABLE.get(code)
    if rule is not None:
        return rule
    return _HTTP_401 if status == 401 else _BAD_TASK


def error_for_code(code: str, description: str = "", status: int = 200) -> CaptchaApiError:
    """The exception for an answer with ``errorId`` != 0 (or HTTP 401), by its code."""
    rule = rule_for(code, status)
    said = f"CapSolver answered {code or f'HTTP {status}'}"
    if description:
        said += f" ({description})"
    message = f"{said}: {rule.meaning}."
    code = code or f"HTTP_{status}"
    if issubclass(rule.exception, CaptchaAccountError):
        return rule.exception(message, code, description, close_reason=rule.close_reason)
    return rule.exception(message, code, description, retry_limit=rule.retry_limit)


def malformed_answer(method: str, what: str) -> CaptchaApiError:
    """The error for an answer of ``method`` that lacks what it must carry."""
    return error_for_code("MALFORMED_ANSWER", f"{method} answered {what}")


def answer_number(value: Any) -> float | None:
    """A number field of an answer as a finite float; None for anything else (text, a
    bool, NaN, infinity, an int too large for a float)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an int with hundreds of digits
        return None
    return number if math.isfinite(number) else None
