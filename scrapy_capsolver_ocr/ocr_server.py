"""A local, offline stand-in for CapSolver's ``ImageToTextTask`` API.

It speaks CapSolver's protocol for image captchas: ``POST /createTask``, ``/getBalance`` and
``/feedbackTask`` take and give the same JSON, and errors come in the same format
(``{"errorId": 1, "errorCode": "ERROR_...", "errorDescription": "..."}``, HTTP 400, or 401 for
a bad key). Images are read on this machine by ddddocr (``pip install
"scrapy-capsolver-ocr[ocr]"``), so a crawl can use it instead of ``https://api.capsolver.com``
without an account, and tests can use it without spending credit.

Nothing is billed: ``getBalance`` always answers :data:`LOCAL_BALANCE`. The ``score``,
``websiteURL`` and ``appId`` fields are accepted and ignored; ``module`` ``number`` keeps digits
only, every other module uses ddddocr's general model. The batch form (``images``) is not
served.

Run it with ``scrapy-capsolver-ocr serve``, or inside a running reactor with
:func:`start_server`.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

if TYPE_CHECKING:
    from PIL.Image import Image

logger = logging.getLogger(__name__)

TASK_TYPE = "ImageToTextTask"
#: What ``getBalance`` answers: the local server is free, so any large number would do.
LOCAL_BALANCE = 1_000_000.0
DIGITS = "0123456789"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0
DEFAULT_WORKERS = 2
OCR_INSTALL_HINT = 'pip install "scrapy-capsolver-ocr[ocr]"'
# Enough for feedback on any recent task while keeping memory flat on a long run.
_REMEMBERED_TASKS = 10_000

JsonObject = dict[str, Any]


class ApiError(Exception):
    """An answer with ``errorId`` 1: a CapSolver error code, a description, an HTTP status."""

    def __init__(self, code: str, description: str, http_status: int = 400) -> None:
        super().__init__(f"{code}: {description}")
        self.code = code
        self.description = description
        self.http_status = http_status

    def to_json(self) -> JsonObject:
        return {"errorId": 1, "errorCode": self.code, "errorDescription": self.description}


class InvalidImageError(ValueError):
    """The engine cannot decode these bytes as an image."""


class OcrUnavailableError(RuntimeError):
    """ddddocr, the optional OCR dependency, is not installed."""


class OcrEngine(Protocol):
    """What the server needs from an OCR engine.

    ``recognize`` runs in worker threads, several at a time, so it must be thread-safe.
    """

    def recognize(self, image: bytes, module: str) -> str:
        """Return the text in ``image``; raise :class:`InvalidImageError` if it is no image."""
        ...


class DdddOcrEngine:
    """Reads captchas with ddddocr's general model, which ships inside its wheel (no network)."""

    def __init__(self) -> None:
        try:
            import ddddocr
        except ImportError as exc:
            raise OcrUnavailableError(
                f"The local OCR server needs ddddocr, an optional dependency: {OCR_INSTALL_HINT}"
            ) from exc
        # One instance serves every worker thread: onnxruntime sessions are thread-safe, and
        # the character filter ddddocr rebuilds on every call stays the full set as long as
        # set_ranges() is never called. A narrowed filter would race between threads.
        self._ocr = ddddocr.DdddOcr(show_ad=False)

    def recognize(self, image: bytes, module: str) -> str:
        text = str(self._ocr.classification(_open_image(image), png_fix=True))
        if module == "number":
            # The same result as ddddocr's set_ranges("0123456789"), which drops the decoded
            # characters outside the range, without touching the shared engine.
            text = "".join(char for char in text if char in DIGITS)
        return text


def _open_image(data: bytes) -> Image:
    from PIL import Image as PilImage

    try:
        picture = PilImage.open(io.BytesIO(data))
        picture.load()
    except (OSError, SyntaxError, ValueError, PilImage.DecompressionBombError) as exc:
        raise InvalidImageError(str(exc)) from exc
    return picture


def _ok(**fields: Any) -> JsonObject:
    return {"errorId": 0, "errorCode": "", "errorDescription": "", **fields}


def _invalid_task(description: str) -> ApiError:
    return ApiError("ERROR_INVALID_TASK_DATA", description)


def _decode_body(body: object) -> bytes:
    if not isinstance(body, str) or not body:
        raise _invalid_task("missing body data: task.body must be the base64 of the image")
    try:
        # Strict, like the documented format: no newlines, no "data:...;base64," prefix.
        return base64.b64decode(body, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise _invalid_task(
            "task.body is not valid base64 (send the bare base64 of the image, "
            "without newlines or a data: prefix)"
        ) from exc


def _read_task(payload: JsonObject) -> tuple[bytes, str]:
    """Validate a createTask request; return the image bytes and the module."""
    task = payload.get("task")
    if not isinstance(task, dict):
        raise _invalid_task("missing task: the request needs a task object")
    task_type = task.get("type")
    if not isinstance(task_type, str) or not task_type:
        raise _invalid_task("missing task.type")
    if task_type != TASK_TYPE:
        raise ApiError(
            "ERROR_TASK_NOT_SUPPORTED",
            f"task type {task_type!r} is not supported here; the local server solves "
            f"{TASK_TYPE} only",
        )
    module = task.get("module", "common")
    if not isinstance(module, str):
        raise _invalid_task("task.module must be a string")
    if "body" not in task and "images" in task:
        raise _invalid_task("the batch form (task.images) is not served here; send task.body")
    return _decode_body(task.get("body")), module or "common"


class LocalCapSolver:
    """The API's behaviour apart from HTTP: checks requests, runs OCR, builds the answers."""

    def __init__(
        self, engine: OcrEngine, pool: ThreadPool, reactor: Any, require_key: str | None = None
    ) -> None:
        self._engine = engine
        self._pool = pool
        self._reactor = reactor
        self._required_key = require_key.encode() if require_key else None
        self._tasks: OrderedDict[str, None] = OrderedDict()

    def create_task(self, payload: JsonObject) -> Deferred[JsonObject]:
        self._check_key(payload)
        image, module = _read_task(payload)
        reading = deferToThreadPool(
            self._reactor, self._pool, self._engine.recognize, image, module
        )
        return reading.addCallbacks(self._solved, self._unsolved)

    def get_balance(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        return _ok(balance=LOCAL_BALANCE, packages=[])

    def feedback_task(self, payload: JsonObject) -> JsonObject:
        self._check_key(payload)
        task_id = payload.get("taskId")
        if not isinstance(task_id, str) or task_id not in self._tasks:
            raise ApiError("ERROR_TASKID_INVALID", "unknown taskId")
        result = payload.get("result", {})
        if not isinstance(result, dict):
            raise _invalid_task("result must be an object")
        logger.info(
            "Feedback on task %s: invalid=%s code=%s message=%r",
            task_id,
            result.get("invalid"),
            result.get("code"),
            result.get("message"),
        )
        return _ok()

    def _check_key(self, payload: JsonObject) -> None:
        if self._required_key is None:
            return
        key = payload.get("clientKey")
        given = key.encode() if isinstance(key, str) else b""
        if not hmac.compare_digest(given, self._required_key):
            raise ApiError("ERROR_KEY_DENIED_ACCESS", "clientKey is missing or wrong", 401)

    def _solved(self, text: str) -> JsonObject:
        if not text:
            raise ApiError("ERROR_CAPTCHA_UNSOLVABLE", "no text was found in the image")
        task_id = str(uuid.uuid4())
        self._tasks[task_id] = None
        if len(self._tasks) > _REMEMBERED_TASKS:
            self._tasks.popitem(last=False)
        logger.debug("Task %s solved", task_id)
        return _ok(status="ready", solution={"text": text}, taskId=task_id)

    def _unsolved(self, failure: Failure) -> JsonObject:
        if failure.check(InvalidImageError):
            logger.debug("Unreadable image: %s", failure.value)
            raise ApiError("ERROR_INVALID_IMAGE", "task.body is not an image that can be read")
        logger.error("OCR failed on an image:\n%s", failure.getTraceback())
        raise ApiError("ERROR_CAPTCHA_UNSOLVABLE", "the OCR engine failed on this image")


Handler = Callable[[JsonObject], "Deferred[JsonObject] | JsonObject"]


def _parse_request(body: bytes) -> JsonObject:
    try:
        payload = json.loads(body)
    except ValueError as exc:
        raise ApiError("ERROR_BAD_REQUEST", "the request body is not JSON") from exc
    if not isinstance(payload, dict):
        raise ApiError("ERROR_BAD_REQUEST", "the request body must be a JSON object")
    return payload


def _success_answer(json_answer: JsonObject) -> tuple[int, JsonObject]:
    return 200, json_answer


def _error_answer(failure: Failure) -> tuple[int, JsonObject]:
    if isinstance(failure.value, ApiError):
        return failure.value.http_status, failure.value.to_json()
    logger.error("Unexpected server error:\n%s", failure.getTraceback())
    error = ApiError("ERROR_SERVICE_UNAVALIABLE", "internal error of the local server", 500)
    return error.http_status, error.to_json()


class _ApiResource(Resource):
    """Every API method: JSON in, JSON out, written when the handler's result is ready."""

    isLeaf = True

    def __init__(self, api: LocalCapSolver) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._handlers: dict[bytes, Handler] = {
            b"/createTask": api.create_task,
            b"/getBalance": api.get_balance,
            b"/feedbackTask": api.feedback_task,
        }

    def render_POST(self, request: Request) -> int:
        connection_lost: list[Failure] = []
        request.notifyFinish().addErrback(connection_lost.append)
        assert request.content is not None
        body = request.content.read()
        answering: Deferred[JsonObject] = maybeDeferred(self._answer, request.path, body)
        answering.addCallbacks(_success_answer, _error_answer).addCallback(
            lambda answer: None if connection_lost else _write(request, *answer)
        )
        return NOT_DONE_YET

    def _answer(self, path: bytes, body: bytes) -> Deferred[JsonObject]:
        handler = self._handlers.get(path.rstrip(b"/"))
        if handler is None:
            raise ApiError(
                "ERROR_BAD_REQUEST",
                "unknown method; this server answers createTask, getBalance and feedbackTask",
                404,
            )
        answer = handler(_parse_request(body))
        return answer if isinstance(answer, Deferred) else succeed(answer)


def _write(request: Request, status: int, json_answer: JsonObject) -> None:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.write(json.dumps(json_answer).encode())
    request.finish()


class _ApiSite(Site):
    noisy = False

    def log(self, request: http.Request) -> None:
        # Instead of Twisted's access log line, at INFO, for every request.
        logger.debug("%s %s -> %s", request.method, request.uri, request.code)


def _site(api: LocalCapSolver) -> Site:
    site = _ApiSite(_ApiResource(api))  # type: ignore[no-untyped-call]
    site.displayTracebacks = False
    return site


@dataclass
class RunningServer:
    """A server listening in this process; :meth:`stop` it before the reactor stops."""

    url: str
    port: Any  # IListeningPort: zope interfaces are opaque to mypy without its plugin
    pool: ThreadPool

    def stop(self) -> Deferred[None]:
        stopping: Deferred[None] = maybeDeferred(self.port.stopListening)
        # ThreadPool.stop() waits for the images being read, so no request is cut short.
        stopping.addCallback(lambda _: self.pool.stop())
        return stopping


def start_server(
    engine: OcrEngine | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = DEFAULT_WORKERS,
    require_key: str | None = None,
    reactor: Any = None,
) -> RunningServer:
    """Listen on ``host:port`` (0: a free port) in the running (or soon running) reactor.

    ``engine`` defaults to :class:`DdddOcrEngine`, which raises :class:`OcrUnavailableError`
    if ddddocr is not installed. At most ``workers`` images are read at once, in threads, so
    the reactor keeps answering meanwhile. With ``require_key``, a request with another
    ``clientKey`` gets ``ERROR_KEY_DENIED_ACCESS``.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    pool = ThreadPool(minthreads=0, maxthreads=workers, name="capsolver-ocr")
    api = LocalCapSolver(engine or DdddOcrEngine(), pool, reactor, require_key)
    listening = reactor.listenTCP(port, _site(api), interface=host)
    pool.start()
    url = _url(host, listening.getHost().port)
    logger.info("Local CapSolver-compatible OCR server on %s, %d workers", url, workers)
    return RunningServer(url, listening, pool)


def serve(
    engine: OcrEngine | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = DEFAULT_WORKERS,
    require_key: str | None = None,
) -> None:
    """Run the server until the process is stopped (SIGINT, SIGTERM).

    The first line on stdout is the URL, written once the port is bound: a parent process
    that reads it can connect at once, with no race on the port.
    """
    from twisted.internet import reactor as installed_reactor

    reactor: Any = installed_reactor
    server = start_server(
        engine, host=host, port=port, workers=workers, require_key=require_key, reactor=reactor
    )
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    print(server.url, flush=True)
    reactor.run()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
