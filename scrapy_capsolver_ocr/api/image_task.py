"""An image task on the wire, whichever service runs it: waiting for a task that was
accepted before it was ready, and the checks every answer's text passes.

One createTask is one paid task. When its answer is still pending (CapSolver: ``idle`` or
``processing``; some services answer createTask with a task id only), the task is polled with
``getTaskResult`` until it is ready, never created again: the official SDKs do the same, and
a second createTask may be billed again. What differs between services is the
:class:`~scrapy_capsolver_ocr.api.provider.Provider`'s.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from ..errors import CaptchaTransientError
from ..solution import CaptchaSolution
from .errors import ErrorTable, answer_number

if TYPE_CHECKING:
    from .client import ApiClient
    from .provider import Provider

#: The task type all four services name an image-to-text task.
TASK_TYPE = "ImageToTextTask"
#: Task ids are short; a longer one is no task id.
MAX_TASK_ID_LENGTH = 128
#: The longest answer accepted. Captchas have a few characters; a longer text is a broken
#: answer that would be typed into a form and written to the log.
MAX_SOLUTION_LENGTH = 100

Sleep = Callable[[float], Awaitable[None]]


class TaskRunner:
    """Runs one image task to its answer: createTask, then getTaskResult while it is
    pending, every ``poll_interval`` seconds (doubling up to ``poll_max``) for at most
    ``poll_timeout`` seconds."""

    def __init__(
        self,
        provider: Provider,
        api: ApiClient,
        sleep: Sleep,
        *,
        poll_interval: float,
        poll_max: float,
        poll_timeout: float,
        on_poll: Callable[[], None] = lambda: None,
    ) -> None:
        self._provider = provider
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
        if not self._provider.pending(answer):
            return answer
        task_id = self._provider.task_id(answer)
        if not task_id:
            status = answer.get("status")
            raise self._provider.errors.malformed(
                "createTask", f"status {status!r} without a taskId"
            )
        return await self._poll(task_id)

    async def _poll(self, task_id: str) -> dict[str, Any]:
        waited = 0.0
        delay = self._poll_interval
        payload = self._provider.result_payload(task_id)
        while waited < self._poll_timeout:
            delay = min(delay, self._poll_timeout - waited)
            await self._sleep(delay)
            waited += delay
            self._on_poll()
            try:
                answer = await self._api.call("getTaskResult", payload)
            except CaptchaTransientError:
                # The task is paid for and may be ready by now: ask again, never create it
                # anew, until the polling time is up.
                continue
            finally:
                delay = min(delay * 2, self._poll_max)
            if not self._provider.pending(answer):
                answer.setdefault("taskId", task_id)
                return answer
        raise self._provider.errors.error_for(
            "TASK_NOT_READY", f"task {task_id} still pending after {waited:g} s of polling"
        )


def task_id_text(value: Any) -> str:
    """A task id as text (services use strings or numbers), or "" for anything else."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return ""
    text = str(value)
    return text if len(text) <= MAX_TASK_ID_LENGTH else ""


def checked_solution(
    errors: ErrorTable,
    text: Any,
    *,
    task_id: str,
    image_sha256: str,
    confidence: Any = None,
) -> CaptchaSolution:
    """The :class:`CaptchaSolution` of an answer's text, with the checks every service's
    answer passes: a non-empty string of at most :data:`MAX_SOLUTION_LENGTH` characters."""
    if not isinstance(text, str):
        raise errors.malformed("the task", "without solution.text")
    text = text.strip()
    if not text:
        raise errors.error_for("EMPTY_SOLUTION")
    if len(text) > MAX_SOLUTION_LENGTH:
        raise errors.error_for(
            "SOLUTION_TOO_LONG", f"{len(text)} characters, more than {MAX_SOLUTION_LENGTH}"
        )
    return CaptchaSolution(
        text=text,
        task_id=task_id,
        image_sha256=image_sha256,
        confidence=answer_number(confidence),
    )
