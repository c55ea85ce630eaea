"""The local OCR server's HTTP layer: JSON in and out, and the limits that keep it answering.

Every answer, errors included, is JSON in the error format the four services share
(``errorId``, ``errorCode``, ``errorDescription``), whatever the client sends: another HTTP
verb, an unknown path, a body that is not JSON or is nested too deeply, a malformed request.
Those refusals are CapSolver's (HTTP 400), except an unknown method under another dialect's
prefix, which that dialect refuses its own way.

The limits (:class:`ServerLimits`) guard the server against abusive clients: a request body
cap checked before the body is read, a deadline for a whole request once it starts
(slow-header and slow-body clients), an idle timeout, and a cap on open connections that
closes the longest-idle one to make room, so idle connections never lock new clients out.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..compat import answer_malformed_requests
from .protocol import ApiError, JsonObject, bad_request

logger = logging.getLogger(__name__)

#: Room for the base64 of a 1 MiB image (the plugin's CAPSOLVER_MAX_IMAGE_SIZE) and then some.
DEFAULT_MAX_BODY = 4 * 1024 * 1024
DEFAULT_IDLE_TIMEOUT = 60.0
DEFAULT_REQUEST_TIMEOUT = 30.0
# Files the server needs besides its connections: the listening socket, the event loop's,
# logs, the OCR model.
_FILES_RESERVED = 64
_MIN_CONNECTIONS = 16
# Seconds a refused client may go on sending before its connection is cut.
_LINGER = 5.0

Handler = Callable[[JsonObject], "Deferred[JsonObject] | JsonObject"]


def default_max_connections(open_files: int | None = None) -> int:
    """Connections the server keeps open at most: what the process may open
    (``RLIMIT_NOFILE``, or ``open_files``), less the files it needs for itself."""
    if open_files is None:
        try:
            import resource
        except ImportError:  # no such limit to read (Windows)
            return 1000
        open_files, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if open_files == resource.RLIM_INFINITY:
            return 100_000
    return max(open_files - _FILES_RESERVED, _MIN_CONNECTIONS)


@dataclass(frozen=True)
class ServerLimits:
    """How much one client may ask of the server."""

    #: Bytes of a request body; a larger one is refused before it is read.
    max_body: int = DEFAULT_MAX_BODY
    #: Seconds a connection may stay silent between requests.
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    #: Seconds a client has to send a whole request (line, headers, body) once it starts.
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    #: Open connections at most; None: from the open-file limit.
    max_connections: int | None = None

    def __post_init__(self) -> None:
        for name in ("max_body", "idle_timeout", "request_timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be more than 0, got {getattr(self, name)}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be at least 1, got {self.max_connections}")


def parse_json(body: bytes) -> JsonObject:
    """The JSON object of a request body, or :class:`ApiError` ``ERROR_BAD_REQUEST``."""
    try:
        payload = json.loads(body)
    except RecursionError:
        raise bad_request("the request's JSON is nested too deeply") from None
    except ValueError:
        raise bad_request("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise bad_request("the request body must be a JSON object")
    return payload


def _error_answer(failure: Failure) -> tuple[int, JsonObject]:
    if isinstance(failure.value, ApiError):
        return failure.value.http_status, failure.value.to_json()
    logger.error("Unexpected server error:\n%s", failure.getTraceback())
    error = ApiError("ERROR_SERVICE_UNAVALIABLE", "internal error of the local server")
    return error.http_status, error.to_json()


#: The refusal of a path no handler serves, by the path.
UnknownPath = Callable[[str], ApiError]


class _ApiResource(Resource):
    """Every API method at its path: JSON in, JSON out, written when the answer is ready."""

    isLeaf = True

    def __init__(self, handlers: Mapping[str, Handler], unknown: UnknownPath | None) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._handlers = {path.encode(): handler for path, handler in handlers.items()}
        names = ", ".join(path.strip("/") for path in handlers)
        self._unknown = unknown or (
            lambda path: bad_request(f"unknown method; this server answers {names}")
        )

    def render(self, request: Request) -> int:
        # Every HTTP verb comes here, so that none gets Twisted's HTML "405 Not Allowed".
        connection_lost: list[Failure] = []
        request.notifyFinish().addErrback(connection_lost.append)
        body = request.content.read() if request.content is not None else b""
        answering = maybeDeferred(self._answer, request.method, request.path, body)
        answering.addCallbacks(lambda answer: (200, answer), _error_answer).addCallback(
            lambda answer: None if connection_lost else _write(request, *answer)
        )
        return NOT_DONE_YET

    def _answer(self, method: bytes, path: bytes, body: bytes) -> Deferred[JsonObject]:
        handler = self._handlers.get(path.rstrip(b"/"))
        if handler is None:
            raise self._unknown(path.decode("latin-1"))
        if method != b"POST":
            raise bad_request("every method is an HTTP POST of a JSON object")
        answer = handler(parse_json(body))
        return answer if isinstance(answer, Deferred) else succeed(answer)


def _write(request: Request, status: int, json_answer: JsonObject) -> None:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    request.write(json.dumps(json_answer).encode())
    request.finish()


# Twisted's own refusals (a malformed request line or header, a line or all headers over
# 16 KB, a bad length or chunk) answer in CapSolver's format too.
@answer_malformed_requests(lambda channel: channel.refuse_malformed())
class _LimitedChannel(http.HTTPChannel):
    """An HTTP connection that enforces :class:`ServerLimits` while a request arrives."""

    site: _ApiSite  # set by Site.buildProtocol

    def connectionMade(self) -> None:
        super().connectionMade()  # type: ignore[no-untyped-call]
        self.busy = False  # a whole request arrived and is being answered
        self.refused = False  # answered with an error before the request was whole
        self.last_active = self.site.now()
        self._deadline: Any = None  # IDelayedCall of the request being received
        self._chunked_bytes = 0
        self.site.opened(self)

    def lineReceived(self, line: bytes) -> None:
        if not self.refused:
            super().lineReceived(line)  # type: ignore[no-untyped-call]

    def dataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        self.last_active = self.site.now()
        if not self.busy and self._deadline is None:
            self._deadline = self.site.call_later(self.site.limits.request_timeout, self._too_slow)
        super().dataReceived(data)  # type: ignore[no-untyped-call]

    def allHeadersReceived(self) -> None:
        if self.length is not None and self.length > self.site.limits.max_body:
            self._refuse_body()
            return
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def rawDataReceived(self, data: bytes) -> None:
        if self.refused:
            return
        if not self.busy and self.length is None:  # chunked: no length to check up front
            self._chunked_bytes += len(data)
            if self._chunked_bytes > self.site.limits.max_body:
                self._refuse_body()
                return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._cancel_deadline()
        self.busy = True
        self._chunked_bytes = 0
        super().allContentReceived()  # type: ignore[no-untyped-call]

    def requestDone(self, request: http.Request) -> None:
        self.busy = False
        self.last_active = self.site.now()
        super().requestDone(request)  # type: ignore[no-untyped-call]

    def connectionLost(self, reason: Failure) -> None:  # type: ignore[override]
        self._cancel_deadline()
        self.site.closed(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def refuse_malformed(self) -> None:
        self.refuse(bad_request("the HTTP request is malformed or its headers too large"))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.refuse_malformed()

    def _refuse_body(self) -> None:
        limit = self.site.limits.max_body
        self.refuse(bad_request(f"the request body is over {limit} bytes (--max-body)"))

    def _too_slow(self) -> None:
        self._deadline = None
        timeout = self.site.limits.request_timeout
        self.refuse(bad_request(f"the request did not arrive within {timeout:g} s"))

    def refuse(self, error: ApiError) -> None:
        """Answer ``error`` at once, whatever was received, and close the connection."""
        self.refused = True
        self._cancel_deadline()
        transport: Any = self.transport
        logger.debug("Refused a request from %s: %s", transport.getPeer(), error)
        body = json.dumps(error.to_json()).encode()
        head = (
            f"HTTP/1.1 {error.http_status} {http.RESPONSES[error.http_status].decode()}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        )
        transport.write(head.encode() + body)
        # Closing with unread data would reset the connection, and a client still sending
        # its body would never read the answer: close the sending side only, drop whatever
        # still comes, and close the rest when the client does or after a short while.
        transport.unregisterProducer()
        transport.loseWriteConnection()
        self._deadline = self.site.call_later(_LINGER, transport.abortConnection)

    def _cancel_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None


class _ApiSite(Site):
    """The server's HTTP factory: its limits, and the connections it holds open."""

    noisy = False
    protocol = _LimitedChannel  # type: ignore[assignment]

    def __init__(self, resource: Resource, limits: ServerLimits, reactor: Any) -> None:
        super().__init__(resource, timeout=limits.idle_timeout, reactor=reactor)  # type: ignore[no-untyped-call]
        self.displayTracebacks = False
        self.limits = limits
        self.now: Callable[[], float] = reactor.seconds
        self.call_later: Callable[..., Any] = reactor.callLater
        self.max_connections = limits.max_connections or default_max_connections()
        self._open: set[_LimitedChannel] = set()

    def opened(self, channel: _LimitedChannel) -> None:
        self._open.add(channel)
        if len(self._open) <= self.max_connections:
            return
        # Make room by closing the connection idle the longest, so that clients holding
        # connections open cannot lock new ones out. If every other one is being answered,
        # the newcomer is closed: there is no queue to wait in.
        idle = (other for other in self._open if not other.busy and other is not channel)
        victim = min(idle, key=lambda other: other.last_active, default=channel)
        logger.debug(
            "%d connections open: closing one idle since %.0f s",
            len(self._open),
            self.now() - victim.last_active,
        )
        self._open.discard(victim)
        transport: Any = victim.transport
        transport.abortConnection()
        # abortConnection() frees the file on the next turn of the reactor; accepting a burst
        # of connections can use up the files before that, and Twisted then resets new
        # clients. The socket is already out of the reactor: close it now.
        transport.getHandle().close()

    def closed(self, channel: _LimitedChannel) -> None:
        self._open.discard(channel)

    def log(self, request: http.Request) -> None:
        # Instead of Twisted's access log line, at INFO, for every request.
        logger.debug("%s %s -> %s", request.method, request.uri, request.code)


def api_site(
    handlers: Mapping[str, Handler],
    limits: ServerLimits,
    reactor: Any,
    unknown: UnknownPath | None = None,
) -> Site:
    """The HTTP factory that serves ``handlers`` (path -> handler) within ``limits``;
    ``unknown`` refuses any other path (default: CapSolver's ``ERROR_BAD_REQUEST`` naming
    the methods served)."""
    return _ApiSite(_ApiResource(handlers, unknown), limits, reactor)
