"""A small Redis client on Twisted: commands and pub/sub over ``redis://``, ``rediss://``
and ``unix://``, on whatever reactor the crawl runs (asyncio or epoll alike).

Written on Twisted's own transports rather than taken from a client library because fleet
mode needs three things the libraries do not give together: no blocking call and no asyncio
loop required (``redis.asyncio`` only runs under the asyncio reactor; scrapy-redis blocks),
a call that fails at once while Redis is down instead of queueing until it returns
(txredisapi's reconnecting pool waits, so a crawl could not tell "down" from "slow"), and
``rediss://`` with the server's certificate verified. Replies are parsed by ``hiredis``
(the C parser redis-py also uses), the one library fleet mode needs.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet import ssl
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint, UNIXClientEndpoint, wrapClientTLS
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from ..checks import redact_url
from ..reactor import installed_reactor
from ..waiting import Waiters

logger = logging.getLogger(__name__)

#: Seconds to connect, and to wait for any one reply, before Redis counts as unreachable.
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0
#: Errors Redis answers while it cannot serve yet (restarting, busy): unreachable, not wrong.
_NOT_READY = ("LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN")


class RedisUnavailable(Exception):
    """Redis could not be reached, or stopped answering; the message says what was tried."""


class RedisReplyError(Exception):
    """Redis answered a command with an error."""


@dataclass(frozen=True)
class RedisAddress:
    """Where Redis is, parsed from a ``redis://``, ``rediss://`` or ``unix://`` URL."""

    url: str
    host: str = ""
    port: int = 6379
    path: str = ""
    tls: bool = False
    ca_file: str | None = None
    username: str | None = None
    password: str | None = None
    db: int = 0

    @classmethod
    def from_url(cls, url: str) -> RedisAddress:
        parts = urlsplit(url)
        query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
        db_text = query.get("db") or (parts.path.strip("/") if parts.scheme != "unix" else "")
        try:
            db = int(db_text or 0)
        except ValueError:
            raise ValueError(f"{redact_url(url)}: the database must be a number") from None
        password = unquote(parts.password) if parts.password is not None else None
        username = unquote(parts.username) if parts.username else None
        common = {"url": url, "username": username, "password": password, "db": db}
        if parts.scheme == "unix":
            return cls(path=unquote(parts.path), **common)  # type: ignore[arg-type]
        return cls(
            host=parts.hostname or "localhost",
            port=parts.port or 6379,
            tls=parts.scheme == "rediss",
            ca_file=query.get("ssl_ca_certs"),
            **common,  # type: ignore[arg-type]
        )

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    def describe(self) -> str:
        """What a connection attempt tries, for messages."""
        if self.path:
            return f"the unix socket {self.path}"
        return f"{self.host}:{self.port} over {'TLS' if self.tls else 'TCP'}"

    def endpoint(self, reactor: Any, timeout: float) -> Any:
        """A Twisted client endpoint (zope interfaces are opaque to mypy: ``Any``)."""
        if self.path:
            return UNIXClientEndpoint(reactor, self.path, timeout=timeout)
        endpoint: Any = HostnameEndpoint(reactor, self.host, self.port, timeout=timeout)
        if self.tls:
            trust: Any = ssl.platformTrust()
            if self.ca_file:
                with open(self.ca_file, "rb") as file:
                    trust = ssl.Certificate.loadPEM(file.read())
            options = ssl.optionsForClientTLS(self.host, trustRoot=trust)
            endpoint = wrapClientTLS(options, endpoint)
        return endpoint

    def handshake(self) -> list[tuple[Any, ...]]:
        """The commands that prepare a new connection: log in, pick the database."""
        commands: list[tuple[Any, ...]] = []
        if self.password is not None:
            login = (self.username, self.password) if self.username else (self.password,)
            commands.append(("AUTH", *login))
        if self.db:
            commands.append(("SELECT", self.db))
        return commands


def _error(reply: hiredis.ReplyError) -> Exception:
    text = str(reply)
    if text.startswith(_NOT_READY):
        return RedisUnavailable(f"Redis is not ready: {text}")
    return RedisReplyError(text)


class RedisProtocol(Protocol):
    """One connection: commands are answered in the order they were sent. Pushes that
    answer no command (pub/sub messages) go to ``on_push``."""

    def __init__(self, reactor: Any, reply_timeout: float) -> None:
        self._reactor = reactor
        self._reply_timeout = reply_timeout
        self._reader = hiredis.Reader()
        self._pending: collections.deque[tuple[Deferred[Any], Any]] = collections.deque()
        self._lost_reason = ""
        self.connected_ = False
        self.on_push: Any = None
        self.on_lost: Any = None

    def connectionMade(self) -> None:
        self.connected_ = True

    def call(self, *args: Any) -> Deferred[Any]:
        deferred: Deferred[Any] = Deferred()
        if not self.connected_:
            deferred.errback(RedisUnavailable(self._lost_reason or "the connection is closed"))
            return deferred
        # A reply that never comes leaves every later reply unmatched: drop the connection.
        timer = self._reactor.callLater(self._reply_timeout, self._timed_out)
        self._pending.append((deferred, timer))
        self.send(*args)
        return deferred

    def send(self, *args: Any) -> None:
        """Send a command whose replies come as pushes (SUBSCRIBE)."""
        transport: Any = self.transport
        transport.write(hiredis.pack_command(args))

    def _timed_out(self) -> None:
        self._lost_reason = f"no reply within {self._reply_timeout:g} s"
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)
        while True:
            try:
                reply = self._reader.gets()
            except hiredis.ProtocolError as exc:
                self._lost_reason = f"unreadable reply: {exc}"
                transport: Any = self.transport
                transport.abortConnection()
                return
            if reply is False:
                return
            self._answer(reply)

    def _answer(self, reply: Any) -> None:
        if self.on_push is not None and _is_message(reply):
            self.on_push(reply)
            return
        if not self._pending:
            return
        deferred, timer = self._pending.popleft()
        timer.cancel()
        if isinstance(reply, hiredis.ReplyError):
            deferred.errback(_error(reply))
        else:
            deferred.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.connected_ = False
        if not self._lost_reason:
            self._lost_reason = f"the connection was lost ({reason.getErrorMessage()})"
        pending, self._pending = self._pending, collections.deque()
        for deferred, timer in pending:
            if timer.active():
                timer.cancel()
            deferred.errback(RedisUnavailable(self._lost_reason))
        if self.on_lost is not None:
            self.on_lost()

    def disconnect(self) -> None:
        transport: Any = self.transport
        if transport is not None and self.connected_:
            self._lost_reason = "the connection was closed"
            transport.loseConnection()


def _is_message(reply: Any) -> bool:
    return (
        isinstance(reply, list)
        and len(reply) == 3
        and reply[0] in (b"message", b"subscribe", b"unsubscribe")
    )


class RedisClient:
    """Commands over one connection, made when needed: a call while Redis is down fails at
    once with :class:`RedisUnavailable`, and the next call tries to connect again."""

    def __init__(
        self,
        address: RedisAddress,
        reactor: Any = None,
        *,
        connect_timeout: float = CONNECT_TIMEOUT,
        reply_timeout: float = REPLY_TIMEOUT,
    ) -> None:
        self.address = address
        self._reactor = installed_reactor(reactor)
        self._connect_timeout = connect_timeout
        self._reply_timeout = reply_timeout
        self._protocol: RedisProtocol | None = None
        self._connecting: Waiters[RedisProtocol] | None = None
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisClient({self.address.safe_url!r})"

    async def call(self, *args: Any) -> Any:
        """The reply to one command; raises :class:`RedisUnavailable` or
        :class:`RedisReplyError`."""
        protocol = await self.connection()
        return await maybe_deferred_to_future(protocol.call(*args))

    async def connection(self) -> RedisProtocol:
        if self._closed:
            raise RedisUnavailable("the client is closed")
        if self._protocol is not None and self._protocol.connected_:
            return self._protocol
        if self._connecting is not None:  # another caller is connecting: share its result
            return await self._connecting.wait()
        self._connecting = connecting = Waiters[RedisProtocol]()
        try:
            protocol = await self._connect()
        except BaseException as exc:
            self._connecting = None
            connecting.fail(exc)
            raise
        self._connecting = None
        self._protocol = protocol
        connecting.succeed(protocol)
        return protocol

    async def _connect(self) -> RedisProtocol:
        address = self.address
        factory = Factory.forProtocol(lambda: RedisProtocol(self._reactor, self._reply_timeout))
        try:
            endpoint = address.endpoint(self._reactor, self._connect_timeout)
            connecting: Deferred[RedisProtocol] = endpoint.connect(factory)
            protocol = await maybe_deferred_to_future(connecting)
        except Exception as exc:
            raise RedisUnavailable(
                f"connecting to {address.describe()} failed: {_reason(exc)}"
            ) from None
        try:
            for command in address.handshake():
                await maybe_deferred_to_future(protocol.call(*command))
        except RedisReplyError as exc:
            protocol.disconnect()
            raise RedisUnavailable(f"{address.describe()} refused the login: {exc}") from None
        return protocol

    def close(self) -> None:
        self._closed = True
        if self._protocol is not None:
            self._protocol.disconnect()
            self._protocol = None


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    # Twisted's connection errors read "An error occurred while connecting: 111: Connection
    # refused." and similar: keep the part that says why.
    return " ".join(text.split())


class RedisSubscriber:
    """Listens to pub/sub channels on a connection of its own, and connects again after
    Redis was lost (every ``retry`` seconds) for as long as it runs. ``on_message(channel,
    data)`` gets each message; ``on_ready()`` runs once listening starts or starts again,
    since messages sent in between were missed."""

    def __init__(
        self,
        address: RedisAddress,
        channels: list[str],
        on_message: Any,
        on_ready: Any,
        reactor: Any = None,
        retry: float = 0.5,
    ) -> None:
        self._client = RedisClient(address, reactor)
        self._reactor = self._client._reactor
        self._channels = channels
        self._on_message = on_message
        self._on_ready = on_ready
        self._retry = retry
        self._running = False
        self._protocol: RedisProtocol | None = None
        self._retry_call: Any | None = None
        self._subscribed: Deferred[None] = Deferred()
        self._confirmed = 0
        self.listening = False

    async def start(self) -> None:
        """Start listening; raises :class:`RedisUnavailable` if that failed (it is tried
        again in the background)."""
        self._running = True
        await self._listen()

    async def _listen(self) -> None:
        self._retry_call = None
        if not self._running:
            return
        try:
            protocol = await self._client.connection()
        except RedisUnavailable:
            self._schedule_retry()
            raise
        self._subscribed = Deferred()
        self._confirmed = 0
        protocol.on_push = self._push
        protocol.on_lost = self._lost
        self._protocol = protocol
        protocol.send("SUBSCRIBE", *self._channels)

        def timed_out(result: Any, timeout: float) -> Any:
            protocol.disconnect()
            return result

        self._subscribed.addTimeout(REPLY_TIMEOUT, self._reactor, timed_out)
        try:
            await maybe_deferred_to_future(self._subscribed)
        except Exception:
            where = self._client.address.describe()
            raise RedisUnavailable(f"could not subscribe on {where}") from None
        self.listening = True
        self._on_ready()

    def _push(self, reply: list[Any]) -> None:
        kind, channel, data = reply
        if kind == b"message":
            self._on_message(channel.decode(), data)
        elif kind == b"subscribe":
            self._confirmed += 1
            if self._confirmed == len(self._channels) and not self._subscribed.called:
                self._subscribed.callback(None)

    def _lost(self) -> None:
        self.listening = False
        if not self._subscribed.called:
            self._subscribed.errback(RedisUnavailable("the connection was lost"))
        self._schedule_retry()

    def _schedule_retry(self) -> None:
        if self._running and self._retry_call is None:
            self._retry_call = self._reactor.callLater(self._retry, self._listen_quietly)

    def _listen_quietly(self) -> None:
        from scrapy.utils.defer import deferred_from_coro

        deferred = deferred_from_coro(self._listen())
        deferred.addErrback(lambda failure: None)  # retried later; the state says why

    def stop(self) -> None:
        self._running = False
        self.listening = False
        if self._retry_call is not None and self._retry_call.active():
            self._retry_call.cancel()
        self._retry_call = None
        self._client.close()
