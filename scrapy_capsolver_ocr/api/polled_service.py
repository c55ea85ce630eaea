"""What Anti-Captcha, CapMonster Cloud and 2Captcha (API v2) share behind the provider seam.

The three speak one dialect of the createTask protocol (docs/providers.md, sections 2-4):
createTask answers an integer task id only, the text comes through getTaskResult
(``processing`` until ``ready``), the balance from ``getBalance``, a wrong answer is reported
with the task's integer id, and their error codes are mostly the same names. What differs is
data: the service's name, its key variable, its report method, the options its image task
documents, which of its codes mean what, and how the plugin's own task options are spelled.
:class:`PolledService` is that dialect; each service's module gives it its :class:`Dialect`
and, where the plugin's options have an equivalent there, a subclass that maps them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import (
    CLOSE_BAD_KEY,
    CLOSE_BLOCKED,
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaNoSlotError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from ..solution import CaptchaSolution
from .errors import UP_TO_MAX_RETRIES, ErrorRule, ErrorTable, answer_number
from .image_task import TASK_TYPE, checked_solution, task_id_text
from .provider import ApiCall, TaskOptions

#: The status of a task whose text is there; every other answer of createTask (a task id
#: only) or getTaskResult (``processing``) is still pending.
READY = "ready"


@dataclass(frozen=True)
class OptionSpec:
    """One option of a service's image task, as a provider entry's ``options`` give it:
    its name there is the service's own field name."""

    #: bool, int or str: the JSON type the service documents.
    kind: type
    #: The values allowed, when the service lists them.
    choices: tuple[Any, ...] = ()
    #: The smallest integer allowed.
    minimum: int | None = None
    #: Sent beside ``task`` in the createTask body rather than inside it.
    top_level: bool = False

    def check(self, service: str, name: str, value: Any) -> None:
        """Raise ``ValueError`` naming the option and the service for a value it refuses."""
        # bool is an int in Python; JSON keeps them apart, and so do the services.
        if isinstance(value, bool) is not (self.kind is bool) or not isinstance(value, self.kind):
            raise ValueError(
                f"{service} option {name!r} must be {_TYPE_NAMES[self.kind]}, "
                f"not {type(value).__name__} {value!r:.40}"
            )
        if self.choices and value not in self.choices:
            allowed = ", ".join(repr(choice) for choice in self.choices)
            raise ValueError(f"{service} option {name!r} must be one of {allowed}, not {value!r}")
        if self.minimum is not None and isinstance(value, int) and value < self.minimum:
            raise ValueError(
                f"{service} option {name!r} must be at least {self.minimum}, not {value!r}"
            )


_TYPE_NAMES = {bool: "true or false", int: "an integer", str: "a string"}

#: The options both Anti-Captcha and 2Captcha document for an image task, by their names
#: there (``numeric``'s values and ``languagePool``'s place differ, see each module).
WORKER_OPTIONS: dict[str, OptionSpec] = {
    "phrase": OptionSpec(bool),
    "case": OptionSpec(bool),
    "math": OptionSpec(bool),
    "minLength": OptionSpec(int, minimum=0),
    "maxLength": OptionSpec(int, minimum=0),
    "comment": OptionSpec(str),
}


def checked_options(
    service: str, specs: Mapping[str, OptionSpec], options: Mapping[str, Any]
) -> dict[str, Any]:
    """``options`` checked against ``specs``: raises ``ValueError`` naming the option and
    the service for an option the service does not document or a value it refuses."""
    for name, value in options.items():
        spec = specs.get(name)
        if spec is None:
            known = ", ".join(sorted(specs)) or "none"
            raise ValueError(
                f"{service} has no image-task option {name!r}; the options it takes: {known}"
            )
        spec.check(service, name, value)
    low, high = options.get("minLength", 0), options.get("maxLength", 0)
    if low and high and low > high:
        raise ValueError(
            f"{service} options 'minLength' ({low}) and 'maxLength' ({high}): the minimum is "
            "over the maximum"
        )
    return dict(options)


def error_rules(
    service: str, key_variable: str, *, unsolvable_retries: int
) -> dict[str, ErrorRule]:
    """The meaning of each error code the three services share, in ``service``'s words."""
    bad_key = ErrorRule(
        CaptchaAccountError, 0, f"the API key was refused; check {key_variable}", CLOSE_BAD_KEY
    )
    unsolvable = ErrorRule(
        CaptchaTaskError,
        unsolvable_retries,
        "this image could not be solved"
        + ("" if unsolvable_retries else f" ({service} charges for it: not tried again)"),
    )
    refused = ErrorRule(CaptchaTaskError, 0, f"{service} refused this image (size or format)")
    gone = ErrorRule(
        CaptchaTaskError, 0, f"{service} does not know this task id (expired, or not its own)"
    )
    return {
        "ERROR_KEY_DOES_NOT_EXIST": bad_key,
        "ERROR_IP_NOT_ALLOWED": ErrorRule(
            CaptchaAccountError,
            0,
            f"the key may not be used from this IP address (the account's IP list at {service})",
            CLOSE_BAD_KEY,
        ),
        "ERROR_ZERO_BALANCE": ErrorRule(
            CaptchaAccountError,
            0,
            "the account has no balance left; top it up to go on solving",
            CLOSE_ZERO_BALANCE,
        ),
        "ERROR_NO_SLOT_AVAILABLE": ErrorRule(
            CaptchaNoSlotError,
            UP_TO_MAX_RETRIES,
            f"{service} takes no tasks for now (no idle workers, or the bid is too low); "
            "retried with backoff",
        ),
        "ERROR_CAPTCHA_UNSOLVABLE": unsolvable,
        "ERROR_ZERO_CAPTCHA_FILESIZE": refused,
        "ERROR_TOO_BIG_CAPTCHA_FILESIZE": refused,
        "ERROR_NO_SUCH_METHOD": ErrorRule(
            CaptchaTaskError, 0, f"{service} does not know this method; check the API URL"
        ),
        "ERROR_NO_SUCH_CAPCHA_ID": gone,  # sic: the services' own spelling
        "ERROR_IP_BLOCKED": ErrorRule(
            CaptchaBlockedError,
            0,
            f"{service} blocked this IP for a while after improper use; solving pauses for "
            "CAPSOLVER_BLOCK_PAUSE seconds",
            CLOSE_BLOCKED,
        ),
    }


def error_table(
    service: str,
    key_variable: str,
    *,
    unsolvable_retries: int,
    extra: Mapping[str, str | ErrorRule] = {},
) -> ErrorTable:
    """A service's table: the shared codes, plus ``extra`` codes each either a rule or the
    name of a shared code it means the same as."""
    rules = error_rules(service, key_variable, unsolvable_retries=unsolvable_retries)
    for code, rule in extra.items():
        rules[code] = rules[rule] if isinstance(rule, str) else rule
    return ErrorTable(
        service,
        rules,
        unknown=ErrorRule(CaptchaTaskError, 0, f"{service} refused this task"),
        refused_key=rules["ERROR_KEY_DOES_NOT_EXIST"],
    )


#: A transient rule for the codes that only ask to wait (CapMonster's polling codes).
WAIT = ErrorRule(
    CaptchaTransientError, UP_TO_MAX_RETRIES, "asked to wait; polled again with backoff"
)


def task_refused(service: str) -> ErrorRule:
    """The rule of a task the service refuses whatever the image (a type or a field it
    does not take)."""
    return ErrorRule(CaptchaTaskError, 0, f"{service} refused the task; check its options")


@dataclass(frozen=True)
class Dialect:
    """What one of the three services names its own way."""

    #: As messages say it ("Anti-Captcha").
    name: str
    #: The method that reports a wrong answer.
    report_method: str
    #: The image-task options a provider entry may give, by the service's field names.
    options: Mapping[str, OptionSpec]
    errors: ErrorTable


class PolledService:
    """A service that answers image tasks only through getTaskResult, with integer task ids.

    ``options`` are the entry's own options for this service (checked here: ``ValueError``
    naming the option and the service); they go into every task as the service spells them.
    The plugin's task options (module, score, website URL) have no equivalent here unless a
    subclass maps them in :meth:`plugin_fields`; :meth:`unsupported` names those it drops.
    """

    def __init__(self, dialect: Dialect, options: Mapping[str, Any] = {}) -> None:
        self.dialect = dialect
        self.name = dialect.name
        self.errors = dialect.errors
        self.options = checked_options(dialect.name, dialect.options, options)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(options={self.options!r})"

    def task_payload(self, image: bytes, options: TaskOptions) -> dict[str, Any]:
        task: dict[str, Any] = {"type": TASK_TYPE, "body": base64.b64encode(image).decode("ascii")}
        payload: dict[str, Any] = {"task": task}
        for name, value in self.options.items():
            (payload if self.dialect.options[name].top_level else task)[name] = value
        task.update(self.plugin_fields(options))
        return payload

    def plugin_fields(self, options: TaskOptions) -> dict[str, Any]:
        """The task fields of the plugin's own options, as this service spells them."""
        return {}

    def unsupported(self, options: TaskOptions) -> list[str]:
        """The plugin options set in ``options`` this service has no field for (the
        website URL only labels spending where it exists, so it is never one of them)."""
        return [name for name in ("module", "score") if getattr(options, name) is not None]

    def pending(self, answer: dict[str, Any]) -> bool:
        return answer.get("status") != READY

    def task_id(self, answer: dict[str, Any]) -> str:
        value = answer.get("taskId")
        # Integer ids only (2Captcha's exceed 2**32: Python's int keeps them exact).
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return ""
        return task_id_text(value)

    def result_payload(self, task_id: str) -> dict[str, Any]:
        return {"taskId": wire_id(task_id)}

    def solution(self, answer: dict[str, Any], image_sha256: str) -> CaptchaSolution:
        solution = answer.get("solution")
        if not isinstance(solution, dict):
            raise self.errors.malformed("getTaskResult", "without solution.text")
        return checked_solution(
            self.errors,
            solution.get("text"),
            task_id=task_id_text(answer.get("taskId")),
            image_sha256=image_sha256,
        )

    def balance_call(self) -> ApiCall:
        return "getBalance", {}

    def balance_from(self, answer: dict[str, Any]) -> float:
        balance = answer_number(answer.get("balance"))
        if balance is None:
            raise self.errors.malformed("getBalance", "without a finite numeric balance")
        return balance

    def wrong_answer(self, task_id: str, message: str) -> ApiCall:
        # None of the three takes a reason with the report.
        return self.dialect.report_method, {"taskId": wire_id(task_id)}


def wire_id(task_id: str) -> int | str:
    """A task id as the service sent it: the integer, exactly, for an id of digits."""
    return int(task_id) if task_id.isascii() and task_id.isdigit() else task_id
