"""What an error code means for a crawl: one table per service, code -> class -> retries.

The retry policy is data: a service's :class:`ErrorTable` (CapSolver's is
:data:`~scrapy_capsolver_ocr.api.capsolver.ERROR_TABLE`) says, for every ``errorCode`` the
service documents and for the plugin's own answer checks, which public exception a request's
errback gets, how often the call may be retried, and which close reason ends the crawl when
the whole account is affected. docs/faults.md lists CapSolver's, and a test keeps the two in
step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ..errors import CaptchaAccountError, CaptchaApiError, CaptchaTaskError, CaptchaTransientError

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


#: The plugin's own checks of an answer, the same whichever service answered.
OWN_CHECKS: dict[str, ErrorRule] = {
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


class ErrorTable:
    """One service's error codes and the plugin's own checks: code -> rule -> exception.

    ``unknown`` is the rule of a code the service did not document; ``refused_key`` the rule
    of an answer refused with HTTP 401 and no code the table knows.
    """

    def __init__(
        self,
        service: str,
        codes: dict[str, ErrorRule],
        *,
        unknown: ErrorRule,
        refused_key: ErrorRule,
    ) -> None:
        #: The service's name, as messages say it ("CapSolver answered ...").
        self.service = service
        self.rules: dict[str, ErrorRule] = {**codes, **OWN_CHECKS}
        self._unknown = unknown
        self._refused_key = refused_key

    def rule_for(self, code: str, status: int = 200) -> ErrorRule:
        """The rule for ``code``; an unknown code answered with HTTP 401 is a refused key."""
        rule = self.rules.get(code)
        if rule is not None:
            return rule
        return self._refused_key if status == 401 else self._unknown

    def error_for(self, code: str, description: str = "", status: int = 200) -> CaptchaApiError:
        """The exception for an answer with an error (or HTTP 401), by its code."""
        rule = self.rule_for(code, status)
        said = f"{self.service} answered {code or f'HTTP {status}'}"
        if description:
            said += f" ({description})"
        message = f"{said}: {rule.meaning}."
        code = code or f"HTTP_{status}"
        if issubclass(rule.exception, CaptchaAccountError):
            return rule.exception(message, code, description, close_reason=rule.close_reason)
        return rule.exception(message, code, description, retry_limit=rule.retry_limit)

    def malformed(self, method: str, what: str) -> CaptchaApiError:
        """The error for an answer of ``method`` that lacks what it must carry."""
        return self.error_for("MALFORMED_ANSWER", f"{method} answered {what}")


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
