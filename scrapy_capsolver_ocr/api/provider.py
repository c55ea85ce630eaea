"""The provider seam: what differs between the services that solve an image task.

CapSolver, Anti-Captcha, CapMonster Cloud and 2Captcha (API v2) all take createTask /
getTaskResult JSON (docs/providers.md); a :class:`Provider` says how one of them spells the
task, when its answer is ready, how its answer, errors, balance and wrong-answer report read.
The HTTP call (:class:`~scrapy_capsolver_ocr.api.client.ApiClient`), the polling
(:class:`~scrapy_capsolver_ocr.api.image_task.TaskRunner`) and everything the cloud reader
does around a paid task are the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from ..solution import CaptchaSolution
from .errors import ErrorTable

#: A call to the service: its method (the URL path after the base URL) and body, without
#: the key (the client adds it).
ApiCall = tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class TaskOptions:
    """The plugin's options of one image task (already checked); a provider spells them its
    own way."""

    module: str | None = None
    score: float | None = None
    #: The page the captcha belongs to.
    website_url: str | None = None


class Provider(Protocol):
    """One solving service's dialect of the createTask protocol."""

    #: The service's name in messages and logs ("CapSolver").
    name: str
    #: Its error codes, mapped onto the plugin's error classes.
    errors: ErrorTable

    def task_payload(self, image: bytes, options: TaskOptions) -> dict[str, Any]:
        """The createTask body of an image task with the plugin's task options."""
        ...

    def pending(self, answer: dict[str, Any]) -> bool:
        """Whether an answer of createTask or getTaskResult still waits for its solution
        (then getTaskResult is asked, never createTask again)."""
        ...

    def task_id(self, answer: dict[str, Any]) -> str:
        """The answer's task id as text, or "" when it has none usable."""
        ...

    def result_payload(self, task_id: str) -> dict[str, Any]:
        """The getTaskResult body for a task id read by :meth:`task_id` (in the id's type
        the service expects)."""
        ...

    def solution(self, answer: dict[str, Any], image_sha256: str) -> CaptchaSolution:
        """The solution of a ready answer; raises a ``CaptchaApiError`` for an answer
        without a usable text."""
        ...

    def balance_call(self) -> ApiCall:
        """The call that reads the account's balance."""
        ...

    def balance_from(self, answer: dict[str, Any]) -> float:
        """The balance (USD) in the answer of :meth:`balance_call`."""
        ...

    def wrong_answer(self, task_id: str, message: str) -> ApiCall:
        """The call that reports a wrong answer (all four documented services take one)."""
        ...

    def unsupported(self, options: TaskOptions) -> list[str]:
        """The names of the options in ``options`` this service cannot honour (the crawl
        warns once at start, naming them and the service)."""
        ...
