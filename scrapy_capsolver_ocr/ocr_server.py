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
keeps digits only, every other module uses ddddocr's general model. The batch form
(``images``) is not served.

The protocol lives in :mod:`~scrapy_capsolver_ocr.ocr_server_api`, the HTTP layer and its
limits in :mod:`~scrapy_capsolver_ocr.ocr_server_http`. Run the server with
``scrapy-capsolver-ocr serve``, or inside a running reactor with :func:`start_server`.
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.python.threadpool import ThreadPool

from .ocr_server_api import (
    LOCAL_BALANCE,
    TASK_TYPE,
    ApiError,
    InvalidImageError,
    LocalCapSolver,
    OcrEngine,
)
from .ocr_server_http import ServerLimits, api_site

if TYPE_CHECKING:
    from PIL.Image import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "LOCAL_BALANCE",
    "TASK_TYPE",
    "ApiError",
    "DdddOcrEngine",
    "InvalidImageError",
    "OcrEngine",
    "OcrUnavailableError",
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
DEFAULT_MAX_PIXELS = 1_000_000
# Room for bursts of new connections while the reactor is busy.
_LISTEN_BACKLOG = 511
OCR_INSTALL_HINT = 'pip install "scrapy-capsolver-ocr[ocr]"'
# ddddocr's general model reads images scaled to this height; its time and memory grow with
# the width that gives (0.7 s and 60 MiB at 4096 px here, a minute and 10 GiB at 640000).
_MODEL_HEIGHT = 64
_MAX_SCALED_WIDTH = 4096


class OcrUnavailableError(RuntimeError):
    """ddddocr, the optional OCR dependency, is not installed."""


class DdddOcrEngine:
    """Reads captchas with ddddocr's general model, which ships inside its wheel (no network).

    Images over ``max_pixels``, or so wide for their height that the model would need
    gigabytes, are refused once their header is parsed, before their pixels are decoded,
    whatever their format.
    """

    def __init__(self, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
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
        self._max_pixels = max_pixels

    def recognize(self, image: bytes, module: str) -> str:
        text = str(self._ocr.classification(_open_image(image, self._max_pixels), png_fix=True))
        if module == "number":
            # The same result as ddddocr's set_ranges("0123456789"), which drops the decoded
            # characters outside the range, without touching the shared engine.
            text = "".join(char for char in text if char in DIGITS)
        return text


def _open_image(data: bytes, max_pixels: int) -> Image:
    from PIL import Image as PilImage

    try:
        picture = PilImage.open(io.BytesIO(data))
        # PIL's own guard (Image.MAX_IMAGE_PIXELS) is process-wide and only warns below
        # twice its value: this one is the engine's, checked before any pixel is decoded.
        width, height = picture.size
        if width * height > max_pixels:
            raise InvalidImageError(f"{width}x{height} pixels, over {max_pixels}")
        # The model reads the image scaled to 64 px high: a thin strip within the pixel cap
        # (a 4 KB PNG of 100000x10) scales to a width that takes a minute and gigabytes.
        scaled_width = width * _MODEL_HEIGHT // max(height, 1)
        if scaled_width > _MAX_SCALED_WIDTH:
            raise InvalidImageError(
                f"{width}x{height} pixels: {scaled_width} px wide once scaled to "
                f"{_MODEL_HEIGHT} px high, over {_MAX_SCALED_WIDTH}"
            )
        picture.load()
    except (OSError, SyntaxError, ValueError, PilImage.DecompressionBombError) as exc:
        raise InvalidImageError(str(exc)) from exc
    return picture


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
    max_pixels: int = DEFAULT_MAX_PIXELS,
    limits: ServerLimits | None = None,
    reactor: Any = None,
) -> RunningServer:
    """Listen on ``host:port`` (0: a free port) in the running (or soon running) reactor.

    ``engine`` defaults to :class:`DdddOcrEngine`, which raises :class:`OcrUnavailableError`
    if ddddocr is not installed. At most ``workers`` images are read at once, in threads, so
    the reactor keeps answering meanwhile. With ``require_key``, a request with another
    ``clientKey`` gets ``ERROR_KEY_DENIED_ACCESS``. An image whose header declares more than
    ``max_pixels`` pixels gets ``ERROR_INVALID_IMAGE`` before anything decodes it;
    ``limits`` (default :class:`ServerLimits`) bound what one client may ask.
    """
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    if max_pixels < 1:
        raise ValueError(f"max_pixels must be at least 1, got {max_pixels}")
    if reactor is None:
        from twisted.internet import reactor as default_reactor

        reactor = default_reactor
    pool = ThreadPool(minthreads=0, maxthreads=workers, name="capsolver-ocr")
    api = LocalCapSolver(
        engine or DdddOcrEngine(max_pixels),
        pool,
        reactor,
        max_pixels=max_pixels,
        require_key=require_key,
    )
    site = api_site(api.handlers(), limits or ServerLimits(), reactor)
    listening = reactor.listenTCP(port, site, backlog=_LISTEN_BACKLOG, interface=host)
    pool.start()
    url = _url(host, listening.getHost().port)
    logger.info("Local CapSolver-compatible OCR server on %s, %d workers", url, workers)
    return RunningServer(url, listening, pool)


def serve(engine: OcrEngine | None = None, **options: Any) -> None:
    """Run the server until the process is stopped (SIGINT, SIGTERM); ``options`` are those
    of :func:`start_server`.

    The first line on stdout is the URL, written once the port is bound: a parent process
    that reads it can connect at once, with no race on the port.
    """
    from twisted.internet import reactor as installed_reactor

    reactor: Any = installed_reactor
    server = start_server(engine, reactor=reactor, **options)
    reactor.addSystemEventTrigger("before", "shutdown", server.stop)
    print(server.url, flush=True)
    reactor.run()


def _url(host: str, port: int) -> str:
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
