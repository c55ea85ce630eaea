"""Fleet mode: the solving state of every crawl process of a fleet, in one Redis.

:class:`RedisState` implements :class:`~scrapy_capsolver_ocr.state.base.SolvingState` with the
scripts of :mod:`.redis_scripts`, so answers, calls in flight, the budget, the account's
concurrency and blocks hold across processes and machines. Claims on images and permits
for calls are leases this process renews while it works; those of a process that died
lapse within ``CAPSOLVER_TIMEOUT`` + 10 s. Waiters are woken by pub/sub messages, and look
again every few seconds in case a message was lost with a connection. Redis is reached through
redis-py (:mod:`.redis_connection`), on Scrapy's asyncio reactor.

Nothing stored contains the API key (accounts are named by a keyed hash of it) or an image
(answers are stored under the image's SHA-256).
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import json
import logging
import uuid
from typing import Any

from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.task import LoopingCall

from .. import errors
from ..errors import CaptchaCrawlClosingError, CaptchaFleetError, CaptchaSolveError
from ..reactor import installed_reactor
from ..settings import ApiKey
from ..solution import CaptchaSolution
from .base import CallTicket, Pause, RouteLeave, StateFigures, StateLimits, Stop
from .redis_connection import (
    UNAVAILABLE,
    RedisSubscriber,
    RedisTarget,
    close_client,
    require_asyncio_reactor,
)
from .redis_scripts import (
    BEGIN_CALL,
    BLOCKED,
    CACHED,
    CHECK,
    CLAIM,
    END_CALL,
    FIGURES,
    FINISH,
    FORGET,
    PROVIDER_PERMIT,
    RENEW,
    ROUTE_FAILED,
    ROUTE_LEAVE,
    ROUTE_OPEN_FOR,
    FleetKeys,
    Script,
    figures_keys,
    split_key,
)

logger = logging.getLogger(__name__)

#: Seconds between two looks at a claim or the permits while no message came: a safety net
#: for a message lost with a connection, and how a lapsed lease is noticed.
RECHECK = 2.0
#: Seconds a claimant's outcome stays readable for waiters that look after it was sent.
OUTCOME_TTL_MS = 30_000
#: Seconds a provider's open breaker is kept past its cool-down, then forgotten.
BREAKER_MEMORY = 3600.0


def account_fingerprint(api_key: ApiKey | None) -> str:
    """Names the account in Redis: a hash keyed by the API key, so that it tells accounts
    apart without revealing or helping to guess the key."""
    if api_key is None:
        return "no-key"
    digest = hmac.new(api_key.reveal().encode(), b"scrapy-capsolver-ocr fleet", hashlib.sha256)
    return digest.hexdigest()[:32]


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _ms_or_off(seconds: float) -> int:
    """``seconds`` in milliseconds for a script, 0 (off) for a setting that is 0."""
    return _ms(seconds) if seconds > 0 else 0


def _solution_data(solution: CaptchaSolution) -> dict[str, Any]:
    data: dict[str, Any] = {
        "text": solution.text,
        "task_id": solution.task_id,
        "confidence": solution.confidence,
    }
    if solution.provider:
        data["provider"] = solution.provider
    return data


def _solution(data: dict[str, Any], sha256: str) -> CaptchaSolution:
    return CaptchaSolution(
        text=str(data["text"]),
        task_id=str(data.get("task_id") or ""),
        image_sha256=sha256,
        confidence=data.get("confidence"),
        provider=str(data.get("provider") or ""),
    )


def _error_json(error: CaptchaSolveError) -> dict[str, Any]:
    # The nearest public class: what an errback checks for in any process.
    public = next(
        cls
        for cls in type(error).__mro__
        if getattr(errors, cls.__name__, None) is cls and issubclass(cls, CaptchaSolveError)
    )
    return {
        "class": public.__name__,
        "message": str(error),
        "code": getattr(error, "error_code", ""),
        "description": getattr(error, "description", ""),
        "close_reason": getattr(error, "close_reason", ""),
    }


def _error(data: dict[str, Any]) -> CaptchaSolveError:
    cls = getattr(errors, str(data.get("class")), None)
    message = str(data.get("message", ""))
    if not (isinstance(cls, type) and issubclass(cls, CaptchaSolveError)):
        return CaptchaSolveError(message)
    if issubclass(cls, errors.CaptchaAccountError):
        return cls(message, data["code"], data["description"], close_reason=data["close_reason"])
    if issubclass(cls, errors.CaptchaApiError):
        return cls(message, data["code"], data["description"])
    return cls(message)


class RedisState:
    """The solving state of a fleet: every process with the same Redis (``target``: a URL,
    or a :class:`RedisTarget` for Sentinel and Cluster) and ``CAPSOLVER_FLEET`` shares it;
    permits and blocks are shared by every process with the same API key. Needs Scrapy's
    asyncio reactor."""

    def __init__(
        self,
        target: RedisTarget | str,
        fleet: str,
        api_key: ApiKey | None,
        limits: StateLimits,
        reactor: Any = None,
        recheck: float = RECHECK,
    ) -> None:
        require_asyncio_reactor()
        reactor = installed_reactor(reactor)
        self.limits = limits
        self.fleet = fleet
        self.target = RedisTarget.of(target)
        self.keys = FleetKeys(fleet, account_fingerprint(api_key), self.target.key_prefix)
        self._reactor = reactor
        self._recheck = recheck
        self._client = self.target.client()
        self._scripts: dict[str, Any] = {}
        # Commands run on a pool of connections, whose replies may be read in another order
        # than Redis ran them. A leave to call read after a stop that Redis decided later
        # would be thrown away with the budget already counted: the commands whose verdicts
        # the solver orders (leave to call, blocks, the fleet-wide stop) go one at a time.
        self._verdicts = asyncio.Lock()
        self._subscriber = RedisSubscriber(
            self._client,
            [self.keys.solved_channel, self.keys.permits_channel],
            self._message,
            self._listening_again,
        )
        self._owner = uuid.uuid4().hex
        self._claims: set[str] = set()
        self._calls: set[str] = set()
        self._waiters: dict[str, list[Deferred[bytes]]] = collections.defaultdict(list)
        self._permit_waiters: collections.deque[Deferred[bytes]] = collections.deque()
        self._renewal = LoopingCall(lambda: deferred_from_coro(self._renew()))
        self._renewal.clock = reactor
        self._closed = False

    def __repr__(self) -> str:
        return f"RedisState({self.target.describe()!r}, fleet={self.fleet!r})"

    # Connection

    def _unreachable(self, exc: Exception) -> CaptchaFleetError:
        return CaptchaFleetError(
            f"Fleet mode: Redis at CAPSOLVER_REDIS_URL={self.target.describe()} cannot be "
            f"used ({_reason(exc)}); no captcha is paid for without it.",
            "REDIS_UNAVAILABLE",
        )

    async def _run(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        if self._closed:
            raise CaptchaCrawlClosingError()
        try:
            return await self._script(script)(keys, args)
        except UNAVAILABLE as exc:
            raise self._unreachable(exc) from None

    def _script(self, script: Script) -> Any:
        bound = self._scripts.get(script.name)
        if bound is None:
            bound = self._scripts[script.name] = script.bind(self._client)
        return bound

    async def open(self) -> None:
        if not self._renewal.running:
            # A third of the lease: two renewals may fail before a claim lapses.
            self._renewal.start(self.limits.lease / 3, now=False).addErrback(
                lambda failure: logger.error("Lease renewal stopped: %s", failure.value)
            )
        try:
            await self._subscriber.start()
            await self._client.hset(self.keys.meta, "account", self.keys.account)
        except UNAVAILABLE as exc:
            raise self._unreachable(exc) from None

    async def close(self) -> None:
        if self._closed:
            return
        if self._renewal.running:
            self._renewal.stop()
        closing = CaptchaCrawlClosingError()
        for key in list(self._waiters):
            for waiter in self._waiters.pop(key):
                _fire(waiter, closing)
        while self._permit_waiters:
            _fire(self._permit_waiters.popleft(), closing)
        # Give back what solves still hold; what cannot be given back lapses on its own.
        try:
            for key in list(self._claims):
                await self._finish(key, "", "")
            for call_id in list(self._calls):
                await self._run(END_CALL, [self.keys.calls], [call_id, ""])
        except CaptchaFleetError as exc:
            logger.debug("Could not give back this process's leases: %s", exc)
        self._closed = True
        await self._subscriber.stop()
        await close_client(self._client)

    # Answers

    async def cached(self, key: str) -> CaptchaSolution | None:
        sha256, module = split_key(key)
        stored = await self._run(
            CACHED, [self.keys.answers(sha256), self.keys.answer_index], [module, key]
        )
        return _solution(json.loads(stored), sha256) if stored else None

    async def claim(self, key: str) -> bool:
        sha256, module = split_key(key)
        keys = [self.keys.claim(key), self.keys.answers(sha256), self.keys.outcome(key)]
        claimed = await self._run(CLAIM, keys, [module, self._owner, _ms(self.limits.lease)])
        if claimed:
            self._claims.add(key)
        return bool(claimed)

    async def wait(self, key: str) -> CaptchaSolution | None:
        sha256, module = split_key(key)
        keys = [self.keys.claim(key), self.keys.outcome(key), self.keys.answers(sha256)]
        while True:
            # Listening before looking: an outcome sent in between is not missed.
            waiter: Deferred[bytes] = Deferred()
            self._waiters[key].append(waiter)
            try:
                found = await self._run(CHECK, keys, [module])
                kind = found[0]
                if kind == b"outcome":
                    return self._outcome(found[1], sha256)
                if kind == b"answer":
                    return _solution(json.loads(found[1]), sha256)
                if kind == b"none":
                    return None  # the claim lapsed: its process is gone
                waiter.addTimeout(self._recheck, self._reactor)
                try:
                    return self._outcome(await maybe_deferred_to_future(waiter), sha256)
                except TimeoutError:
                    continue
            finally:
                self._forget_waiter(self._waiters, key, waiter)

    @staticmethod
    def _forget_waiter(
        waiters: dict[str, list[Deferred[bytes]]], key: str, waiter: Deferred[bytes]
    ) -> None:
        listed = waiters.get(key)
        if listed is not None and waiter in listed:
            listed.remove(waiter)
            if not listed:
                del waiters[key]

    def _outcome(self, raw: bytes, sha256: str) -> CaptchaSolution | None:
        if not raw:
            return None  # the claimant let go without an answer (its crawl closed)
        data = json.loads(raw)
        if "answer" in data:
            return _solution(data["answer"], sha256)
        raise _error(data["error"])

    async def publish(self, key: str, solution: CaptchaSolution) -> None:
        answer = _solution_data(solution)
        await self._finish(key, json.dumps(answer), json.dumps({"answer": answer}))

    async def abandon(self, key: str, error: CaptchaSolveError) -> None:
        if isinstance(error, CaptchaCrawlClosingError):
            # Only this crawl is closing: waiters elsewhere take the image over.
            await self._finish(key, "", "")
            return
        await self._finish(key, "", json.dumps({"error": _error_json(error)}))

    async def _finish(self, key: str, answer: str, outcome: str) -> None:
        if key not in self._claims:
            return  # given back already, when the crawl closed
        self._claims.discard(key)
        # Waiters in this process need not wait for the message to come back.
        self._wake(key, outcome.encode())
        sha256, module = split_key(key)
        keys = self.keys
        await self._run(
            FINISH,
            [keys.claim(key), keys.outcome(key), keys.answers(sha256), keys.answer_index],
            [
                self._owner,
                module,
                key,
                answer,
                outcome,
                OUTCOME_TTL_MS,
                self.limits.cache_size,
                _ms_or_off(self.limits.cache_ttl),
                keys.solved_channel,
                key,
                keys.answers(""),
            ],
        )

    async def forget(self, image_sha256: str) -> None:
        await self._run(
            FORGET, [self.keys.answers(image_sha256), self.keys.answer_index], [image_sha256]
        )

    # Messages

    def _message(self, channel: str, data: bytes) -> None:
        if channel == self.keys.solved_channel:
            key, _, outcome = data.partition(b"\n")
            self._wake(key.decode(), outcome)
            return
        # A permit was given back: one waiter of this process tries for it.
        while self._permit_waiters:
            if _fire(self._permit_waiters.popleft(), b""):
                return

    def _wake(self, key: str, outcome: bytes) -> None:
        for waiter in self._waiters.pop(key, []):
            _fire(waiter, outcome)

    def _listening_again(self) -> None:
        # Messages sent while not listening are lost: every waiter looks again now.
        for key in list(self._waiters):
            for waiter in self._waiters.pop(key):
                _fire(waiter, TimeoutError())
        while self._permit_waiters:
            _fire(self._permit_waiters.popleft(), b"")

    # Paying

    async def begin_call(self) -> CallTicket | Pause | Stop:
        keys, limits = self.keys, self.limits
        call_id = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        while True:
            async with self._verdicts:
                verdict = await self._run(
                    BEGIN_CALL,
                    [keys.stop, keys.blocks, keys.budget, keys.calls],
                    [
                        limits.max_tasks,
                        _ms_or_off(limits.budget_period),
                        limits.fleet_concurrency,
                        _ms(limits.lease),
                        call_id,
                    ],
                )
            kind = verdict[0]
            if kind == b"ok":
                self._calls.add(call_id)
                return CallTicket(int(verdict[1]), call_id)
            if kind == b"stop":
                return Stop(verdict[1].decode())
            if kind == b"pause":
                return Pause(int(verdict[1]) / 1000)
            # Every permit is taken: wait until one is given back (or lapses).
            waiter: Deferred[bytes] = Deferred()
            self._permit_waiters.append(waiter)
            waiter.addTimeout(min(self._recheck, max(int(verdict[1]), 1) / 1000), self._reactor)
            try:
                await maybe_deferred_to_future(waiter)
            except TimeoutError:
                if waiter in self._permit_waiters:
                    self._permit_waiters.remove(waiter)

    async def end_call(self, ticket: CallTicket) -> None:
        if ticket.permit is None:
            return
        self._calls.discard(ticket.permit)
        channel = self.keys.permits_channel if self.limits.fleet_concurrency else ""
        await self._run(END_CALL, [self.keys.calls], [ticket.permit, channel])

    async def blocked(self, ticket: CallTicket | None) -> Pause | Stop | None:
        limits = self.limits
        async with self._verdicts:
            verdict = await self._run(
                BLOCKED,
                [self.keys.blocks, self.keys.stop],
                [
                    -1 if ticket is None else ticket.epoch,
                    _ms(limits.block_pause),
                    round(limits.block_window * 1000),
                ],
            )
        if verdict[0] == b"stop":
            return Stop(verdict[1].decode())
        if verdict[0] == b"pause":
            return Pause(int(verdict[1]) / 1000)
        return None

    async def stop_reason(self) -> str | None:
        try:
            async with self._verdicts:
                reason = await self._client.get(self.keys.stop)
        except UNAVAILABLE as exc:
            raise self._unreachable(exc) from None
        return reason.decode() if reason else None

    # Providers

    async def route_leave(self, provider: str, probe_lease: float) -> RouteLeave:
        said = await self._run(ROUTE_LEAVE, [self.keys.breaker(provider)], [_ms(probe_lease)])
        leave = said.decode() if isinstance(said, bytes) else str(said)
        assert leave in ("closed", "open", "probe")
        return leave  # type: ignore[return-value]

    async def route_open_for(self, provider: str) -> float | None:
        left = int(await self._run(ROUTE_OPEN_FOR, [self.keys.breaker(provider)], []))
        return None if left < 0 else left / 1000

    async def route_failed(self, provider: str, cooldown: float) -> bool:
        # The breaker outlives its cool-down by an hour, then is forgotten (closed) even if
        # every process that knew of the outage is gone.
        lifetime = _ms(cooldown + BREAKER_MEMORY)
        keys = [self.keys.breaker(provider)]
        return bool(await self._run(ROUTE_FAILED, keys, [_ms(cooldown), lifetime]))

    async def route_recovered(self, provider: str) -> bool:
        try:
            return bool(await self._client.delete(self.keys.breaker(provider)))
        except UNAVAILABLE as exc:
            raise self._unreachable(exc) from None

    async def provider_permit(self, provider: str, cap: int) -> str | None:
        permit = f"{self._owner}:{uuid.uuid4().hex[:12]}"
        keys = [self.keys.provider_calls(provider)]
        taken = await self._run(PROVIDER_PERMIT, keys, [cap, _ms(self.limits.lease), permit])
        return permit if taken else None

    async def end_provider_call(self, provider: str, permit: str) -> None:
        try:
            await self._client.zrem(self.keys.provider_calls(provider), permit)
        except UNAVAILABLE as exc:
            raise self._unreachable(exc) from None

    async def _renew(self) -> None:
        claims, calls = list(self._claims), list(self._calls)
        if not claims and not calls:
            return
        try:
            await self._script(RENEW)(
                [*(self.keys.claim(key) for key in claims), self.keys.calls],
                [self._owner, _ms(self.limits.lease), len(claims), *calls],
            )
        except UNAVAILABLE as exc:
            logger.warning("Could not renew this process's leases in Redis: %s", _reason(exc))

    async def figures(self) -> StateFigures:
        raw = await self._run(
            FIGURES, figures_keys(self.keys), [_ms_or_off(self.limits.budget_period)]
        )
        return figures_from(raw, self.limits.max_tasks, {"fleet": self.fleet})


def _reason(exc: BaseException) -> str:
    """Why Redis failed, in one line: redis-py's message, else the error's name (a timeout
    has no message)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _fire(waiter: Deferred[bytes], value: bytes | Exception) -> bool:
    """Fire ``waiter`` unless its timeout did first; False if it had."""
    if waiter.called:
        return False
    if isinstance(value, Exception):
        waiter.errback(value)
    else:
        waiter.callback(value)
    return True


def figures_from(raw: list[Any], max_tasks: int, extra: dict[str, Any]) -> StateFigures:
    """:class:`StateFigures` from the reply of the figures script."""
    used, limit, resets_ms, in_flight, paused_ms, stopped, cached = raw
    return StateFigures(
        tasks_used=int(used),
        max_tasks=max_tasks if max_tasks else int(limit),
        budget_resets_in=None if int(resets_ms) < 0 else int(resets_ms) / 1000,
        calls_in_flight=int(in_flight),
        paused_for=int(paused_ms) / 1000,
        stopped=stopped.decode() or None,
        cached_answers=int(cached),
        extra=extra,
    )
