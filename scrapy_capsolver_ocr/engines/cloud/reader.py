"""The cloud reader: a solving service's createTask (CapSolver's by default), through its
:class:`~scrapy_capsolver_ocr.api.provider.Provider` and the API client, with answers shared.

:class:`CloudReader` is the last of the solver's readers: it always answers or raises. An
image answered before (in any process of a fleet) comes from the crawl's state; one another
caller is paying for already waits for that answer; else it pays for one createTask, with
the leave of the :class:`~scrapy_capsolver_ocr.engines.cloud.account.Account` and retried under
the :class:`~scrapy_capsolver_ocr.engines.cloud.retry.RetryPolicy`. Every createTask call is
counted in ``capsolver/task_count``.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from functools import partial
from typing import Any

from scrapy.statscollectors import StatsCollector

from ...api.provider import TaskOptions
from ...errors import (
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaBlockedError,
    CaptchaCrawlClosingError,
    CaptchaSolveError,
)
from ...solution import CAPSOLVER, CaptchaSolution
from ...state.base import SolvingState
from ...state.housekeeping import quietly
from ..base import CaptchaImage
from .account import Account
from .breaker import provider_stat
from .retry import Retrier
from .routes import Route, Routes, Sending, note_sending

logger = logging.getLogger(__name__)


class CloudReader:
    """Reads images through a solving service: cached and shared answers, else a paid
    task. Everything the service spells its own way is its ``provider``'s; which service
    a task is paid on (one, or several with failover) is its ``routes``'."""

    name = CAPSOLVER
    local = False

    def __init__(
        self,
        routes: Routes,
        account: Account,
        retrier: Retrier,
        state: SolvingState,
        stats: StatsCollector,
        *,
        report_wrong: bool = True,
    ) -> None:
        self.routes = routes
        #: The preferred service's provider and client (the only ones without failover).
        self.provider = routes.preferred.provider
        self.api = routes.preferred.api
        self.account = account
        self._retrier = retrier
        self._state = state
        self._stats = stats
        self._report_wrong = report_wrong

    def __repr__(self) -> str:
        return f"CloudReader(api={self.api!r}, state={self._state!r})"

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution:
        """The answer for ``captcha``: from the cache, from a call in flight for the same
        image (in any process of the fleet), or from a createTask call of its own."""
        key = captcha.key
        state_call = self._retrier.state_call
        cached = await state_call(lambda: self._state.cached(key))
        if cached is not None:
            self._stats.inc_value("capsolver/cache_hit")
            return replace(cached, from_cache=True)
        while not await state_call(lambda: self._state.claim(key)):
            self._stats.inc_value("capsolver/shared_call")
            # The claimant's own failure (after its retries) is this request's too.
            solution = await state_call(lambda: self._state.wait(key))
            if solution is not None:
                return solution
            # The claim lapsed (its process died): take the image over.
        try:
            solution = await self._pay(captcha)
        except CaptchaSolveError as exc:
            await quietly(self._stats, self._state.abandon(key, exc), "give up a claim")
            raise
        except BaseException:
            closing = CaptchaCrawlClosingError()
            await quietly(self._stats, self._state.abandon(key, closing), "give up a claim")
            raise
        await quietly(self._stats, self._state.publish(key, solution), "share an answer")
        return solution

    async def _pay(self, captcha: CaptchaImage) -> CaptchaSolution:
        options = TaskOptions(captcha.module, captcha.score, captcha.website_url)

        async def on(route: Route, sending: Sending) -> CaptchaSolution:
            payload = route.provider.task_payload(captcha.body, options)

            async def attempt() -> CaptchaSolution:
                return route.provider.solution(
                    await self._call(route, payload, sending), captcha.sha256
                )

            return await self._retrier.api_call(
                attempt, stopped=lambda: self.routes.stopped(route), give_up=self.routes.give_up
            )

        return await self.routes.pay(on)

    async def _call(
        self, route: Route, payload: dict[str, Any], sending: Sending
    ) -> dict[str, Any]:
        """One paid task on ``route``, run to its answer, with the account's leave."""
        wanted = partial(self.routes.still_wanted, route, sending)
        # A probe of a service that was out goes ahead of the tasks queued for the others:
        # behind them, the return to the preferred service would wait for the whole queue.
        first = sending.probe
        async with self.routes.slot(route), self.account.paid_call(wanted, first=first) as ticket:
            self._stats.inc_value("capsolver/task_count")
            self.routes.calling(route)
            try:
                return await route.runner.run(payload)
            # Acted on before the leave is given back: the next caller must see the new state.
            except CaptchaBlockedError as exc:
                await self.routes.blocked(route, exc, ticket)
                raise
            except CaptchaAccountError as exc:
                await self.routes.account_error(route, exc)
                raise
            except CaptchaApiError as exc:
                note_sending(sending, exc)
                raise

    # What the site said of an answer

    def answered(self, captcha: CaptchaImage, solution: CaptchaSolution) -> None:
        pass

    def accepted(self, solution: CaptchaSolution) -> None:
        pass

    async def rejected(self, solution: CaptchaSolution, message: str = "") -> None:
        """Tell the service that answered (CapSolver: ``feedbackTask``) when
        ``CAPSOLVER_REPORT_WRONG`` is on. A failed report is logged, never raised."""
        if not self._report_wrong or not solution.task_id:
            return
        route = self.routes.named(solution.provider)
        try:
            await route.api.call(*route.provider.wrong_answer(solution.task_id, message))
        except CaptchaSolveError as exc:
            self._stats.inc_value("capsolver/feedback_failed")
            logger.warning(
                "Could not report a wrong captcha answer to %s: %s", route.provider.name, exc
            )
        else:
            self._stats.inc_value("capsolver/feedback_sent")

    # Balance

    async def balance(self) -> float:
        """The preferred service's account balance in USD (CapSolver: ``getBalance``)."""
        return await self._balance_of(self.routes.preferred)

    async def _balance_of(self, route: Route) -> float:
        return route.provider.balance_from(await route.api.call(*route.provider.balance_call()))

    async def record_balance(self, *, at_start: bool) -> float | None:
        """Read the balance into ``capsolver/balance_start`` or ``capsolver/balance_end``
        (with several services: their sum, and each one's in
        ``capsolver/provider/<name>/balance_*``). At the start, account errors and a zero
        balance close the crawl (with failover: move tasks off that service) and a block
        pauses solving; any other failure is logged and the crawl goes on."""
        try:
            values = [await self._record_balance(route, at_start) for route in self.routes.all]
        finally:
            self.account.balance_checked()
        if any(value is None for value in values):
            return None
        total = sum(value for value in values if value is not None)
        self._stats.set_value(
            "capsolver/balance_start" if at_start else "capsolver/balance_end", total
        )
        return total

    async def _record_balance(self, route: Route, at_start: bool) -> float | None:
        name = route.provider.name
        try:
            value = await self._balance_of(route)
        except CaptchaBlockedError as exc:
            if at_start:
                # Blocked before the first task: pause as a blocked createTask would, rather
                # than send every waiting task into the block.
                await self.routes.blocked(route, exc, None)
            else:
                logger.warning("Could not read the %s balance: %s", name, exc)
            return None
        except CaptchaAccountError as exc:
            if at_start:
                await self.routes.account_error(route, exc)
            return None
        except CaptchaSolveError as exc:
            logger.warning("Could not read the %s balance: %s", name, exc)
            return None
        if self.routes.balances():
            self._record_provider_balance(route, value, at_start)
        if at_start and value <= 0:
            await self.routes.account_error(
                route,
                CaptchaAccountError(
                    f"The {name} balance is 0: top it up to solve captchas.",
                    "ERROR_ZERO_BALANCE",
                    close_reason=CLOSE_ZERO_BALANCE,
                ),
            )
        return value

    def _record_provider_balance(self, route: Route, value: float, at_start: bool) -> None:
        if at_start:
            self._stats.set_value(provider_stat(route, "balance_start"), value)
            logger.info("%s balance at start: %.4f USD", route.name, value)
            return
        self._stats.set_value(provider_stat(route, "balance_end"), value)
        start = self._stats.get_value(provider_stat(route, "balance_start"))
        if start is not None:
            self._stats.set_value(provider_stat(route, "spent"), round(start - value, 6))

    async def close(self) -> None:
        """Fail what still waits and close the connection pools (the crawl has ended)."""
        self.account.close()
        for route in self.routes.all:
            await route.api.close()
