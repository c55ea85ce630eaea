"""What protects the CapSolver account: concurrency, pauses on blocks, the balance gate, stops.

:class:`Account` gives leave for each paid call: a slot of ``CAPSOLVER_CONCURRENCY`` in this
process, then the crawl's :class:`~scrapy_capsolver_ocr.state.base.SolvingState` (the budget,
the fleet's permits and pauses, which hold for every process of a fleet alike). It waits out
pauses, holds solves until the balance was read at start, and stops all solving for good on
an account error or a second block, closing the crawl through ``on_fatal``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.task import deferLater

from ...api.client import missing_key_error
from ...errors import (
    CLOSE_MAX_TASKS,
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaBudgetError,
    CaptchaCrawlClosingError,
    CaptchaFleetError,
    CaptchaSolveError,
)
from ...state.base import CallTicket, Pause, SolvingState, Stop
from ...state.housekeeping import quietly
from ...waiting import Waiters, take

logger = logging.getLogger(__name__)


def stop_error(reason: str, max_tasks: int) -> CaptchaAccountError | CaptchaBudgetError:
    """The error that fails every solve once solving stopped with the close ``reason``."""
    if reason == CLOSE_MAX_TASKS:
        return CaptchaBudgetError(
            f"CAPSOLVER_MAX_TASKS ({max_tasks}) createTask calls were made; no more captchas "
            "are solved. Raise the setting (or wait for the next CAPSOLVER_BUDGET_PERIOD) to "
            "allow more."
        )
    return CaptchaBlockedError(
        "CapSolver blocked the key twice within CAPSOLVER_BLOCK_WINDOW; solving has stopped.",
        "BLOCKED_TWICE",
        close_reason=reason,
    )


@dataclass(frozen=True)
class AccountLimits:
    """The settings the account's guard applies in this process."""

    #: ``CAPSOLVER_CONCURRENCY``: paid calls in flight from this process.
    concurrency: int = 16
    #: An API key is set; without one every paid call fails and the crawl closes.
    has_key: bool = True
    #: ``CAPSOLVER_MAX_TASKS`` and ``CAPSOLVER_BLOCK_WINDOW``, for messages.
    max_tasks: int = 0
    block_window: float = 3600.0


class Account:
    """Leave to pay, in this process and in the crawl's state; and what stops paying."""

    def __init__(
        self,
        limits: AccountLimits,
        state: SolvingState,
        stats: StatsCollector,
        on_fatal: Callable[[str], None],
        reactor: Any,
    ) -> None:
        self.limits = limits
        self._state = state
        self._stats = stats
        self._on_fatal = on_fatal
        self._reactor = reactor
        self._slots = DeferredSemaphore(limits.concurrency)
        self._sleeping: set[Deferred[None]] = set()
        self._balance_gate: Waiters[None] | None = None
        self._fatal: CaptchaSolveError | None = None
        self._closing = False
        #: Paid calls this process made.
        self.calls_made = 0

    def __repr__(self) -> str:
        return f"Account(calls_made={self.calls_made}, in_flight={self.calls_in_flight})"

    @property
    def calls_in_flight(self) -> int:
        """Paid calls of this process sent and not answered yet."""
        return self.limits.concurrency - self._slots.tokens

    @property
    def stopped(self) -> bool:
        """Solving has stopped for good (an account error, a second block, the budget)."""
        return self._fatal is not None

    # Leave to pay

    @asynccontextmanager
    async def paid_call(
        self, still_wanted: Callable[[], None] = lambda: None, *, first: bool = False
    ) -> AsyncIterator[CallTicket]:
        """Leave for one paid call, held for the ``async with`` block; counted in
        ``calls_made``. Waits for a slot (with ``first``, ahead of the calls already
        waiting), a pause to end and the balance read at start; ``still_wanted()`` is asked
        once a slot is free, before the budget counts the call (it raises when the call
        should not be made after all)."""
        ticket = await self._leave(still_wanted, first)
        try:
            self.calls_made += 1
            yield ticket
        finally:
            await quietly(self._stats, self._state.end_call(ticket), "give a permit back")
            self._slots.release()

    async def _leave(self, still_wanted: Callable[[], None], first: bool) -> CallTicket:
        """A concurrency slot and the state's leave for one call, at a moment when sending
        is allowed: a pause, a close or the end of solving may begin while waiting."""
        while True:
            await self._wait_until_allowed()
            await take(self._slots, self._reactor, first=first)
            try:
                self.raise_if_stopped()
                still_wanted()
                verdict = await self._state.begin_call()
                if isinstance(verdict, CallTicket):
                    if self._fatal is not None or self._closing:
                        await self._state.end_call(verdict)
                        self.raise_if_stopped()
                    return verdict
            except BaseException:
                self._slots.release()
                raise
            self._slots.release()
            if isinstance(verdict, Stop):
                self.fail(stop_error(verdict.reason, self.limits.max_tasks))
                self.raise_if_stopped()
            else:
                await self.sleep(verdict.seconds)

    async def _wait_until_allowed(self) -> None:
        while True:
            self.raise_if_stopped()
            if self._balance_gate is None:
                return
            await self._balance_gate.wait()

    def raise_if_stopped(self) -> None:
        if not self.limits.has_key:
            self.fail(missing_key_error())
        if self._fatal is not None:
            raise copy.copy(self._fatal)
        if self._closing:
            raise CaptchaCrawlClosingError()

    # The balance read at start

    def hold_until_balance_checked(self) -> None:
        """Make paid calls wait for :meth:`balance_checked`, so that no task is paid for
        with a key that turns out to be bad."""
        self._balance_gate = Waiters()

    def balance_checked(self) -> None:
        gate, self._balance_gate = self._balance_gate, None
        if gate is not None:
            gate.succeed(None)

    # Blocks and stops

    async def blocked(self, exc: CaptchaBlockedError, ticket: CallTicket | None) -> None:
        """The call of ``ticket`` (None: a call without one, such as getBalance) was
        answered with a block: pause every process using the key, or stop on a second one."""
        self._on_blocked(exc, await self._verdict_on_block(self._state.blocked(ticket)))

    async def _verdict_on_block(
        self, operation: Awaitable[Pause | Stop | None]
    ) -> Pause | Stop | None:
        try:
            return await operation
        except CaptchaFleetError as exc:
            logger.warning("Could not record a block in the fleet state: %s", exc)
            return None

    def _on_blocked(self, exc: CaptchaBlockedError, verdict: Pause | Stop | None) -> None:
        if verdict is None:
            return  # sent before the pause began: the same block, seen late
        if isinstance(verdict, Stop):
            self.fail(exc)
            return
        self._stats.inc_value("capsolver/paused")
        logger.warning(
            "%s All solving pauses for %g s; a second block within %g s closes the crawl.",
            exc,
            verdict.seconds,
            self.limits.block_window,
        )

    def fleet_stopped(self, reason: str) -> None:
        """Solving stopped for the whole fleet (another process saw it): stop here too."""
        self.fail(stop_error(reason, self.limits.max_tasks))

    def fail(self, exc: CaptchaAccountError | CaptchaBudgetError) -> None:
        """Stop all solving for good: every later and waiting solve fails with ``exc``, and
        the crawl closes with its ``close_reason``."""
        if self._fatal is not None:
            return
        self._fatal = exc
        logger.error("%s", exc)
        self._wake_sleepers()
        self._on_fatal(exc.close_reason)

    # Waiting

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``; raise at once when solving stops or the crawl closes meanwhile."""
        sleeping: Deferred[None] = deferLater(self._reactor, seconds, lambda: None)
        self._sleeping.add(sleeping)
        try:
            await maybe_deferred_to_future(sleeping)
        except CancelledError:
            self.raise_if_stopped()
            raise
        finally:
            self._sleeping.discard(sleeping)

    def _wake_sleepers(self) -> None:
        for sleeping in list(self._sleeping):
            sleeping.cancel()
        self.balance_checked()

    def close(self) -> None:
        """Fail what still waits (the crawl has ended)."""
        self._closing = True
        self._wake_sleepers()
