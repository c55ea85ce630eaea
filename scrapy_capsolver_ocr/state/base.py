"""What every solve of a crawl shares: answers, calls in flight, the budget, the account's
concurrency and pauses.

One interface, :class:`SolvingState`, with two implementations: :class:`MemoryState` (one
process, the default) and :class:`~scrapy_capsolver_ocr.state.redis_state.RedisState` (fleet mode:
every process of a fleet shares one Redis). The solver only ever talks to the interface.

Times are durations in seconds, never clock readings: the processes of a fleet may run on
machines whose clocks differ.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from twisted.internet.defer import DeferredSemaphore

from ..errors import CLOSE_BLOCKED, CLOSE_MAX_TASKS, CaptchaSolveError
from ..reactor import installed_reactor
from ..solution import CaptchaSolution
from ..waiting import Waiters, take


@dataclass(frozen=True)
class StateLimits:
    """The settings a state enforces (read once from ``CAPSOLVER_*``)."""

    #: ``CAPSOLVER_MAX_TASKS``: createTask calls allowed per budget period; 0: no cap.
    max_tasks: int = 0
    #: ``CAPSOLVER_BUDGET_PERIOD``: seconds a budget lasts; 0: until it is reset.
    budget_period: float = 0.0
    #: ``CAPSOLVER_FLEET_CONCURRENCY``: createTask calls in flight for the account; 0: no cap.
    fleet_concurrency: int = 0
    #: ``CAPSOLVER_BLOCK_PAUSE`` and ``CAPSOLVER_BLOCK_WINDOW``.
    block_pause: float = 300.0
    block_window: float = 3600.0
    #: ``CAPSOLVER_CACHE_SIZE`` (0: no cache) and ``CAPSOLVER_CACHE_TTL`` (0: no expiry).
    cache_size: int = 1024
    cache_ttl: float = 0.0
    #: How long a claim on an image or a permit outlives a process that stopped renewing it
    #: (``CAPSOLVER_TIMEOUT`` + 10 s).
    lease: float = 40.0


@dataclass(frozen=True)
class CallTicket:
    """Leave to make one createTask call; give it back with :meth:`SolvingState.end_call`."""

    #: Pauses begun before the call: a block answered to a call sent before the current
    #: pause began is that pause's own block, seen late.
    epoch: int
    #: Fleet mode: the call's lease in the shared state (it counts as a call in flight, and
    #: as a permit when ``fleet_concurrency`` is set). None in memory mode.
    permit: str | None = None


@dataclass(frozen=True)
class Pause:
    """Solving is paused: ask again after ``seconds``."""

    seconds: float


@dataclass(frozen=True)
class Stop:
    """Solving has stopped for good; the crawl closes with ``reason`` (a ``capsolver_*``
    close reason: ``capsolver_max_tasks`` or ``capsolver_blocked``)."""

    reason: str


#: What :meth:`SolvingState.route_leave` says of a provider.
RouteLeave = Literal["closed", "open", "probe"]


@dataclass(frozen=True)
class StateFigures:
    """What ``fleet status``, the progress line and the ``capsolver/fleet/*`` stats show."""

    tasks_used: int
    max_tasks: int
    #: Seconds until the budget period ends and the count starts again; None: no period.
    budget_resets_in: float | None
    calls_in_flight: int
    paused_for: float
    stopped: str | None
    cached_answers: int
    extra: dict[str, Any] = field(default_factory=dict)


class SolvingState(Protocol):
    """Crawl-wide solving state.

    Every method may raise :class:`~scrapy_capsolver_ocr.CaptchaFleetError` when the
    shared store cannot be reached; the solver retries those like a transient API error
    and never pays without the state's leave.
    """

    async def open(self) -> None:
        """Connect and check the store; raises ``CaptchaFleetError`` if it is unreachable."""

    async def close(self) -> None:
        """Give back what this process holds and disconnect; waiting calls fail with
        ``CaptchaCrawlClosingError``."""

    # Answers

    async def cached(self, key: str) -> CaptchaSolution | None:
        """The answer stored for ``key`` (an image digest and module), or None."""

    async def claim(self, key: str) -> bool:
        """True: this caller is now the one solving ``key`` and must :meth:`publish` or
        :meth:`abandon` it. False: someone else is solving it, or its answer was stored
        since the caller looked: :meth:`wait` for it."""

    async def wait(self, key: str) -> CaptchaSolution | None:
        """The answer the claimant of ``key`` published; raises the error it abandoned
        with; None when its claim lapsed (a process died): claim again."""

    async def publish(self, key: str, solution: CaptchaSolution) -> None:
        """Store ``solution`` (subject to the cache settings), end the claim, wake waiters."""

    async def abandon(self, key: str, error: CaptchaSolveError) -> None:
        """End the claim without an answer; the waiters fail with ``error``."""

    async def forget(self, image_sha256: str) -> None:
        """Drop every stored answer for this image (the site rejected one)."""

    # Paying

    async def begin_call(self) -> CallTicket | Pause | Stop:
        """Leave for one createTask call, counted against the budget at once; or why not.
        May wait for a fleet permit; never waits out a pause (returns :class:`Pause`)."""

    async def end_call(self, ticket: CallTicket) -> None:
        """The call of ``ticket`` is answered (or failed): give its permit back."""

    async def blocked(self, ticket: CallTicket | None) -> Pause | Stop | None:
        """The call of ``ticket`` was answered with a block (None: a call that needs no
        ticket, such as getBalance). A :class:`Pause` has begun for every process using the
        key; or it was the second block within the window (:class:`Stop`); or None: a pause
        began after the call was sent (for a call without a ticket: a pause is under way),
        so this block is that pause's own, seen late."""

    async def stop_reason(self) -> str | None:
        """The close reason when solving has stopped for the whole fleet, else None."""

    # Providers (CAPSOLVER_PROVIDERS): circuit breakers and concurrency caps

    async def route_leave(self, provider: str, probe_lease: float) -> RouteLeave:
        """Whether a task may go to ``provider``: ``"closed"`` (it is healthy), ``"open"``
        (cooling down after an outage, or another caller's probe is under way), or
        ``"probe"``: the cool-down is over and this caller sends the one task that tries
        it again (for at most ``probe_lease`` seconds; then another caller may)."""

    async def route_open_for(self, provider: str) -> float | None:
        """Without taking a probe (for status lines): None when ``provider``'s breaker is
        closed, else the seconds its cool-down still lasts (0: a probe may go)."""

    async def route_failed(self, provider: str, cooldown: float) -> bool:
        """``provider`` had an outage: open its breaker for ``cooldown`` seconds (again, if
        it was open). True when it was closed: a new opening, counted once in the fleet."""

    async def route_recovered(self, provider: str) -> bool:
        """``provider`` answered: close its breaker. True when it was open (the fleet is
        back on it: said once)."""

    async def provider_permit(self, provider: str, cap: int) -> str | None:
        """A permit for one call to ``provider`` when fewer than ``cap`` are in flight to
        it (in the fleet), else None: ask again a moment later."""

    async def end_provider_call(self, provider: str, permit: str) -> None:
        """The call of ``permit`` is answered (or failed): give it back."""

    async def figures(self) -> StateFigures:
        """Figures for status lines and stats."""


class MemoryState:
    """The state of one process: what a crawl without ``CAPSOLVER_REDIS_URL`` shares."""

    def __init__(self, limits: StateLimits, reactor: Any = None) -> None:
        self.limits = limits
        self._reactor = installed_reactor(reactor)
        self._answers: OrderedDict[str, tuple[CaptchaSolution, float]] = OrderedDict()
        self._claims: dict[str, Waiters[CaptchaSolution | None]] = {}
        self._tasks_used = 0
        self._period = self._current_period()
        self._calls_in_flight = 0
        self._epoch = 0
        self._paused_until = 0.0
        self._last_block_at = -math.inf
        self._stopped: str | None = None
        # Per provider: [open until, probe lease until], in reactor seconds.
        self._breakers: dict[str, list[float]] = {}
        self._provider_calls: dict[str, int] = {}
        # One process is the whole fleet: the account's cap is a cap on this process.
        self._permits = (
            DeferredSemaphore(limits.fleet_concurrency) if limits.fleet_concurrency else None
        )

    def __repr__(self) -> str:
        return f"MemoryState(tasks_used={self._tasks_used}, in_flight={self._calls_in_flight})"

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        # Nothing outlives the process; claims in progress end with their solves.
        return None

    # Answers

    async def cached(self, key: str) -> CaptchaSolution | None:
        entry = self._answers.get(key)
        if entry is None:
            return None
        solution, expires_at = entry
        if expires_at <= self._reactor.seconds():
            del self._answers[key]
            return None
        self._answers.move_to_end(key)
        return solution

    async def claim(self, key: str) -> bool:
        if key in self._claims or await self.cached(key) is not None:
            return False
        self._claims[key] = Waiters[CaptchaSolution | None]()
        return True

    async def wait(self, key: str) -> CaptchaSolution | None:
        outcome = self._claims.get(key)
        if outcome is None:  # published or abandoned between claim() and wait()
            return await self.cached(key)
        return await outcome.wait()

    async def publish(self, key: str, solution: CaptchaSolution) -> None:
        if self.limits.cache_size > 0:
            ttl = self.limits.cache_ttl
            expires_at = self._reactor.seconds() + ttl if ttl > 0 else math.inf
            self._answers[key] = (solution, expires_at)
            self._answers.move_to_end(key)
            while len(self._answers) > self.limits.cache_size:
                self._answers.popitem(last=False)
        outcome = self._claims.pop(key, None)
        if outcome is not None:
            outcome.succeed(solution)

    async def abandon(self, key: str, error: CaptchaSolveError) -> None:
        outcome = self._claims.pop(key, None)
        if outcome is not None:
            outcome.fail(error)

    async def forget(self, image_sha256: str) -> None:
        prefix = f"{image_sha256}:"
        for key in [k for k in self._answers if k.startswith(prefix)]:
            del self._answers[key]

    # Paying

    def _current_period(self) -> int:
        period = self.limits.budget_period
        return int(self._reactor.seconds() // period) if period > 0 else 0

    async def begin_call(self) -> CallTicket | Pause | Stop:
        if self._permits is not None:
            await take(self._permits, self._reactor)
        verdict = self._leave()
        if self._permits is not None and not isinstance(verdict, CallTicket):
            self._permits.release()
        return verdict

    def _leave(self) -> CallTicket | Pause | Stop:
        if self._stopped is not None:
            return Stop(self._stopped)
        paused_for = self._paused_until - self._reactor.seconds()
        if paused_for > 0:
            return Pause(paused_for)
        period = self._current_period()
        if period != self._period:
            self._period, self._tasks_used = period, 0
        if self.limits.max_tasks and self._tasks_used >= self.limits.max_tasks:
            return Stop(CLOSE_MAX_TASKS)
        self._tasks_used += 1
        self._calls_in_flight += 1
        return CallTicket(self._epoch)

    async def end_call(self, ticket: CallTicket) -> None:
        self._calls_in_flight -= 1
        if self._permits is not None:
            self._permits.release()

    async def blocked(self, ticket: CallTicket | None) -> Pause | Stop | None:
        now = self._reactor.seconds()
        seen_late = self._paused_until > now if ticket is None else ticket.epoch < self._epoch
        if seen_late:
            return None
        if now - self._last_block_at <= self.limits.block_window:
            self._stopped = CLOSE_BLOCKED
            return Stop(CLOSE_BLOCKED)
        self._epoch += 1
        self._last_block_at = now
        self._paused_until = now + self.limits.block_pause
        return Pause(self.limits.block_pause)

    async def stop_reason(self) -> str | None:
        return self._stopped

    async def route_leave(self, provider: str, probe_lease: float) -> RouteLeave:
        breaker = self._breakers.get(provider)
        if breaker is None:
            return "closed"
        now = self._reactor.seconds()
        if now < breaker[0] or now < breaker[1]:
            return "open"
        breaker[1] = now + probe_lease
        return "probe"

    async def route_open_for(self, provider: str) -> float | None:
        breaker = self._breakers.get(provider)
        if breaker is None:
            return None
        return max(0.0, breaker[0] - float(self._reactor.seconds()))

    async def route_failed(self, provider: str, cooldown: float) -> bool:
        opening = provider not in self._breakers
        self._breakers[provider] = [self._reactor.seconds() + cooldown, 0.0]
        return opening

    async def route_recovered(self, provider: str) -> bool:
        return self._breakers.pop(provider, None) is not None

    async def provider_permit(self, provider: str, cap: int) -> str | None:
        in_flight = self._provider_calls.get(provider, 0)
        if in_flight >= cap:
            return None
        self._provider_calls[provider] = in_flight + 1
        return provider

    async def end_provider_call(self, provider: str, permit: str) -> None:
        self._provider_calls[provider] -= 1

    async def figures(self) -> StateFigures:
        period = self.limits.budget_period
        resets_in = period - self._reactor.seconds() % period if period > 0 else None
        return StateFigures(
            tasks_used=self._tasks_used if self._period == self._current_period() else 0,
            max_tasks=self.limits.max_tasks,
            budget_resets_in=resets_in,
            calls_in_flight=self._calls_in_flight,
            paused_for=max(0.0, self._paused_until - self._reactor.seconds()),
            stopped=self._stopped,
            cached_answers=len(self._answers),
        )
