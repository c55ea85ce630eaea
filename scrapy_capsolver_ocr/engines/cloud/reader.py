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
from typing import Any

from scrapy.statscollectors import StatsCollector

from ...api.client import ApiClient
from ...api.image_task import TaskRunner
from ...api.provider import Provider, TaskOptions
from ...errors import (
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaCrawlClosingError,
    CaptchaSolveError,
)
from ...solution import CAPSOLVER, CaptchaSolution
from ...state.base import SolvingState
from ...state.housekeeping import quietly
from ..base import CaptchaImage
from .account import Account
from .retry import Retrier

logger = logging.getLogger(__name__)


class CloudReader:
    """Reads images through a solving service: cached and shared answers, else a paid
    task. Everything the service spells its own way is its ``provider``'s."""

    name = CAPSOLVER
    local = False

    def __init__(
        self,
        provider: Provider,
        api: ApiClient,
        runner: TaskRunner,
        account: Account,
        retrier: Retrier,
        state: SolvingState,
        stats: StatsCollector,
        *,
        report_wrong: bool = True,
    ) -> None:
        self.provider = provider
        self.api = api
        self.account = account
        self._runner = runner
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
        payload = self.provider.task_payload(captcha.body, options)

        async def attempt() -> CaptchaSolution:
            return self.provider.solution(await self._call(payload), captcha.sha256)

        return await self._retrier.api_call(attempt, stopped=lambda: self.account.stopped)

    async def _call(self, payload: dict[str, Any]) -> dict[str, Any]:
        """One paid task, run to its answer, with the account's leave."""
        async with self.account.paid_call() as ticket:
            self._stats.inc_value("capsolver/task_count")
            try:
                return await self._runner.run(payload)
            # Acted on before the leave is given back: the next caller must see the new state.
            except CaptchaBlockedError as exc:
                await self.account.blocked(exc, ticket)
                raise
            except CaptchaAccountError as exc:
                self.account.fail(exc)
                raise

    # What the site said of an answer

    def answered(self, captcha: CaptchaImage, solution: CaptchaSolution) -> None:
        pass

    def accepted(self, solution: CaptchaSolution) -> None:
        pass

    async def rejected(self, solution: CaptchaSolution, message: str = "") -> None:
        """Tell the service (CapSolver: ``feedbackTask``) when ``CAPSOLVER_REPORT_WRONG`` is
        on. A failed report is logged, never raised."""
        if not self._report_wrong or not solution.task_id:
            return
        try:
            await self.api.call(*self.provider.wrong_answer(solution.task_id, message))
        except CaptchaSolveError as exc:
            self._stats.inc_value("capsolver/feedback_failed")
            logger.warning(
                "Could not report a wrong captcha answer to %s: %s", self.provider.name, exc
            )
        else:
            self._stats.inc_value("capsolver/feedback_sent")

    # Balance

    async def balance(self) -> float:
        """The account balance in USD (CapSolver: ``getBalance``)."""
        return self.provider.balance_from(await self.api.call(*self.provider.balance_call()))

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
                await self.account.blocked(exc, None)
            else:
                logger.warning("Could not read the %s balance: %s", self.provider.name, exc)
            return None
        except CaptchaAccountError as exc:
            if at_start:
                self.account.fail(exc)
            return None
        except CaptchaSolveError as exc:
            logger.warning("Could not read the %s balance: %s", self.provider.name, exc)
            return None
        finally:
            self.account.balance_checked()
        self._stats.set_value(
            "capsolver/balance_start" if at_start else "capsolver/balance_end", value
        )
        if at_start and value <= 0:
            self.account.fail(
                CaptchaAccountError(
                    f"The {self.provider.name} balance is 0: top it up to solve captchas.",
                    "ERROR_ZERO_BALANCE",
                    close_reason=CLOSE_ZERO_BALANCE,
                )
            )
        return value

    async def close(self) -> None:
        """Fail what still waits and close the connection pool (the crawl has ended)."""
        self.account.close()
        await self.api.close()
