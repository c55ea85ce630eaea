"""CapSolver's ``ImageToTextTask`` on the wire: the createTask body, waiting for a task that
was accepted before it was ready, and reading the answer.

One createTask is one paid task. When its answer says the task is still ``idle`` or
``processing``, the task is polled with ``getTaskResult`` until it is ready, never created
again: both official SDKs do the same, and a second createTask may be billed again.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import CaptchaTransientError
from ..solution import CaptchaSolution
from .client import CapSolverApi
from .errors import answer_number, error_for_code, malformed_answer

TASK_TYPE = "ImageToTextTask"
#: Task ids are short; a longer one is no task id.
MAX_TASK_ID_LENGTH = 128
#: The longest answer accepted. Captchas have a few characters; a longer text is a broken
#: answer that would be typed into a form and written to the log.
MAX_SOLUTION_LENGTH = 100
_PENDING = frozenset({"idle", "processing"})

Sleep = Callable[[float], Awaitable[None]]


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


class TaskRunner:
    """Runs one image task to its answer: createTask, then getTaskResult while it is
    pending, every ``poll_interval`` seconds (doubling up to ``poll_max``) for at most
    ``poll_timeout`` seconds."""

    def __init__(
        self,
        api: CapSolverApi,
        sleep: Sleep,
        *,
        poll_interval: float,
        poll_max: float,
        poll_timeout: float,
        on_poll: Callable[[], None] = lambda: None,
    ) -> None:
        self._api = api
        self._sleep = sleep
        self._poll_interval = poll_interval
        self._poll_max = poll_max
        self._poll_timeout = poll_timeout
        self._on_poll = on_poll

    async def run(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The ready answer of the task ``payload`` describes. Raises a
        :class:`CaptchaApiError`; ``TASK_NOT_READY`` when it stayed pending too long."""
        answer = await self._api.call("createTask", payload)
        status = answer.get("status")
        if status not in _PENDING:
            return answer
        task_id = _task_id(answer)
        if not task_id:
            raise malformed_answer("createTask", f"status {status!r} without a taskId")
        return await self._poll(task_id)

    async def _poll(self, task_id: str) -> dict[str, Any]:
        waited = 0.0
        delay = self._poll_interval
        while waited < self._poll_timeout:
            delay = min(delay, self._poll_timeout - waited)
            await self._sleep(delay)
            waited += delay
            self._on_poll()
            try:
                answer = await self._api.call("getTaskResult", {"taskId": task_id})
            except CaptchaTransientError:
                # The task is paid for and may be ready by now: ask again, never create it
                # anew, until the polling time is up.
                continue
            finally:
                delay = min(delay * 2, self._poll_max)
            if answer.get("status") not in _PENDING:
                answer.setdefault("taskId", task_id)
                return answer
        raise error_for_code(
            "TASK_NOT_READY", f"task {task_id} still pending after {waited:g} s of polling"
        )


def solution_from(answer: dict[str, Any], image_sha256: str) -> CaptchaSolution:
    """The :class:`CaptchaSolution` of a ready answer; raises a :class:`CaptchaApiError`
    for an answer without a usable text."""
    solution = answer.get("solution")
    if not isinstance(solution, dict) or not isinstance(solution.get("text"), str):
        raise malformed_answer("the task", "without solution.text")
    text = solution["text"].strip()
    if not text:
        raise error_for_code("EMPTY_SOLUTION")
    if len(text) > MAX_SOLUTION_LENGTH:
        raise error_for_code(
            "SOLUTION_TOO_LONG", f"{len(text)} characters, more than {MAX_SOLUTION_LENGTH}"
        )
    return CaptchaSolution(
        text=text,
        task_id=_task_id(answer),
        image_sha256=image_sha256,
        confidence=answer_number(solution.get("confidence")),
    )


def _task_id(answer: dict[str, Any]) -> str:
    """The answer's task id as text (some compatible services use numbers), or ""."""
    value = answer.get("taskId")
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    text = str(value)
    return text if len(text) <= MAX_TASK_ID_LENGTH else ""
