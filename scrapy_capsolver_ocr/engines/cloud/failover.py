"""Several solving services in one crawl (``CAPSOLVER_PROVIDERS``): each task goes to the
first one whose circuit breaker lets it, and moves on when that service is out.

What moves a task to the next service and opens the breaker of the one that failed (an
outage of the service, not a fault of the image):

- a call that never reached it (connection refused, no route, a refused certificate): at
  once, without retries on it;
- a transient failure it answered (HTTP 5xx, busy, rate limited), after the retries of
  ``CAPSOLVER_MAX_RETRIES``;
- no free slot (``ERROR_NO_SLOT_AVAILABLE``) for longer than
  ``CAPSOLVER_NO_SLOT_FAILOVER_AFTER`` seconds;
- an account error: zero balance, a refused key, a banned IP or key (this service's
  account only: the crawl closes only when every service's account is out).

A task whose call may have created a task (sent, then no answer: a timeout, a gateway
timeout, an answer without ``errorId``) is never paid on another service: it fails as it
always did (its errback), so that no image is paid twice. One exception, a service that went
down rather than a slow one (``CAPSOLVER_FAILOVER_UNANSWERED``, on by default): a call whose
connection was lost (closed or reset, not timed out) moves on when a balance call then finds
the service unreachable; a dead service cannot deliver the answer, and these services bill
an answer delivered. Each such move is counted in
``capsolver/provider/<name>/unanswered_moved``. Answer errors
(unsolvable, image refused) are the image's: they fail the request unless
``CAPSOLVER_FAILOVER_ANSWER_ERRORS`` is on. When every breaker is open, a task goes to the
first service it has not tried, as a crawl with one service would.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace

from scrapy.statscollectors import StatsCollector
from twisted.internet.defer import DeferredSemaphore

from ...errors import (
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaFleetError,
    CaptchaNoSlotError,
    CaptchaSolveError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from ...solution import CaptchaSolution
from ...state.base import CallTicket, SolvingState
from ...waiting import take
from .account import Account
from .breaker import Breakers, provider_stat
from .routes import (
    Attempt,
    Route,
    RouteOpened,
    Sending,
    connection_lost,
    maybe_created,
    refused_before_sending,
    unreachable,
)

logger = logging.getLogger(__name__)

#: The services' code for "no free worker now" (Anti-Captcha, CapMonster Cloud, 2Captcha).
NO_SLOT_CODES = frozenset({"ERROR_NO_SLOT_AVAILABLE"})
#: Seconds between two looks for a free fleet permit of a service at its cap.
PERMIT_RECHECK = 0.05


def is_no_slot(exc: Exception) -> bool:
    """The service has no free worker for now (by its error table's class or code)."""
    return isinstance(exc, CaptchaNoSlotError) or (
        isinstance(exc, CaptchaTransientError) and exc.error_code in NO_SLOT_CODES
    )


@dataclass(frozen=True)
class FailoverPolicy:
    """The failover settings."""

    #: ``CAPSOLVER_FAILOVER_COOLDOWN``: seconds a failed service is left alone.
    cooldown: float = 60.0
    #: ``CAPSOLVER_NO_SLOT_FAILOVER_AFTER``: seconds of "no slot" before moving on.
    no_slot_after: float = 30.0
    #: ``CAPSOLVER_FAILOVER_ANSWER_ERRORS``: pay the next service for an unsolvable image.
    answer_errors: bool = False
    #: ``CAPSOLVER_FAILOVER_UNANSWERED``: a task whose connection died with an unreachable
    #: service moves on.
    unanswered: bool = True
    #: ``CAPSOLVER_BLOCK_PAUSE``: a blocked service is left alone at least this long.
    block_pause: float = 300.0


class Failover:
    """Tasks go to the services in order of preference, behind their breakers."""

    def __init__(
        self,
        routes: list[Route],
        account: Account,
        breakers: Breakers,
        state: SolvingState,
        stats: StatsCollector,
        policy: FailoverPolicy,
        reactor: object,
        *,
        down: Callable[[Route], Awaitable[bool]] = unreachable,
    ) -> None:
        self.all = routes
        self._account = account
        self._breakers = breakers
        self._state = state
        self._stats = stats
        self._policy = policy
        self._reactor = reactor
        # Whether a service cannot be reached now (a call that creates nothing refused).
        self._down = down
        self._slots = {
            route.name: DeferredSemaphore(route.concurrency)
            for route in routes
            if route.concurrency
        }
        # Until when each service's breaker is open, as this process last opened it.
        self._open_here: dict[str, float] = {}
        # Services whose account failed here (bad key, no balance, a block): when every one
        # has, the crawl stops as a crawl with one service would.
        self._out: dict[str, CaptchaAccountError] = {}

    def __repr__(self) -> str:
        return f"Failover({[route.name for route in self.all]}, {self._breakers!r})"

    @property
    def preferred(self) -> Route:
        return self.all[0]

    def named(self, name: str) -> Route:
        return next((route for route in self.all if route.name == name), self.all[0])

    # Choosing

    async def pay(self, attempt: Attempt) -> CaptchaSolution:
        sending = Sending()
        tried = sending.tried
        no_slot_since: dict[str, float] = {}
        while True:
            route, probe = await self._choose(tried)
            sending.probe = probe
            try:
                solution = await attempt(route, sending)
            except RouteOpened:
                tried.append(route)
                continue
            except CaptchaSolveError as exc:
                kind = self._kind(route, exc, no_slot_since)
                if kind == "wait":  # no slot, not for long yet: the same service again
                    continue
                if kind == "outage":
                    await self._out_of_service(route, exc)
                elif kind == "answer" and probe:
                    await self._breakers.close(route)  # it answered: it is up
                moves = kind == "outage" or (kind == "answer" and self._policy.answer_errors)
                if not moves or len(tried) + 1 == len(self.all):
                    raise
                # A task the first service may have created is never paid a second time,
                # unless that service died with the task's connection.
                if sending.maybe_created:
                    if not await self._unanswered(route, exc):
                        raise
                    sending.maybe_created = False
                self._stats.inc_value(provider_stat(route, "failovers"))
                tried.append(route)
                continue
            if probe:
                await self._breakers.close(route)
                self._open_here.pop(route.name, None)
            self._out.pop(route.name, None)
            return replace(solution, provider=route.name)

    async def _unanswered(self, route: Route, exc: CaptchaSolveError) -> bool:
        """Whether a task whose call on ``route`` may have created it moves on all the same:
        its connection died (not a timeout) and the service is unreachable now, so it cannot
        deliver that answer. Counted: the service may have billed it if it solved it."""
        if not self._policy.unanswered or not connection_lost(exc):
            return False
        if not await self._down(route):
            return False
        self._stats.inc_value(provider_stat(route, "unanswered_moved"))
        logger.info(
            "A captcha task lost with %s's connection goes to the next service "
            "(%s is unreachable; it cannot deliver that answer)",
            route.name,
            route.name,
        )
        return True

    async def _out_of_service(self, route: Route, exc: CaptchaSolveError) -> None:
        """``route`` had an outage: counted, and its breaker opened (in the state, and
        here: tasks already waiting for their turn on it are told at once)."""
        self._stats.inc_value(provider_stat(route, "errors"))
        await self._open(route, exc)

    async def _open(self, route: Route, exc: CaptchaSolveError) -> None:
        """Open ``route``'s breaker, in the state and here: tasks already waiting for their
        turn on it (for a slot, or for the balances read at start) are told at once."""
        cooldown = self._cooldown_after(exc)
        self._open_here[route.name] = self._now() + cooldown
        await self._breakers.open(route, exc, cooldown)

    def still_wanted(self, route: Route, sending: Sending) -> None:
        # Tasks queue for the account's slots with their service chosen: when it went out
        # meanwhile, each would otherwise meet the outage in turn before moving on.
        if sending.probe or sending.maybe_created:
            return
        if self._open_here.get(route.name, 0.0) <= self._now():
            return
        others = [r for r in self.all if r is not route and r not in sending.tried]
        if any(self._open_here.get(r.name, 0.0) <= self._now() for r in others):
            raise RouteOpened(f"{route.name} went out while the task waited")

    async def _choose(self, tried: list[Route]) -> tuple[Route, bool]:
        """The first service not tried for this task whose breaker lets it (and whether
        this task is its probe); all open: the first not tried, as with one service."""
        untried = [route for route in self.all if route not in tried]
        for route in untried:
            try:
                leave = await self._breakers.leave(route)
            except CaptchaFleetError as exc:
                # Without the fleet's word on a breaker the service is tried: no task waits.
                logger.debug("Could not read the breaker of %s: %s", route.name, exc)
                leave = "closed"
            if leave == "closed":
                self._out.pop(route.name, None)
                return route, False
            if leave == "probe":
                return route, True
        return untried[0], False

    def _kind(self, route: Route, exc: CaptchaSolveError, no_slot_since: dict[str, float]) -> str:
        """What a failure says of the service: ``outage`` (tasks move on), ``answer`` (the
        image's trouble), ``wait`` (no slot, not for long yet) or ``other`` (the budget, a
        closing crawl, the fleet's store: the same on any service)."""
        if isinstance(exc, CaptchaFleetError):
            return "other"
        if isinstance(exc, CaptchaAccountError):
            return "outage"
        if isinstance(exc, CaptchaTaskError):
            return "answer"
        if not isinstance(exc, CaptchaTransientError):
            return "other"
        if is_no_slot(exc):
            now = self._now()
            since = no_slot_since.setdefault(route.name, now)
            return "outage" if now - since >= self._policy.no_slot_after else "wait"
        return "outage"

    def _cooldown_after(self, exc: CaptchaSolveError) -> float:
        if isinstance(exc, CaptchaBlockedError):
            return max(self._policy.cooldown, self._policy.block_pause)
        return self._policy.cooldown

    def _now(self) -> float:
        return float(self._reactor.seconds())  # type: ignore[attr-defined]

    # One paid call

    @asynccontextmanager
    async def slot(self, route: Route) -> AsyncIterator[None]:
        local = self._slots.get(route.name)
        if local is not None:
            await take(local, self._reactor)
        permit = None
        try:
            if route.fleet_concurrency:
                permit = await self._fleet_permit(route)
            yield
        finally:
            if permit is not None:
                try:
                    await self._state.end_provider_call(route.name, permit)
                except CaptchaFleetError as exc:
                    # It lapses with its lease.
                    logger.debug("Could not give a provider permit back: %s", exc)
            if local is not None:
                local.release()

    async def _fleet_permit(self, route: Route) -> str:
        while True:
            permit = await self._state.provider_permit(route.name, route.fleet_concurrency)
            if permit is not None:
                return permit
            await self._account.sleep(PERMIT_RECHECK)

    def calling(self, route: Route) -> None:
        self._stats.inc_value(provider_stat(route, "task_count"))

    # What a service's account error means

    async def blocked(
        self, route: Route, exc: CaptchaBlockedError, ticket: CallTicket | None
    ) -> None:
        self._out[route.name] = exc
        if self._all_out():
            await self._account.blocked(exc, ticket)
        else:
            await self._open(route, exc)

    async def account_error(self, route: Route, exc: CaptchaAccountError) -> None:
        self._out[route.name] = exc
        if self._all_out():
            self._account.fail(exc)
        else:
            await self._open(route, exc)

    def _all_out(self) -> bool:
        return all(route.name in self._out for route in self.all)

    def stopped(self, route: Route) -> bool:
        # A blocked service is left for the next one, unless it was the last: then the
        # pause is waited out on it, as with one service.
        return not self._all_out() or self._account.stopped

    def give_up(self, exc: Exception) -> bool:
        # Refused: another service at once. Maybe created: sending it again (here or
        # elsewhere) could pay for the image twice.
        return refused_before_sending(exc) or maybe_created(exc)

    def balances(self) -> bool:
        return True
