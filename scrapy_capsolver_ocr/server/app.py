"""A local, offline stand-in for CapSolver's ``ImageToTextTask`` API: the OCR engine and
the server's entry points.

It speaks CapSolver's protocol for image captchas: ``POST /createTask``, ``/getTaskResult``,
``/getBalance`` and ``/feedbackTask`` take and give the same JSON, and errors come in the
same format (``{"errorId": 1, "errorCode": "ERROR_...", "errorDescription": "..."}``, HTTP
400, or 401 for a bad key). Images are read on this machine by ddddocr (``pip install
"scrapy-capsolver-ocr[ocr]"``), so a crawl can use it instead of ``https://api.capsolver.com``
without an account, and tests can use it without spending credit.

Nothing is billed: ``getBalance`` always answers :data:`LOCAL_BALANCE`. The ``score``,
``websiteURL`` and ``appId`` fields are checked and otherwise ignored; ``module`` ``number``
reads digits only, every other module any character the model knows. The batch form
(``images``) is not served. The engine is the one local-first solving reads with in a crawl
(:mod:`~scrapy_capsolver_ocr.engines.local`), and each solution carries its ``confidence``.

Anti-Captcha's, CapMonster Cloud's and 2Captcha's dialects are served too, each under its own
path prefix (``/anticaptcha/createTask``, ...; :mod:`~scrapy_capsolver_ocr.server.polled`),
and ``protocol`` puts one of them at the root instead of CapSolver's.

CapSolver's protocol lives in :mod:`~scrapy_capsolver_ocr.server.protocol`, the HTTP layer and
its limits in :mod:`~scrapy_capsolver_ocr.server.http`. Run the server with
``scrapy-capsolver-ocr serve``, or inside a running reactor with :func:`start_server`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.threadpool import ThreadPool

from ..api.image_task import TASK_TYPE
from ..engines.local import InvalidImageError, OcrUnavailableError, require_ddddocr
from ..images import DEFAULT_MAX_IMAGE_PIXELS
from ..reactor import installed_reactor
from .http import Handler, ServerLimits, api_site
from .polled import SERVER_DIALECTS, LocalPolledService, no_such_method
from .protocol import (
    LOCAL_BALANCE,
    ApiError,
    LocalCapSolver,
    Recognizer,
    bad_request,
)

if TYPE_CHECKING:
    from ..engines.local.gate import Reading

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LOCAL_BALANCE",
    "PROTOCOLS",
    "TASK_TYPE",
    "ApiError",
    "DdddOcrEngine",
    "InvalidImageError",
    "OcrUnavailableError",
    "Recognizer",
    "RunningServer",
    "ServerLimits",
    "serve",
    "start_server",
]

logger = logging.getLogger(__name__)

DIGITS = "0123456789"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 0
DEFAULT_WORKERS = 2
#: The plugin's own default of CAPSOLVER_MAX_IMAGE_PIXELS: what a crawl would send at most.
DEFAULT_MAX_PIXELS = DEFAULT_MAX_IMAGE_PIXELS
# Room for bursts of new connections while the reactor is busy.
_LISTEN_BACKLOG = 511
#: The dialects the server speaks, by the plugin's provider names: each under its own path
#: prefix (``/anticaptcha/createTask``), and one of them (CapSolver's by default) at the root.
CAPSOLVER = "capsolver"
PROTOCOLS = (CAPSOLVER, *SERVER_DIALECTS)


class DdddOcrEngine:
    """Reads captchas with the local OCR engine (ddddocr's model, which ships inside its
    wheel: no network), each worker thread with its own session.

    Images over ``max_pixels``, or so wide for their height that the model would need
    gigabytes, are refused once their header is parsed, before their pixels are decoded,
    whatever their format.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        require_ddddocr("The local OCR server")
        from ..engines.local.engine import OcrEngine  # numpy: only when serving

        # The second model only refines the confidence a crawl's gate reads; the server's
        # answers are the first model's either way, at about twice the speed without it.
        self._engine = OcrEngine(second_opinion=False)
        self._max_pixels = max_pixels

    def recognize(self, image: bytes, module: str) -> Reading:
        chars = DIGITS if module == "number" else None
        return self._engine.read(image, chars, self._max_pixels)


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
    engine: Recognizer | None = None,
    *,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = DEFAULT_WORKERS,
    require_key: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limits: ServerLimits | None = None,
    protocol: str = CAPSOLVER,
    reactor: Any = None,
) -> RunningServer:
    """Listen on ``host:port`` (0: a free port) in the running (or soon running) reactor.

    ``engine`` defaults to :class:`DdddOcrEngine`, which raises :class:`OcrUnavailableError`
    if ddddocr is not installed. At most ``workers`` images are read at once, in threads, so
    the reactor keeps answering meanwhile. With ``require_key``, a request with another
    ``clientKey`` gets ``ERROR_KEY_DENIED_ACCESS``. An image whose header declares more than
    ``max_pixels`` pixels gets ``ERROR_INVALID_IMAGE`` before anything decodes it;
    ``limits`` (default :class:`ServerLimits`) bound what one client may ask.

    Every dialect of :data:`PROTOCOLS` is served under ``/<name>/``, and ``protocol``'s at
    the root too (CapSolver's by default).
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, not {protocol!r}")
    reactor = installed_reactor(reactor)
    pool = ThreadPool(minthreads=0, maxthreads=workers, name="capsolver-ocr")
    engine = engine or DdddOcrEngine(max_pixels)
    options: dict[str, Any] = {"max_pixels": max_pixels, "require_key": require_key}
    services: dict[str, dict[str, Handler]] = {
        CAPSOLVER: LocalCapSolver(engine, pool, reactor, **options).handlers()
    }
    for name, dialect in SERVER_DIALECTS.items():
        service = LocalPolledService(dialect, engine, pool, reactor, **options)
        services[name] = service.handlers()
    handlers = dict(services[protocol])
    for name, methods in services.items():
        handlers.update({f"/{name}{path}": handler for path, handler in methods.items()})
    site = api_site(handlers, limits or ServerLimits(), reactor, _unknown_path(protocol))
    listening = reactor.listenTCP(port, site, backlog=_LISTEN_BACKLOG, interface=host)
    pool.start()
    url = _url(host, listening.getHost().port)
    logger.info(
        "Local OCR server on %s (%s at the root; %s under their own prefixes), %d workers",
        url,
        protocol,
        ", ".join(f"/{name}/" for name in PROTOCOLS),
        workers,
    )
    return RunningServer(url, listening, pool)


def _unknown_path(root: str) -> Callable[[str], ApiError]:
    """The refusal of a path no method serves, in the dialect its prefix (else the root)
    names."""

    def refuse(path: str) -> ApiError:
        prefix = path.lstrip("/").split("/", 1)[0]
        dialect = prefix if prefix in PROTOCOLS and "/" in path.lstrip("/") else root
        if dialect == CAPSOLVER:
            return bad_request(
                "unknown method; this server answers createTask, getTaskResult, getBalance, "
                "feedbackTask, and the other dialects under "
                + ", ".join(f"/{name}/" for name in PROTOCOLS)
            )
        return no_such_method(path)

    return refuse


def serve(engine: Recognizer | None = None, **options: Any) -> None:
    """Run the server until the process is stopped (SIGINT, SIGTERM); ``options`` are those
    of :func:`start_server`.

    The first line on stdout is the URL, written once the port is bound: a parent process
    that reads it can connect at once, with no race on the port.
    """
    reactor = installed_reactor()
    server = start_server(engine, reactor=reactor, **options)
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    print(server.url, flush=True)
    reactor.run()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
