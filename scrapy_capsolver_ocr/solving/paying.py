"""The paid reader: CapSolver's API, and everything that keeps its cost counted and bounded.

:class:`CapSolverReader` is the one place where createTask calls are paced, retried and
counted in stats. Answers, calls in flight, the budget, the account's concurrency and pauses
live in the crawl's :class:`~scrapy_capsolver_ocr.state.base.SolvingState`, so they hold for one
process or, in fleet mode, for every process of the fleet alike.
"""

from __future__ import annotations

import copy
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import Any, TypeVar

from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.task import deferLater

from ..api.client import CapSolverApi, missing_key_error
from ..api.errors import answer_number, malformed_answer
from ..api.image_task import TaskRunner, solution_from, task_payload
from ..engines.base import CaptchaImage
from ..errors import (
    CLOSE_MAX_TASKS,
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaBlockedError,
    CaptchaBudgetError,
    CaptchaCrawlClosingError,
    CaptchaFleetError,
    CaptchaSolveError,
)
from ..reactor import installed_reactor
from ..settings import SolverSettings
from ..solution import CaptchaSolution
from ..state.base import CallTicket, Pause, SolvingState, Stop
from ..waiting import Waiters, take

logger = logging.getLogger(__name__)

T = TypeVar("T")


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


class CapSolverReader:
    """Reads images through CapSolver: cache, shared calls, concurrency, budget, retries,
    pauses. Every createTask call is counted in ``capsolver/task_count``."""

    def __init__(
        self,
        config: SolverSettings,
        stats: StatsCollector,
        state: SolvingState,
        on_fatal: Callable[[str], None],
        api: CapSolverApi | None = None,
    ) -> None:
        self.config = config
        self.api = api or CapSolverApi(
            config.api_url, config.api_key, config.timeout, config.concurrency
        )
        self.state = state
        self._stats = stats
        self._on_fatal = on_fatal
        self._reactor = installed_reactor()
        self._runner = TaskRunner(
            self.api,
            self._sleep,
            poll_interval=config.poll_interval,
            poll_max=config.backoff_max,
            poll_timeout=config.timeout,
            on_poll=lambda: stats.inc_value("capsolver/polls"),
        )
        self._slots = DeferredSemaphore(config.concurrency)
        self._sleeping: set[Deferred[None]] = set()
        self._balance_gate: Waiters[None] | None = None
        self._fatal: CaptchaSolveError | None = None
        self._closing = False
        self.tasks_sent = 0

    def __repr__(self) -> str:
        return f"CapSolverReader(api={self.api!r}, state={self.state!r})"

    @property
    def calls_in_flight(self) -> int:
        """createTask calls of this process sent and not answered yet."""
        return self.config.concurrency - self._slots.tokens

    # Reading

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution:
        """The answer for ``captcha``: from the cache, from a call in flight for the same
        image (in any process of the fleet), or from a createTask call of its own."""
        key = captcha.key
        cached = await self._state_call(lambda: self.state.cached(key))
        if cached is not None:
            self._stats.inc_value("capsolver/cache_hit")
            return replace(cached, from_cache=True)
        while not await self._state_call(lambda: self.state.claim(key)):
            self._stats.inc_value("capsolver/shared_call")
            # The claimant's own failure (after its retries) is this request's too.
            solution = await self._state_call(lambda: self.state.wait(key))
            if solution is not None:
                return solution
            # The claim lapsed (its process died): take the image over.
        try:
            solution = await self._pay(captcha)
        except CaptchaSolveError as exc:
            await self._quietly(self.state.abandon(key, exc), "give up a claim")
            raise
        except BaseException:
            closing = CaptchaCrawlClosingError()
            await self._quietly(self.state.abandon(key, closing), "give up a claim")
            raise
        await self._quietly(self.state.publish(key, solution), "share an answer")
        return solution

    async def _pay(self, captcha: CaptchaImage) -> CaptchaSolution:
        payload = task_payload(
            captcha.body,
            module=captcha.module,
            score=captcha.score,
            website_url=captcha.website_url,
            app_id=self.config.app_id,
        )

        async def attempt() -> CaptchaSolution:
            return solution_from(await self._call(payload), captcha.sha256)

        return await self._retrying(attempt)

    async def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One paid task, run to its answer, with the leave of the state."""
        ticket = await self._leave_to_call()
        try:
            self.tasks_sent += 1
            self._stats.inc_value("capsolver/task_count")
            try:
                return await self._runner.run(payload)
            # Acted on before the slot is released: the next caller must see the new state.
            except CaptchaBlockedError as exc:
                self._on_blocked(exc, await self._state_or_none(self.state.blocked(ticket)))
                raise
            except CaptchaAccountError as exc:
                self._fail_crawl(exc)
                raise
        finally:
            await self._quietly(self.state.end_call(ticket), "give a permit back")
            self._slots.release()

    async def _leave_to_call(self) -> CallTicket:
        """A concurrency slot and the state's leave for one call, at a moment when sending
        is allowed: a pause, a close or the end of solving may begin while waiting."""
        while True:
            await self._wait_until_allowed()
            await take(self._slots, self._reactor)
            try:
                self._raise_if_stopped()
                verdict = await self.state.begin_call()
                if isinstance(verdict, CallTicket):
                    if self._stopped_meanwhile():
                        await self.state.end_call(verdict)
                        self._raise_if_stopped()
                    return verdict
            except BaseException:
                self._slots.release()
                raise
            self._slots.release()
            if isinstance(verdict, Stop):
                self._fail_crawl(stop_error(verdict.reason, self.config.max_tasks))
                self._raise_if_stopped()
            else:
                await self._sleep(verdict.seconds)

    def _stopped_meanwhile(self) -> bool:
        return self._fatal is not None or self._closing

    async def _retrying(self, operation: Callable[[], Awaitable[T]]) -> T:
        """``operation()``, retried with backoff on the errors the table allows: transient
        API errors and an unreachable fleet state among them. A pause is waited out and
        does not count as a retry."""
        retries = 0
        while True:
            try:
                return await operation()
            except CaptchaBlockedError as exc:
                self._count_error(exc)
                if self._fatal is not None:  # a second block: solving has stopped for good
                    raise
            except CaptchaAccountError as exc:
                self._count_error(exc)
                raise
            except CaptchaApiError as exc:
                self._count_error(exc)
                allowed = self.config.max_retries
                if exc.retry_limit is not None:
                    allowed = min(allowed, exc.retry_limit)
                retries = await self._back_off(exc, retries, allowed)

    async def _state_call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A call to the fleet state, retried with backoff while the store is unreachable,
        as a transient API error would be."""
        retries = 0
        while True:
            try:
                return await operation()
            except CaptchaFleetError as exc:
                self._count_error(exc)
                retries = await self._back_off(exc, retries, self.config.max_retries)

    async def _back_off(self, exc: CaptchaApiError, retries: int, allowed: int) -> int:
        """Wait before retry number ``retries + 1``, and return that number; raise ``exc``
        when ``allowed`` retries were made."""
        if retries >= allowed:
            raise exc
        retries += 1
        self._stats.inc_value("capsolver/retries")
        self._stats.inc_value(f"capsolver/retries/{exc.error_code}")
        delay = self._backoff(retries)
        logger.debug("Retrying in %.2f s (%d/%d): %s", delay, retries, allowed, exc)
        await self._sleep(delay)
        return retries

    def _backoff(self, retries: int) -> float:
        ceiling: float = min(
            self.config.backoff_max, self.config.backoff_base * 2.0 ** (retries - 1)
        )
        # Half fixed, half random: spreads the retries of many requests that failed together.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    async def _quietly(self, operation: Awaitable[None], what: str) -> None:
        """Housekeeping that must not fail a solve: a lost claim or permit lapses on its own."""
        try:
            await operation
        except CaptchaFleetError as exc:
            self._count_error(exc)
            logger.warning("Could not %s in the fleet state: %s", what, exc)

    def _count_error(self, exc: CaptchaApiError) -> None:
        self._stats.inc_value(f"capsolver/error/{exc.error_code or type(exc).__name__}")

    # Wrong answers

    async def report_wrong(self, solution: CaptchaSolution, message: str = "") -> None:
        """Forget ``solution`` and tell CapSolver (``feedbackTask``) when
        ``CAPSOLVER_REPORT_WRONG`` is on. A failed report is logged, never raised."""
        await self._quietly(self.state.forget(solution.image_sha256), "forget an answer")
        if not self.config.report_wrong or not solution.task_id:
            return
        result: dict[str, Any] = {"invalid": True, "code": 1001}
        if message:
            result["message"] = message
        payload: dict[str, Any] = {"taskId": solution.task_id, "result": result}
        if self.config.app_id:
            payload["appId"] = self.config.app_id
        try:
            await self.api.call("feedbackTask", payload)
        except CaptchaSolveError as exc:
            self._stats.inc_value("capsolver/feedback_failed")
            logger.warning("Could not report a wrong captcha answer to CapSolver: %s", exc)
        else:
            self._stats.inc_value("capsolver/feedback_sent")

    # Balance

    async def balance(self) -> float:
        """The account balance in USD, from ``getBalance``."""
        answer = await self.api.call("getBalance", {})
        balance = answer_number(answer.get("balance"))
        if balance is None:
            raise malformed_answer("getBalance", "without a finite numeric balance")
        return balance

    def hold_until_balance_checked(self) -> None:
        """Make solves wait for :meth:`record_balance` at crawl start, so no task is paid
        for with a key that turns out to be bad."""
        self._balance_gate = Waiters()

    async def record_balance(self, *, at_start: bool) -> float | None:
        """Read the balance into ``capsolver/balance_start`` or ``capsolver/balance_end``.
        At the start, account errors and a zero balance close the crawl and a block pauses
        solving; any other failure is logged and the crawl goes on."""
        try:
            value = await self.balance()
        except CaptchaBlockedError as exc:
            if at_start:
                # Blocked before the first task: pause as a blocked createTask would, rather
                # than send every waiting task into the block.
                self._on_blocked(exc, await self._state_or_none(self.state.blocked(None)))
            else:
                logger.warning("Could not read the CapSolver balance: %s", exc)
            return None
        except CaptchaAccountError as exc:
            if at_start:
                self._fail_crawl(exc)
            return None
        except CaptchaSolveError as exc:
            logger.warning("Could not read the CapSolver balance: %s", exc)
            return None
        finally:
            self._open_balance_gate()
        self._stats.set_value(
            "capsolver/balance_start" if at_start else "capsolver/balance_end", value
        )
        if at_start and value <= 0:
            self._fail_crawl(
                CaptchaAccountError(
                    "The CapSolver balance is 0: top it up to solve captchas.",
                    "ERROR_ZERO_BALANCE",
                    close_reason=CLOSE_ZERO_BALANCE,
                )
            )
        return value

    async def _state_or_none(
        self, operation: Awaitable[Pause | Stop | None]
    ) -> Pause | Stop | None:
        try:
            return await operation
        except CaptchaFleetError as exc:
            logger.warning("Could not record a block in the fleet state: %s", exc)
            return None

    # Stopping and pausing

    def _raise_if_stopped(self) -> None:
        if self.config.api_key is None:
            self._fail_crawl(missing_key_error())
        if self._fatal is not None:
            raise copy.copy(self._fatal)
        if self._closing:
            raise CaptchaCrawlClosingError()

    async def _wait_until_allowed(self) -> None:
        while True:
            self._raise_if_stopped()
            if self._balance_gate is None:
                return
            await self._balance_gate.wait()

    async def _sleep(self, seconds: float) -> None:
        sleeping: Deferred[None] = deferLater(self._reactor, seconds, lambda: None)
        self._sleeping.add(sleeping)
        try:
            await maybe_deferred_to_future(sleeping)
        except CancelledError:
            self._raise_if_stopped()
            raise
        finally:
            self._sleeping.discard(sleeping)

    def _wake_sleepers(self) -> None:
        for sleeping in list(self._sleeping):
            sleeping.cancel()
        self._open_balance_gate()

    def _open_balance_gate(self) -> None:
        gate, self._balance_gate = self._balance_gate, None
        if gate is not None:
            gate.succeed(None)

    def _on_blocked(self, exc: CaptchaBlockedError, verdict: Pause | Stop | None) -> None:
        if verdict is None:
            return  # sent before the pause began: the same block, seen late
        if isinstance(verdict, Stop):
            self._fail_crawl(exc)
            return
        self._stats.inc_value("capsolver/paused")
        logger.warning(
            "%s All solving pauses for %g s; a second block within %g s closes the crawl.",
            exc,
            verdict.seconds,
            self.config.block_window,
        )

    def fleet_stopped(self, reason: str) -> None:
        """Solving stopped for the whole fleet (another process saw it): stop here too."""
        self._fail_crawl(stop_error(reason, self.config.max_tasks))

    def _fail_crawl(self, exc: CaptchaAccountError | CaptchaBudgetError) -> None:
        """Stop all solving for good: every later and waiting solve fails with ``exc``, and
        the crawl closes with its ``close_reason``."""
        if self._fatal is not None:
            return
        self._fatal = exc
        logger.error("%s", exc)
        self._wake_sleepers()
        self._on_fatal(exc.close_reason)

    async def close(self) -> None:
        """Fail what still waits and close the connection pool (the crawl has ended)."""
        self._closing = True
        self._wake_sleepers()
        await self.api.close()
