"""Anti-Captcha's, CapMonster Cloud's and 2Captcha's (API v2) image-task protocol as the
local OCR server speaks it, apart from HTTP (docs/providers.md, sections 2-4).

The three answer alike, and unlike CapSolver: createTask answers an integer task id only
(``{"errorId": 0, "taskId": 7654321}``) while the image is read in a worker thread, and the
text comes only from getTaskResult (``processing`` until ``ready``); errors are answered
with HTTP 200 and the service's own codes (``ERROR_KEY_DOES_NOT_EXIST``,
``ERROR_ZERO_CAPTCHA_FILESIZE``, ``ERROR_NO_SUCH_CAPCHA_ID``, ...); the wrong-answer report
takes the integer id. What differs between them is a :class:`ServerDialect`: the image sizes
and formats the service accepts, the code of an image it cannot read, the name of its report
method, whether a data-URI body is accepted, and CapMonster's module field and
``recognizingThreshold``.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..api.image_task import TASK_TYPE
from ..images import image_type
from .protocol import (
    LOCAL_BALANCE,
    ApiError,
    JsonObject,
    LocalService,
    Recognizer,
    check_declared_pixels,
    engine_failure,
    reading_solution,
    remember,
)

if TYPE_CHECKING:
    from ..engines.local.gate import Reading

logger = logging.getLogger(__name__)

#: The three answer errors with HTTP 200: the error is in the body.
_STATUS = 200
#: Images under this many bytes are refused by all three (``ERROR_ZERO_CAPTCHA_FILESIZE``).
MIN_IMAGE_BYTES = 100
_FORMATS = frozenset({"png", "jpeg", "gif"})


@dataclass(frozen=True)
class ServerDialect:
    """What one of the three services answers its own way."""

    #: As the server's log lines say it.
    name: str
    #: The largest image (bytes) the service accepts.
    max_image_bytes: int
    #: The code of an image the service cannot read (not base64, not an image).
    unreadable_code: str
    #: The wrong-answer report methods it takes.
    report_methods: tuple[str, ...]
    #: Image formats it reads; empty: it publishes none, and the engine decides.
    formats: frozenset[str] = frozenset()
    #: It accepts a ``data:<type>;base64,`` prefix on ``task.body``.
    data_uri: bool = False
    #: The task fields its module name may come in (CapMonster: docs and SDK spellings).
    module_fields: tuple[str, ...] = ()
    #: It refuses a reading less sure than ``recognizingThreshold`` percent.
    threshold: bool = False
    #: Its getTaskResult answer carries ``cost``, ``createTime``, ``endTime``, ``solveCount``.
    cost_fields: bool = False


#: The three dialects by the names of the plugin's registry (``api/registry.py``).
SERVER_DIALECTS: dict[str, ServerDialect] = {
    "anticaptcha": ServerDialect(
        "Anti-Captcha",
        500_000,
        "ERROR_IMAGE_TYPE_NOT_SUPPORTED",
        ("reportIncorrectImageCaptcha",),
        formats=_FORMATS,
        cost_fields=True,
    ),
    "capmonster": ServerDialect(
        "CapMonster Cloud",
        50_000,
        # CapMonster documents no code for an unreadable image; no text is what it finds.
        "ERROR_CAPTCHA_UNSOLVABLE",
        ("reportIncorrectImageCaptcha",),
        module_fields=("capMonsterModule", "CapMonsterModule"),
        threshold=True,
    ),
    "2captcha": ServerDialect(
        "2Captcha",
        100_000,
        "ERROR_IMAGE_TYPE_NOT_SUPPORTED",
        ("reportIncorrect", "reportCorrect"),
        formats=_FORMATS,
        data_uri=True,
        cost_fields=True,
    ),
}
#: 2Captcha's task ids exceed 2**32 (its examples: 74372499131): the local ids start above
#: it for every dialect, so that a client keeping ids in 32 bits fails here first.
FIRST_TASK_ID = 74_372_499_131


def error(code: str, description: str) -> ApiError:
    return ApiError(code, description, _STATUS)


def no_such_method(path: str) -> ApiError:
    return error("ERROR_NO_SUCH_METHOD", f"there is no method {path[-60:]!r} here")


@dataclass
class _Task:
    #: The ready answer, or the error, once the image is read.
    answer: JsonObject | None = None
    failed: ApiError | None = None


class LocalPolledService(LocalService):
    """One of the three dialects: checks requests, starts the reading, answers polls.
    ``options`` are :class:`LocalService`'s."""

    def __init__(
        self,
        dialect: ServerDialect,
        engine: Recognizer,
        pool: ThreadPool,
        reactor: Any,
        **options: Any,
    ) -> None:
        super().__init__(engine, pool, reactor, **options)
        self.dialect = dialect
        self._next_id = FIRST_TASK_ID
        self._tasks: OrderedDict[int, _Task] = OrderedDict()

    def handlers(self) -> dict[str, Any]:
        """Every method of the API by its path."""
        handlers = {
            "/createTask": self.create_task,
            "/getTaskResult": self.get_task_result,
            "/getBalance": self.get_balance,
        }
        for method in self.dialect.report_methods:
            handlers[f"/{method}"] = self.report
        return handlers

    def create_task(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        task = payload.get("task")
        if not isinstance(task, dict):
            raise error("ERROR_TASK_ABSENT", "the request has no task object")
        if task.get("type") != TASK_TYPE:
            raise error("ERROR_TASK_NOT_SUPPORTED", f"this server solves {TASK_TYPE} only")
        image = self._image(task.get("body"))
        threshold = self._threshold(task)
        # numeric 1 asks for digits only: the engine's "number" module reads just those.
        module = "number" if task.get("numeric") == 1 else self._module(task)
        task_id = self._next_id
        self._next_id += 1
        record = _Task()
        remember(self._tasks, task_id, record, self._remembered)
        self.read(image, module).addCallbacks(
            self._solved, self._unsolved, callbackArgs=(record, threshold), errbackArgs=(record,)
        )
        return {"errorId": 0, "taskId": task_id}

    def get_task_result(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        task_id, record = self._known_task(payload)
        if record.failed is not None:
            raise record.failed
        if record.answer is None:
            return {"errorId": 0, "status": "processing"}
        return {**record.answer, "taskId": task_id}

    def get_balance(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        return {"errorId": 0, "balance": LOCAL_BALANCE}

    def report(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        task_id, _ = self._known_task(payload)
        logger.info("%s report on task %d", self.dialect.name, task_id)
        return {"errorId": 0, "status": "success"}

    def _check_key(self, payload: JsonObject) -> None:
        if not self._key.passes(payload):
            raise error("ERROR_KEY_DOES_NOT_EXIST", "the clientKey is missing or wrong")

    def _known_task(self, payload: JsonObject) -> tuple[int, _Task]:
        task_id = payload.get("taskId")
        # Integer ids only, as the services give them.
        record = (
            self._tasks.get(task_id)
            if isinstance(task_id, int) and not isinstance(task_id, bool)
            else None
        )
        if record is None:
            raise error("ERROR_NO_SUCH_CAPCHA_ID", "no such task id (an integer is expected)")
        assert isinstance(task_id, int)
        return task_id, record

    def _image(self, body: Any) -> bytes:
        dialect = self.dialect
        if not isinstance(body, str) or not body:
            raise error("ERROR_ZERO_CAPTCHA_FILESIZE", "task.body holds no image")
        if dialect.data_uri and body.startswith("data:") and "," in body:
            body = body.split(",", 1)[1]
        try:
            image = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError):
            raise error(dialect.unreadable_code, "task.body is not base64") from None
        if len(image) < MIN_IMAGE_BYTES:
            raise error(
                "ERROR_ZERO_CAPTCHA_FILESIZE",
                f"the image has {len(image)} bytes, under {MIN_IMAGE_BYTES}",
            )
        if len(image) > dialect.max_image_bytes:
            raise error(
                "ERROR_TOO_BIG_CAPTCHA_FILESIZE",
                f"the image has {len(image)} bytes, over {dialect.max_image_bytes}",
            )
        if dialect.formats and image_type(image) not in dialect.formats:
            raise error(dialect.unreadable_code, "the image is not a JPEG, GIF or PNG")
        check_declared_pixels(image, self._max_pixels, "ERROR_TOO_BIG_CAPTCHA_FILESIZE", _STATUS)
        return image

    def _module(self, task: JsonObject) -> str:
        for field in self.dialect.module_fields:
            if isinstance(task.get(field), str):
                return str(task[field])
        return "common"

    def _threshold(self, task: JsonObject) -> float | None:
        value = task.get("recognizingThreshold") if self.dialect.threshold else None
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 100:
            return value / 100
        return None

    def _solved(self, reading: str | Reading, record: _Task, threshold: float | None) -> None:
        solution = reading_solution(reading)
        sure = solution.get("confidence")
        if not solution["text"]:
            record.failed = error("ERROR_CAPTCHA_UNSOLVABLE", "no text was found in the image")
        elif threshold is not None and sure is not None and sure < threshold:
            record.failed = error(
                "ERROR_CAPTCHA_UNSOLVABLE",
                f"read with {sure:.0%} confidence, under recognizingThreshold",
            )
        else:
            # None of the three sends a confidence with the text.
            text = {"text": solution["text"]}
            record.answer = {"errorId": 0, "status": "ready", "solution": text}
            if self.dialect.cost_fields:
                # Free here; the services send the cost as text.
                now = int(self._reactor.seconds())
                record.answer.update(cost="0", createTime=now, endTime=now, solveCount=0)

    def _unsolved(self, failure: Failure, record: _Task) -> None:
        record.failed = engine_failure(failure, self.dialect.unreadable_code, _STATUS)
