"""Where fleet mode's Redis is and how to reach it: one server (``redis://``, ``rediss://``,
``unix://``), a master found through Sentinel, or a Redis Cluster, all through redis-py's
``redis.asyncio`` (replies parsed by hiredis), and a pub/sub listener that subscribes again
after Redis was lost.

``redis.asyncio`` runs on an asyncio loop: fleet mode needs Scrapy's asyncio reactor
(``TWISTED_REACTOR``), which :func:`require_asyncio_reactor` checks once at start.

Calls fail instead of queueing while Redis is down: a short connect timeout and a small retry
policy bound how long one command may take, so a crawl tells "down" from "slow" and solves
fail closed (the state turns every failure into ``CaptchaFleetError``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import ExponentialBackoff
from redis.connection import SSLConnection, parse_url
from redis.exceptions import RedisClusterException, RedisError
from redis.maint_notifications import MaintNotificationsConfig

from ..checks import redact_url
from .redis_scripts import CLUSTER_PREFIX, PREFIX

logger = logging.getLogger(__name__)

#: Seconds to connect, and to wait for any one reply, before Redis counts as unreachable.
CONNECT_TIMEOUT = 5.0
REPLY_TIMEOUT = 10.0
#: Tries of one command after the first when the connection failed, with a backoff of
#: 50 ms doubling up to 0.5 s: a restart or failover in progress is bridged, an outage is not.
RETRIES = 2
#: The most connections one process opens to one server; solves beyond it wait for one.
MAX_CONNECTIONS = 64

#: What counts as Redis being unreachable or refusing: every redis-py error (the Cluster
#: client's own base class is apart from the others), and the socket and timeout errors that
#: can escape it while a connection is being made or torn down.
UNAVAILABLE: tuple[type[Exception], ...] = (
    RedisError,
    RedisClusterException,
    OSError,
    asyncio.TimeoutError,
)

Client = Any  # redis.asyncio.Redis or RedisCluster: both run commands and scripts alike


def require_asyncio_reactor(setting: str = "CAPSOLVER_REDIS_URL") -> None:
    """Refuse fleet mode unless Scrapy runs the asyncio reactor (redis.asyncio needs its loop)."""
    from scrapy.utils.reactor import is_asyncio_reactor_installed

    if not is_asyncio_reactor_installed():
        raise RuntimeError(
            f"Fleet mode ({setting} is set) runs its Redis client (redis.asyncio) on Scrapy's "
            "asyncio reactor, and another reactor is installed. Set TWISTED_REACTOR = "
            '"twisted.internet.asyncioreactor.AsyncioSelectorReactor" (Scrapy\'s default since '
            "2.13), or remove CAPSOLVER_REDIS_URL to crawl without a fleet."
        )


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: ``url`` alone (one server), with ``sentinels`` (the URL's host names
    the master Sentinel watches; its credentials, database and TLS apply to that master), or
    with ``cluster`` (the URL names any node of a Redis Cluster)."""

    url: str
    sentinels: tuple[tuple[str, int], ...] = ()
    cluster: bool = False
    connect_timeout: float = CONNECT_TIMEOUT
    reply_timeout: float = REPLY_TIMEOUT
    retries: int = field(default=RETRIES)

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        return target if isinstance(target, RedisTarget) else cls(target)

    @property
    def safe_url(self) -> str:
        return redact_url(self.url)

    @property
    def key_prefix(self) -> str:
        """What starts every key: a Cluster keeps a fleet's keys in one slot by a hash tag."""
        return CLUSTER_PREFIX if self.cluster else PREFIX

    def describe(self) -> str:
        """Where this is, for messages: never the password."""
        if self.sentinels:
            where = ", ".join(f"{host}:{port}" for host, port in self.sentinels)
            master = parse_url(self.url).get("host", "")
            return f"{self.safe_url} (master {master!r} through Sentinel {where})"
        if self.cluster:
            return f"{self.safe_url} (Redis Cluster)"
        return self.safe_url

    def _options(self) -> dict[str, Any]:
        # The pool's options: a bounded wait for a connection and for each reply, and a
        # retry policy short enough that an outage surfaces to the solves within seconds.
        return {
            "socket_connect_timeout": self.connect_timeout,
            "socket_timeout": self.reply_timeout,
            "retry": Retry(ExponentialBackoff(cap=0.5, base=0.05), self.retries),
            "health_check_interval": 30,
            # The probe for Redis Enterprise's maintenance notifications fails on every new
            # connection to open-source Redis (a DEBUG line each); fleet mode has no use for
            # them: a failover is bridged by the retries.
            "maint_notifications_config": MaintNotificationsConfig(enabled=False),
        }

    def client(self) -> Client:
        """A client with its own connection pool; nothing connects until the first command."""
        options = self._options()
        if self.cluster:
            return RedisCluster.from_url(self.url, max_connections=MAX_CONNECTIONS, **options)
        if self.sentinels:
            return self._sentinel_master(options)
        return redis.asyncio.Redis.from_url(self.url, max_connections=MAX_CONNECTIONS, **options)

    def _sentinel_master(self, options: dict[str, Any]) -> Client:
        master = parse_url(self.url)
        service = str(master.pop("host"))
        master.pop("port", None)
        if master.pop("connection_class", None) is SSLConnection:
            # Sentinel picks its own connection class; TLS to the master is asked by flag.
            master["ssl"] = True
        sentinel = Sentinel(
            list(self.sentinels),
            sentinel_kwargs={
                "socket_connect_timeout": self.connect_timeout,
                "socket_timeout": self.reply_timeout,
            },
        )
        # The URL's own query options (socket_timeout=...) win, as redis-py's from_url does.
        return sentinel.master_for(
            service, **{**options, "max_connections": MAX_CONNECTIONS, **master}
        )


async def close_client(client: Client) -> None:
    """Close ``client``'s connections (and a Sentinel's own), quietly if Redis is gone."""
    pool = getattr(client, "connection_pool", None)
    sentinel = getattr(pool, "sentinel_manager", None)
    try:
        await client.aclose()
        if sentinel is not None:
            for watcher in sentinel.sentinels:
                await watcher.aclose()
    except UNAVAILABLE as exc:
        logger.debug("Closing the Redis connections: %s", exc)


class RedisSubscriber:
    """Listens to pub/sub channels on a connection of its own, and subscribes again after
    Redis was lost (every ``retry`` seconds) for as long as it runs. ``on_message(channel,
    data)`` gets each message; ``on_ready()`` runs each time listening starts or starts
    again (redis-py may subscribe again on its own after a reconnect), since messages sent
    in between were missed."""

    def __init__(
        self,
        client: Client,
        channels: list[str],
        on_message: Callable[[str, bytes], None],
        on_ready: Callable[[], None],
        retry: float = 0.5,
    ) -> None:
        self._client = client
        self._channels = channels
        self._on_message = on_message
        self._on_ready = on_ready
        self._retry = retry
        self._task: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None
        self.listening = False

    async def start(self) -> None:
        """Start listening; raises one of :data:`UNAVAILABLE` if the first subscription
        failed (it is tried again in the background)."""
        if self._task is None:
            self._first = asyncio.get_running_loop().create_future()
            self._task = asyncio.ensure_future(self._listen())
        assert self._first is not None
        await asyncio.wait_for(asyncio.shield(self._first), REPLY_TIMEOUT)

    def _settle_first(self, error: BaseException | None) -> None:
        first = self._first
        if first is None or first.done():
            return
        if error is None:
            first.set_result(None)
        else:
            first.set_exception(error)
            first.exception()  # retrieved here: start() may have stopped waiting

    async def _listen(self) -> None:
        while True:
            pubsub = self._client.pubsub()
            confirmed = 0
            try:
                await pubsub.subscribe(*self._channels)
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None:
                        continue
                    if message["type"] == "subscribe":
                        confirmed += 1
                        if confirmed % len(self._channels) == 0:
                            self.listening = True
                            self._settle_first(None)
                            self._on_ready()
                    elif message["type"] == "message":
                        self._on_message(_text(message["channel"]), message["data"])
            except asyncio.CancelledError:
                raise
            except UNAVAILABLE as exc:
                self.listening = False
                self._settle_first(exc)
                logger.debug("Not listening to Redis (again in %g s): %s", self._retry, exc)
            finally:
                await _close_pubsub(pubsub)
            await asyncio.sleep(self._retry)

    async def stop(self) -> None:
        self.listening = False
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _close_pubsub(pubsub: Any) -> None:
    try:
        await pubsub.aclose()
    except UNAVAILABLE as exc:
        logger.debug("Closing the Redis subscription: %s", exc)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
