"""CapSolver's protocol as the local OCR server speaks it, apart from HTTP.

:class:`LocalCapSolver` checks each request as CapSolver documents it (field types, the
strict base64 of ``task.body``, the declared pixel size of the image before anything
decodes it), hands the image to an OCR engine in a thread pool, builds the answers and
remembers the recent ones for ``getTaskResult`` and ``feedbackTask``. Errors are
:class:`ApiError`: the ``errorCode`` and ``errorDescription`` of CapSolver's error format
and the HTTP status they go with.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import reprlib
import uuid
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from ..api.image_task import TASK_TYPE
from ..checks import SCORE_RANGE
from ..engines.local import InvalidImageError
from ..images import declared_size, image_type

if TYPE_CHECKING:
    from ..engines.local.gate import Reading

logger = logging.getLogger(__name__)

#: What ``getBalance`` answers: the local server is free, so any large number would do.
LOCAL_BALANCE = 1_000_000.0
# Enough for getTaskResult and feedback on any recent task while keeping memory flat on a
# long run: an answer is a few hundred bytes.
REMEMBERED_TASKS = 10_000

JsonObject = dict[str, Any]

# Feedback fields as they go into a log line: a client may send megabytes in them.
_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 200


class ApiError(Exception):
    """An answer with ``errorId`` 1: a CapSolver error code, a description, an HTTP status."""

    def __init__(self, code: str, description: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.http_status = http_status

    def to_json(self) -> JsonObject:
        return {"errorId": 1, "errorCode": self.code, "errorDescription": self.description}


def bad_request(description: str) -> ApiError:
    return ApiError("ERROR_BAD_REQUEST", description)


class Recognizer(Protocol):
    """What the server reads images with: any OCR engine that answers for a ``module``.

    ``recognize`` runs in worker threads, several at a time, so it must be thread-safe.
    """

    def recognize(self, image: bytes, module: str) -> str | Reading:
        """Return the text in ``image``, or a reading with its confidence too; raise
        :class:`InvalidImageError` if it is no image."""
        ...


def ok(**fields: Any) -> JsonObject:
    return {"errorId": 0, "errorCode": "", "errorDescription": "", **fields}


def _invalid_task(description: str) -> ApiError:
    return ApiError("ERROR_INVALID_TASK_DATA", f"invalid task data: {description}")


def _string(fields: JsonObject, name: str, label: str) -> str | None:
    # A null counts as absent, as when CapSolver's typed decoding meets one; any other
    # value of the wrong type fails the whole task there, so it does here, naming the field.
    value = fields.get(name)
    if value is not None and not isinstance(value, str):
        raise _invalid_task(f"{label} must be a string, not {_json_type(value)}")
    return value


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    return "an array" if isinstance(value, list) else "an object"


def _check_score(task: JsonObject) -> None:
    score = task.get("score")
    if score is None:
        return
    if isinstance(score, bool) or not isinstance(score, (int, float)):
        raise _invalid_task(f"task.score must be a number, not {_json_type(score)}")
    low, high = SCORE_RANGE
    if not low <= score <= high:
        raise _invalid_task(f"task.score must be from {low} to {high}, got {score!r:.20}")


def _decode_body(task: JsonObject) -> bytes:
    body = _string(task, "body", "task.body")
    if not body:
        if task.get("images") is not None:
            raise _invalid_task("the batch form (task.images) is not served here; send task.body")
        raise _invalid_task("missing body data: task.body must be the base64 of the image")
    try:
        # Strict, like the documented format: no newlines, no "data:...;base64," prefix.
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ApiError(
            "ERROR_PARSE_IMAGE_FAIL",
            "task.body is not valid base64 (send the bare base64 of the image, "
            "without newlines or a data: prefix)",
        ) from exc


def read_task(payload: JsonObject) -> tuple[bytes, str]:
    """Check a createTask request as CapSolver does; return the image bytes and module."""
    _string(payload, "appId", "appId")
    task = payload.get("task")
    if not isinstance(task, dict):
        raise _invalid_task("missing task: the request needs a task object")
    task_type = _string(task, "type", "task.type")
    if not task_type:
        raise _invalid_task("missing task.type")
    if task_type != TASK_TYPE:
        raise ApiError(
            "ERROR_TASK_NOT_SUPPORTED",
            f"task type {task_type[:40]!r} is not supported here; the local server solves "
            f"{TASK_TYPE} only",
        )
    module = _string(task, "module", "task.module")
    _string(task, "websiteURL", "task.websiteURL")
    _check_score(task)
    return _decode_body(task), module or "common"


def check_declared_pixels(
    image: bytes, max_pixels: int, code: str = "ERROR_INVALID_IMAGE", http_status: int = 400
) -> None:
    """Refuse an image whose header declares more than ``max_pixels`` pixels, before
    anything decodes it: a few hundred bytes can declare a picture that takes gigabytes.
    The refusal is an :class:`ApiError` with ``code`` (CapSolver's by default)."""
    kind = image_type(image)
    if kind is None:
        return  # not a format whose header is read here: the engine's own cap applies
    size = declared_size(kind, image)
    if size is None:
        raise ApiError(code, f"the {kind.upper()} header declares no size", http_status)
    width, height = size
    if width * height > max_pixels:
        raise ApiError(
            code,
            f"the image declares {width}x{height} pixels, over this server's limit of "
            f"{max_pixels} (--max-pixels)",
            http_status,
        )


class KeyCheck:
    """The one ``clientKey`` a server started with ``require_key`` accepts (any without)."""

    def __init__(self, require_key: str | None) -> None:
        self._required = require_key.encode() if require_key else None

    def passes(self, payload: JsonObject) -> bool:
        if self._required is None:
            return True
        key = payload.get("clientKey")
        given = key.encode() if isinstance(key, str) else b""
        return hmac.compare_digest(given, self._required)


def reading_solution(reading: str | Reading) -> JsonObject:
    """The ``solution`` object of an engine's reading: its text, and its confidence when
    the engine says how sure it is."""
    if isinstance(reading, str):
        return {"text": reading}
    return {"text": reading.text, "confidence": round(reading.confidence, 4)}


def remember(tasks: OrderedDict[Any, Any], task_id: Any, answer: Any, limit: int) -> None:
    """Keep ``answer`` under ``task_id``, forgetting the oldest beyond ``limit`` tasks."""
    tasks[task_id] = answer
    if len(tasks) > limit:
        tasks.popitem(last=False)


def engine_failure(failure: Failure, code: str, http_status: int = 400) -> ApiError:
    """The refusal of an image the engine could not read (``code``), or, for any other
    failure of the engine, logged, ``ERROR_CAPTCHA_UNSOLVABLE``."""
    if failure.check(InvalidImageError):
        logger.debug("Unreadable image: %s", failure.value)
        return ApiError(code, f"task.body cannot be read: {str(failure.value)[:200]}", http_status)
    logger.error("OCR failed on an image:\n%s", failure.getTraceback())
    return ApiError("ERROR_CAPTCHA_UNSOLVABLE", "the OCR engine failed on this image", http_status)


class LocalService:
    """What every dialect the server speaks has: the engine and the threads it reads in,
    the pixel cap, the required key, how many recent tasks are remembered."""

    def __init__(
        self,
        engine: Recognizer,
        pool: ThreadPool,
        reactor: Any,
        *,
        max_pixels: int,
        require_key: str | None = None,
        remembered_tasks: int = REMEMBERED_TASKS,
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._reactor = reactor
        self._max_pixels = max_pixels
        self._key = KeyCheck(require_key)
        self._remembered = remembered_tasks

    def read(self, image: bytes, module: str) -> Deferred[str | Reading]:
        """The engine's reading of ``image``, in a worker thread."""
        return deferToThreadPool(self._reactor, self._pool, self._engine.recognize, image, module)


class LocalCapSolver(LocalService):
    """CapSolver's API apart from HTTP: checks requests, runs OCR, builds the answers."""

    def __init__(self, engine: Recognizer, pool: ThreadPool, reactor: Any, **options: Any) -> None:
        super().__init__(engine, pool, reactor, **options)
        # The ready answer of each recent task, oldest first.
        self._tasks: OrderedDict[str, JsonObject] = OrderedDict()

    def handlers(self) -> dict[str, Any]:
        """Every method of the API by its path."""
        return {
            "/createTask": self.create_task,
            "/getTaskResult": self.get_task_result,
            "/getBalance": self.get_balance,
            "/feedbackTask": self.feedback_task,
        }

    def create_task(self, payload: JsonObject) -> Deferred[JsonObject]:
        self._check_key(payload)
        image, module = read_task(payload)
        check_declared_pixels(image, self._max_pixels)
        return self.read(image, module).addCallbacks(self._solved, self._unsolved)

    def get_task_result(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        return self._tasks[self._known_task_id(payload)]

    def get_balance(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        return ok(balance=LOCAL_BALANCE, packages=[])

    def feedback_task(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        task_id = self._known_task_id(payload)
        result = payload.get("result", {})
        if not isinstance(result, dict):
            raise _invalid_task("result must be an object")
        logger.info(
            "Feedback on task %s: invalid=%s code=%s message=%s",
            task_id,
            *(_SHORT.repr(result.get(name)) for name in ("invalid", "code", "message")),
        )
        return ok()

    def _known_task_id(self, payload: JsonObject) -> str:
        task_id = payload.get("taskId")
        if not isinstance(task_id, str) or task_id not in self._tasks:
            raise ApiError("ERROR_TASKID_INVALID", "Task ID does not exist or is invalid")
        return task_id

    def _check_key(self, payload: JsonObject) -> None:
        if not self._key.passes(payload):
            raise ApiError("ERROR_KEY_DENIED_ACCESS", "clientKey is missing or wrong", 401)

    def _solved(self, reading: str | Reading) -> JsonObject:
        solution = reading_solution(reading)
        if not solution["text"]:
            raise ApiError("ERROR_CAPTCHA_UNSOLVABLE", "no text was found in the image")
        task_id = str(uuid.uuid4())
        answer = ok(status="ready", solution=solution, taskId=task_id)
        remember(self._tasks, task_id, answer, self._remembered)
        logger.debug("Task %s solved", task_id)
        return answer

    def _unsolved(self, failure: Failure) -> JsonObject:
        raise engine_failure(failure, "ERROR_INVALID_IMAGE")
