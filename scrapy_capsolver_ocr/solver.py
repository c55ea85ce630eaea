"""Solving images for a crawl: cache, shared calls, concurrency, retries, budget, pauses.

:class:`CaptchaSolver` is the one place where API calls are paced, retried and counted
in stats, so every paid call is visible and bounded.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import logging
import random
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore
from twisted.internet.task import deferLater

from .client import CapSolverApi, missing_key_error
from .errors import (
    CLOSE_ZERO_BALANCE,
    CaptchaAccountError,
    CaptchaApiError,
    CaptchaBlockedError,
    CaptchaBudgetError,
    CaptchaCrawlClosingError,
    CaptchaSolveError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from .images import check_image
from .settings import SolverSettings, check_score, check_text, check_url
from .solution import CaptchaSolution

logger = logging.getLogger(__name__)


class _Waiters:
    """Coroutines waiting for one outcome that another coroutine will produce."""

    def __init__(self) -> None:
        self._deferreds: list[Deferred[Any]] = []

    async def wait(self) -> Any:
        deferred: Deferred[Any] = Deferred()
        self._deferreds.append(deferred)
        return await maybe_deferred_to_future(deferred)

    def succeed(self, value: Any) -> None:
        deferreds, self._deferreds = self._deferreds, []
        for deferred in deferreds:
            deferred.callback(value)

    def fail(self, exc: BaseException) -> None:
        deferreds, self._deferreds = self._deferreds, []
        for deferred in deferreds:
            deferred.errback(copy.copy(exc))


class _EmptySolution(CaptchaTaskError):
    retry_limit = 1


class CaptchaSolver:
    """Solves captcha images through the CapSolver API for one crawl.

    Spiders get the running instance with :func:`scrapy_capsolver_ocr.get_solver` and can
    ``await solver.solve(image_bytes)`` for images they obtained themselves.
    """

    def __init__(
        self,
        config: SolverSettings,
        stats: StatsCollector,
        on_fatal: Callable[[str], None],
    ) -> None:
        from twisted.internet import reactor

        self.config = config
        self.api = CapSolverApi(config.api_url, config.api_key, config.timeout, config.concurrency)
        self._stats = stats
        self._on_fatal = on_fatal
        self._reactor: Any = reactor
        self._slots = DeferredSemaphore(config.concurrency)
        self._cache: OrderedDict[str, CaptchaSolution] = OrderedDict()
        self._shared: dict[str, _Waiters] = {}
        self._sleeping: set[Deferred[None]] = set()
        self._balance_gate: _Waiters | None = None
        self._fatal: CaptchaSolveError | None = None
        self._closing = False
        self._paused_until = 0.0
        self._last_block_at = float("-inf")
        self.tasks_sent = 0
        self.in_flight = 0

    def __repr__(self) -> str:
        return f"CaptchaSolver(api={self.api!r}, in_flight={self.in_flight})"

    @property
    def calls_in_flight(self) -> int:
        """createTask calls sent and not answered yet; ``in_flight`` also counts the solves
        waiting for a concurrency slot, a pause or the balance read at start."""
        return self.config.concurrency - self._slots.tokens

    # Solving

    async def solve(
        self,
        image: bytes,
        *,
        module: str | None = None,
        score: float | None = None,
        website_url: str | None = None,
        source: str = "image",
    ) -> CaptchaSolution:
        """Solve ``image`` (raw bytes of a PNG, JPEG, GIF, BMP or WEBP).

        ``module``, ``score`` and ``website_url`` override the settings for this image;
        ``source`` names the image in error messages. Raises a :class:`CaptchaSolveError`.
        """
        self._stats.inc_value("capsolver/requested")
        self.in_flight += 1
        try:
            solution = await self._solve(image, module, score, website_url, source)
        except Exception as exc:
            self._stats.inc_value("capsolver/failed")
            # By the public class a spider can catch, not a private subclass such as the
            # retried-once task errors.
            public = next(c for c in type(exc).__mro__ if not c.__name__.startswith("_"))
            self._stats.inc_value(f"capsolver/failed/{public.__name__}")
            raise
        finally:
            self.in_flight -= 1
        self._stats.inc_value("capsolver/solved")
        return solution

    async def _solve(
        self,
        image: bytes,
        module: str | None,
        score: float | None,
        website_url: str | None,
        source: str,
    ) -> CaptchaSolution:
        check_image(image, self.config.max_image_size, source)
        module = check_text("module", module) if module is not None else self.config.module
        score = check_score("score", score) if score is not None else self.config.score
        if website_url is not None:
            website_url = check_url("website_url", website_url)
        digest = hashlib.sha256(image).hexdigest()
        key = f"{digest}:{module or ''}"

        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            self._stats.inc_value("capsolver/cache_hit")
            return replace(cached, from_cache=True)
        shared = self._shared.get(key)
        if shared is not None:
            self._stats.inc_value("capsolver/shared_call")
            solution: CaptchaSolution = await shared.wait()
            return solution

        shared = self._shared[key] = _Waiters()
        try:
            solution = await self._create_task(
                self._task_payload(image, module, score, website_url), digest
            )
        except Exception as exc:
            shared.fail(exc)
            raise
        finally:
            del self._shared[key]
        shared.succeed(solution)
        self._remember(key, solution)
        return solution

    def _task_payload(
        self, image: bytes, module: str | None, score: float | None, website_url: str | None
    ) -> dict[str, Any]:
        # Optional fields are left out, never sent empty: CapSolver rejects null and 0.
        task: dict[str, Any] = {
            "type": "ImageToTextTask",
            "body": base64.b64encode(image).decode("ascii"),
        }
        if module:
            task["module"] = module
        if score is not None:
            task["score"] = score
        if website_url:
            task["websiteURL"] = website_url
        payload: dict[str, Any] = {"task": task}
        if self.config.app_id:
            payload["appId"] = self.config.app_id
        return payload

    async def _create_task(self, payload: dict[str, Any], digest: str) -> CaptchaSolution:
        retries = 0
        while True:
            try:
                answer = await self._send_task(payload)
                return self._solution_from(answer, digest)
            except CaptchaBlockedError as exc:
                if self._fatal is not None:  # a second block: solving has stopped for good
                    raise
                # A pause has begun: the next round waits for its end, then sends again.
                self._count_call_error(exc)
            except CaptchaAccountError as exc:
                self._count_call_error(exc)
                raise
            except CaptchaApiError as exc:
                self._count_call_error(exc)
                allowed = self.config.max_retries
                if exc.retry_limit is not None:
                    allowed = min(allowed, exc.retry_limit)
                if retries >= allowed:
                    raise
                retries += 1
                self._stats.inc_value("capsolver/retries")
                self._stats.inc_value(f"capsolver/retries/{exc.error_code}")
                delay = self._backoff(retries)
                logger.debug(
                    "Retrying createTask in %.2f s (%d/%d): %s", delay, retries, allowed, exc
                )
                await self._sleep(delay)

    async def _acquire_slot(self) -> None:
        """Take a concurrency slot at a moment when sending is allowed: a pause or the end
        of solving may have begun while this request waited for the slot."""
        while True:
            await self._wait_until_allowed()
            await maybe_deferred_to_future(self._slots.acquire())
            if (
                self._fatal is None
                and not self._closing
                and self._balance_gate is None
                and self._paused_until <= self._reactor.seconds()
            ):
                return
            self._slots.release()

    async def _send_task(self, payload: dict[str, Any]) -> dict[str, Any]:
        await self._acquire_slot()
        try:
            if self.config.max_tasks and self.tasks_sent >= self.config.max_tasks:
                self._fail_crawl(
                    CaptchaBudgetError(
                        f"CAPSOLVER_MAX_TASKS ({self.config.max_tasks}) createTask calls were "
                        "made in this crawl; no more captchas are solved. Raise the setting to "
                        "allow more."
                    )
                )
                self._raise_if_stopped()
            self.tasks_sent += 1
            self._stats.inc_value("capsolver/task_count")
            sent_at = self._reactor.seconds()
            try:
                return await self.api.call("createTask", payload)
            # Acted on before the slot is released: the next waiter must see the new state.
            except CaptchaBlockedError as exc:
                self._on_blocked(exc, sent_at)
                raise
            except CaptchaAccountError as exc:
                self._fail_crawl(exc)
                raise
        finally:
            self._slots.release()

    def _solution_from(self, answer: dict[str, Any], digest: str) -> CaptchaSolution:
        solution = answer.get("solution")
        if not isinstance(solution, dict) or not isinstance(solution.get("text"), str):
            raise CaptchaTransientError(
                "CapSolver createTask answered without solution.text: not a complete answer.",
                "MALFORMED_ANSWER",
            )
        text = solution["text"].strip()
        if not text:
            raise _EmptySolution(
                "CapSolver createTask answered an empty text for this image.", "EMPTY_SOLUTION"
            )
        confidence = solution.get("confidence")
        return CaptchaSolution(
            text=text,
            task_id=str(answer.get("taskId") or ""),
            image_sha256=digest,
            confidence=float(confidence) if isinstance(confidence, (int, float)) else None,
        )

    def _remember(self, key: str, solution: CaptchaSolution) -> None:
        if self.config.cache_size <= 0:
            return
        self._cache[key] = solution
        if len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)

    def _backoff(self, retries: int) -> float:
        ceiling: float = min(
            self.config.backoff_max, self.config.backoff_base * 2.0 ** (retries - 1)
        )
        # Half fixed, half random: spreads the retries of many requests that failed together.
        return ceiling / 2 + random.uniform(0, ceiling / 2)

    # Wrong answers

    def forget(self, solution: CaptchaSolution) -> None:
        """Drop ``solution`` from the cache, so the same image is solved again."""
        for key in [k for k, v in self._cache.items() if v.image_sha256 == solution.image_sha256]:
            del self._cache[key]

    async def report_wrong(self, solution: CaptchaSolution, message: str = "") -> None:
        """The site rejected ``solution``: forget it and tell CapSolver (``feedbackTask``)
        when ``CAPSOLVER_REPORT_WRONG`` is on. A failed report is logged, never raised."""
        self.forget(solution)
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
        value = answer.get("balance")
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CaptchaTransientError(
                "CapSolver getBalance answered without a numeric balance.", "MALFORMED_ANSWER"
            )
        return float(value)

    def hold_until_balance_checked(self) -> None:
        """Make solves wait for :meth:`record_balance` at crawl start, so no task is paid
        for with a key that turns out to be bad."""
        self._balance_gate = _Waiters()

    async def record_balance(self, *, at_start: bool) -> float | None:
        """Read the balance into ``capsolver/balance_start`` or ``capsolver/balance_end``.
        At the start, account errors and a zero balance close the crawl and a block pauses
        solving; any other failure is logged and the crawl goes on."""
        sent_at = self._reactor.seconds()
        try:
            value = await self.balance()
        except CaptchaBlockedError as exc:
            if at_start:
                # Blocked before the first task: pause as a blocked createTask would, rather
                # than send every waiting task into the block.
                self._on_blocked(exc, sent_at)
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

    # Stopping and pausing

    def _count_call_error(self, exc: CaptchaApiError) -> None:
        self._stats.inc_value(f"capsolver/error/{exc.error_code or type(exc).__name__}")

    def _raise_if_stopped(self) -> None:
        if self.config.api_key is None:
            self._fail_crawl(missing_key_error())
        if self._fatal is not None:
            raise copy.copy(self._fatal)
        if self._closing:
            raise CaptchaCrawlClosingError("The crawl is closing; the captcha was not solved.")

    async def _wait_until_allowed(self) -> None:
        while True:
            self._raise_if_stopped()
            if self._balance_gate is not None:
                await self._balance_gate.wait()
                continue
            paused_for = self._paused_until - self._reactor.seconds()
            if paused_for <= 0:
                return
            await self._sleep(paused_for)

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

    def _on_blocked(self, exc: CaptchaBlockedError, sent_at: float) -> None:
        if sent_at < self._last_block_at:
            return  # sent before the pause began: the same block, seen late
        now = self._reactor.seconds()
        if now - self._last_block_at <= self.config.block_window:
            self._fail_crawl(exc)
            return
        self._last_block_at = now
        self._paused_until = now + self.config.block_pause
        self._stats.inc_value("capsolver/paused")
        logger.warning(
            "%s All solving pauses for %g s; a second block within %g s closes the crawl.",
            exc,
            self.config.block_pause,
            self.config.block_window,
        )

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
