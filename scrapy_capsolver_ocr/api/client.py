"""One HTTP call to a solving service's API over treq, and what its answer means.

This module makes single calls and classifies their outcome into the exceptions of
:mod:`.errors`, by the service's :class:`~.errors.ErrorTable`; retries, pacing and stats
live in the cloud engine (:mod:`~scrapy_capsolver_ocr.engines.cloud.retry` and its account
guard), where they can be counted.
"""

from __future__ import annotations

import json
import logging
from typing import Any, cast

import treq
from OpenSSL import SSL
from scrapy.utils.defer import maybe_deferred_to_future
from service_identity import VerificationError
from twisted.internet.defer import Deferred, TimeoutError, succeed
from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import URI, Agent, BrowserLikePolicyForHTTPS, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory, IBodyProducer
from zope.interface import implementer  # type: ignore[import-untyped]

from ..errors import (
    CLOSE_BAD_KEY,
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaTaskError,
    CaptchaTimeoutError,
    CaptchaTransientError,
)
from ..reactor import installed_reactor
from ..settings import ApiKey
from .errors import ErrorTable

logger = logging.getLogger(__name__)

# An API answer is a few hundred bytes; anything far larger is a broken proxy or server,
# and reading it whole would let one bad answer take the crawl's memory.
MAX_ANSWER_SIZE = 1_048_576
#: Characters of an error answer's errorCode and errorDescription kept for messages.
MAX_CODE = 64
MAX_DESCRIPTION = 200
#: The calls that may be billed: never sent a second time by the client itself.
_PAID_METHODS = frozenset({"createTask"})
#: A pooled connection the server had closed: the request never reached it.
_STALE_CONNECTION = "CONNECTION_ResponseNeverReceived"

_HEADERS: dict[bytes | str, bytes | str] = {
    b"Content-Type": b"application/json",
    b"Accept": b"application/json",
}


class _AnswerTooLarge(Exception):
    pass


@implementer(IAgentEndpointFactory)
class _Endpoints:
    """TCP for http, TLS (certificates verified) for https, like Twisted's own factory, but
    made once per host: making one IDNA-encodes the host, a large share of a call's cost."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._tls = BrowserLikePolicyForHTTPS()
        self._made: dict[tuple[bytes, bytes, int], IStreamClientEndpoint] = {}

    def endpointForURI(self, uri: URI) -> IStreamClientEndpoint:
        key = (uri.scheme, uri.host, uri.port)
        made = self._made.get(key)
        if made is not None:
            return made
        endpoint: Any = HostnameEndpoint(self._reactor, uri.host.decode("ascii"), uri.port)
        if uri.scheme == b"https":
            endpoint = wrapClientTLS(self._tls.creatorForNetloc(uri.host, uri.port), endpoint)
        self._made[key] = endpoint
        return endpoint  # type: ignore[no-any-return]


@implementer(IBodyProducer)
class _WholeBody:
    """A request body written in one piece as the request starts. treq's own producer for
    bytes writes through Twisted's cooperator, a reactor turn after the headers: on a busy
    reactor the call then waits for that turn, and goes out in two writes."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: Any) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


def _whole_body(body: bytes) -> IBodyProducer:
    return cast(IBodyProducer, _WholeBody(body))


def _tls_refusal(exc: Exception) -> str:
    """What OpenSSL or the host name check said, when the call failed on the server's
    certificate; empty otherwise."""
    for failure in getattr(exc, "reasons", ()):
        error = failure.value
        if isinstance(error, VerificationError):
            return "it is not issued for this host name"
        if isinstance(error, SSL.Error):
            # args[0]: (library, function, reason) triples
            said = [str(item[-1]) for item in error.args[0] if isinstance(item, tuple)]
            return ", ".join(said) or str(error)
    return ""


def missing_key_error(service: str = "CapSolver") -> CaptchaAccountError:
    """The error of a call to ``service`` (its name in messages, as its error table says
    it) without a key: names where that service's own key is set."""
    # The registry sits above this module (its services import the client's neighbours).
    from .registry import PROVIDER_KINDS

    kind = next(
        (k for k in PROVIDER_KINDS.values() if k.build({}, None).errors.service == service),
        PROVIDER_KINDS["capsolver"],
    )
    if kind.name == "capsolver":
        where = (
            "set the CAPSOLVER_API_KEY setting or environment variable (or the api_key of "
            "its CAPSOLVER_PROVIDERS entry)"
        )
    else:
        where = (
            f"give its CAPSOLVER_PROVIDERS entry ({kind.name!r}) an api_key or set the "
            f"{kind.key_variable} environment variable"
        )
    return CaptchaAccountError(
        f"No {service} API key: {where}.",
        error_code="MISSING_KEY",
        close_reason=CLOSE_BAD_KEY,
    )


class ApiClient:
    """POSTs JSON to a solving service's API with treq, through one persistent connection pool.

    TLS certificates are verified (Twisted's browser-like policy); redirects are not
    followed, so the key in the body never goes to another host. treq's agent gets its
    endpoints from :class:`_Endpoints`, made once per host rather than once per call, and
    each body is written with its headers (:class:`_WholeBody`).
    No text that leaves this class quotes an answer's body, and the key's value is scrubbed
    from every message: a proxy that echoes the request would otherwise show the key.
    """

    def __init__(
        self,
        errors: ErrorTable,
        api_url: str,
        api_key: ApiKey | None,
        timeout: float,
        max_connections: int,
    ) -> None:
        self.errors = errors
        self._service = errors.service
        self.api_url = api_url
        self.api_key = api_key
        self.timeout = timeout
        self._reactor = reactor = installed_reactor()
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.maxPersistentPerHost = max_connections
        agent: Any = Agent.usingEndpointFactory(reactor, _Endpoints(reactor), pool=self._pool)
        self._http = treq.client.HTTPClient(agent, data_to_body_producer=_whole_body)

    def __repr__(self) -> str:
        return (
            f"ApiClient(service={self._service!r}, api_url={self.api_url!r}, "
            f"api_key={self.api_key!r})"
        )

    async def call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` plus the key to ``/method`` and return the answer's JSON object.

        Raises a :class:`CaptchaApiError` subclass on any failure. A call other than
        createTask that went out on a pooled connection the server had already closed is
        sent once more on a fresh one: the solver does not retry those calls, and they are
        never paid for.
        """
        if self.api_key is None:
            raise missing_key_error(self._service)
        try:
            return await self._call(method, payload)
        except CaptchaTransientError as exc:
            if method in _PAID_METHODS or exc.error_code != _STALE_CONNECTION:
                raise
        logger.debug(
            "%s %s met a closed pooled connection; sending it again", self._service, method
        )
        await maybe_deferred_to_future(self._pool.closeCachedConnections())
        return await self._call(method, payload)

    async def _call(self, method: str, payload: dict[str, Any]) -> dict[str, Any]:
        assert self.api_key is not None
        body = json.dumps({"clientKey": self.api_key.reveal(), **payload}).encode()
        deferred = self._post(f"{self.api_url}/{method}", body)
        try:
            status, raw = await maybe_deferred_to_future(deferred)
        except TimeoutError:
            raise CaptchaTimeoutError(
                f"{self._service} {method} took longer than CAPSOLVER_TIMEOUT "
                f"({self.timeout:g} s).",
                "TIMEOUT",
            ) from None
        except _AnswerTooLarge:
            raise CaptchaTransientError(
                f"{self._service} {method} answered more than {MAX_ANSWER_SIZE} bytes; "
                "not an API answer (a proxy or a broken server in the way?).",
                "ANSWER_TOO_LARGE",
            ) from None
        except Exception as exc:
            raise self._transport_error(method, exc) from None
        try:
            return self._parse(method, status, raw)
        except CaptchaApiError as exc:
            raise self._scrubbed(exc) from None

    def _transport_error(self, method: str, exc: Exception) -> CaptchaTransientError:
        refused = _tls_refusal(exc)
        if refused:
            return CaptchaTransientError(
                f"{self._service} {method} failed: the TLS certificate of {self.api_url} was "
                f"refused ({refused}); the key was not sent. Is a proxy intercepting "
                "HTTPS, or does CAPSOLVER_API_URL point at the wrong host?",
                "TLS_CERTIFICATE",
            )
        reason = type(exc).__name__
        return CaptchaTransientError(
            self._scrub(f"{self._service} {method} failed: {reason}: {exc}"), f"CONNECTION_{reason}"
        )

    def _scrub(self, text: str) -> str:
        assert self.api_key is not None
        secret = self.api_key.reveal()
        return text.replace(secret, repr(self.api_key)) if secret else text

    def _scrubbed(self, exc: CaptchaApiError) -> CaptchaApiError:
        """``exc`` with the key's value taken out of its message and description."""
        exc.args = tuple(self._scrub(arg) if isinstance(arg, str) else arg for arg in exc.args)
        exc.description = self._scrub(exc.description)
        return exc

    def _post(self, url: str, body: bytes) -> Deferred[tuple[int, bytes]]:
        chunks: list[bytes] = []
        received = 0

        def collect(chunk: bytes) -> None:
            nonlocal received
            received += len(chunk)
            if received > MAX_ANSWER_SIZE:
                raise _AnswerTooLarge()
            chunks.append(chunk)

        def read(response: Any) -> Deferred[tuple[int, bytes]]:
            done = treq.collect(response, collect)
            return done.addCallback(lambda _: (response.code, b"".join(chunks)))

        request: Deferred[Any] = self._http.post(
            url, data=body, headers=_HEADERS, allow_redirects=False
        )
        request.addCallback(read)
        timed_out = False

        def time_out() -> None:
            nonlocal timed_out
            timed_out = True
            request.cancel()

        timer = self._reactor.callLater(self.timeout, time_out)

        def settle(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            # Twisted wraps the cancellation in ResponseNeverReceived: say what happened.
            if timed_out and isinstance(result, Failure):
                raise TimeoutError()
            return result

        return request.addBoth(settle)

    def _parse(self, method: str, status: int, raw: bytes) -> dict[str, Any]:
        try:
            answer = json.loads(raw)
        except (ValueError, RecursionError):  # RecursionError: absurdly deep nesting
            answer = None
        if not isinstance(answer, dict):
            if status == 401:
                raise self.errors.error_for("", "", status)
            # The body itself is never quoted: a proxy may echo the request, key included.
            said = (
                f"{self._service} {method} answered HTTP {status} with {len(raw)} bytes that are "
                "not a JSON object"
            )
            if 400 <= status < 500 and status != 429:
                # Another client error will not go away by asking again: most often
                # CAPSOLVER_API_URL points at something that is not the API.
                raise CaptchaTaskError(f"{said}; check CAPSOLVER_API_URL.", f"HTTP_{status}")
            code = f"HTTP_{status}" if status >= 400 else "NOT_JSON"
            raise CaptchaTransientError(f"{said}.", code)
        error_id = answer.get("errorId")
        if error_id not in (0, None) or (error_id is None and status >= 400):
            raise self.errors.error_for(
                _answer_text(answer.get("errorCode")),
                _answer_text(answer.get("errorDescription"), MAX_DESCRIPTION),
                status,
            )
        if status == 401:
            raise self.errors.error_for("", "", status)
        if status >= 500 or status == 429:
            raise CaptchaTransientError(
                f"{self._service} {method} answered HTTP {status}.", f"HTTP_{status}"
            )
        if error_id is None:
            raise CaptchaTransientError(
                f"{self._service} {method} answered JSON without errorId: not an API answer.",
                "MALFORMED_ANSWER",
            )
        return answer

    async def close(self) -> None:
        await maybe_deferred_to_future(self._pool.closeCachedConnections())


def _answer_text(value: Any, limit: int = MAX_CODE) -> str:
    """A string field of an error answer, as text of at most ``limit`` characters: the
    message and the log line that quote it stay short whatever the server sent."""
    if not isinstance(value, str) or not value:
        return ""
    text = " ".join(value.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
