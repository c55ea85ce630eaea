"""CapSolver behind the provider seam: its ``ImageToTextTask`` body, its answers, its error
codes, ``getBalance`` and ``feedbackTask`` (docs/providers.md, section 1)."""

from __future__ import annotations

import base64
from typing import Any

from ..errors import (
    CLOSE_BAD_KEY,
    CLOSE_BLOCKED,
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from ..solution import CaptchaSolution
from .errors import UP_TO_MAX_RETRIES, ErrorRule, ErrorTable, answer_number
from .image_task import TASK_TYPE, checked_solution, task_id_text
from .provider import ApiCall, TaskOptions

NAME = "CapSolver"
_PENDING = frozenset({"idle", "processing"})
#: ``result.code`` of a wrong-answer report: the code CapSolver's feedback examples use.
_WRONG_ANSWER_CODE = 1001

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
_BAD_KEY = ErrorRule(
    CaptchaAccountError, 0, "the API key was refused; check CAPSOLVER_API_KEY", CLOSE_BAD_KEY
)

#: CapSolver's documented codes (guide page api-error). Codes not listed are ``_BAD_TASK``.
_CODES: dict[str, ErrorRule] = {
    "ERROR_SERVICE_UNAVALIABLE": _BUSY,  # sic: CapSolver's own spelling
    "ERROR_SERVICE_UNAVAILABLE": _BUSY,
    "ERROR_RATE_LIMIT": _BUSY,
    "ERROR_TASK_TIMEOUT": _BUSY,
    "ERROR_CAPTCHA_UNSOLVABLE": _ONCE,
    "ERROR_BAD_REQUEST": _ONCE,
    "ERROR_KEY_DENIED_ACCESS": _BAD_KEY,
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
}

ERRORS = ErrorTable(NAME, _CODES, unknown=_BAD_TASK, refused_key=_BAD_KEY)
#: Every code with a meaning of its own, CapSolver's and the plugin's own checks.
ERROR_TABLE = ERRORS.rules
rule_for = ERRORS.rule_for
error_for_code = ERRORS.error_for


def task_payload(
    image: bytes,
    *,
    module: str | None,
    score: float | None,
    website_url: str | None,
    app_id: str | None,
) -> dict[str, Any]:
    """The createTask body, without the key (the client adds it)."""
    # Optional fields are left out, never sent empty: CapSolver rejects null and 0.
    task: dict[str, Any] = {"type": TASK_TYPE, "body": base64.b64encode(image).decode("ascii")}
    if module:
        task["module"] = module
    if score is not None:
        task["score"] = score
    if website_url:
        task["websiteURL"] = website_url
    payload: dict[str, Any] = {"task": task}
    if app_id:
        payload["appId"] = app_id
    return payload


def solution_from(answer: dict[str, Any], image_sha256: str) -> CaptchaSolution:
    """The :class:`CaptchaSolution` of a ready answer; raises a :class:`CaptchaApiError`
    for an answer without a usable text."""
    solution = answer.get("solution")
    if not isinstance(solution, dict):
        raise ERRORS.malformed("the task", "without solution.text")
    return checked_solution(
        ERRORS,
        solution.get("text"),
        task_id=task_id_text(answer.get("taskId")),
        image_sha256=image_sha256,
        confidence=solution.get("confidence"),
    )


class CapSolver:
    """CapSolver's dialect: the answer usually comes with createTask, string task ids,
    ``feedbackTask`` for a wrong answer. ``app_id`` is the developer id sent with tasks and
    reports (``CAPSOLVER_APP_ID``)."""

    name = NAME
    errors = ERRORS

    def __init__(self, app_id: str | None = None) -> None:
        self._app_id = app_id

    def __repr__(self) -> str:
        return f"CapSolver(app_id={self._app_id!r})"

    def task_payload(self, image: bytes, options: TaskOptions) -> dict[str, Any]:
        return task_payload(
            image,
            module=options.module,
            score=options.score,
            website_url=options.website_url,
            app_id=self._app_id,
        )

    def pending(self, answer: dict[str, Any]) -> bool:
        return answer.get("status") in _PENDING

    def task_id(self, answer: dict[str, Any]) -> str:
        return task_id_text(answer.get("taskId"))

    def result_payload(self, task_id: str) -> dict[str, Any]:
        return {"taskId": task_id}

    def solution(self, answer: dict[str, Any], image_sha256: str) -> CaptchaSolution:
        return solution_from(answer, image_sha256)

    def balance_call(self) -> ApiCall:
        return "getBalance", {}

    def balance_from(self, answer: dict[str, Any]) -> float:
        balance = answer_number(answer.get("balance"))
        if balance is None:
            raise ERRORS.malformed("getBalance", "without a finite numeric balance")
        return balance

    def wrong_answer(self, task_id: str, message: str) -> ApiCall:
        result: dict[str, Any] = {"invalid": True, "code": _WRONG_ANSWER_CODE}
        if message:
            result["message"] = message
        payload: dict[str, Any] = {"taskId": task_id, "result": result}
        if self._app_id:
            payload["appId"] = self._app_id
        return "feedbackTask", payload

    def unsupported(self, options: TaskOptions) -> list[str]:
        return []
