"""When a failed call is tried again, and after how long: the retry policy, where stats see it.

:class:`RetryPolicy` is the pure part (``CAPSOLVER_MAX_RETRIES``, ``CAPSOLVER_BACKOFF_BASE``,
``CAPSOLVER_BACKOFF_MAX``, and each error's own limit from the API error table).
:class:`Retrier` runs calls under it and counts every error in ``capsolver/error/<code>``
and every retry in ``capsolver/retries`` and ``capsolver/retries/<code>``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

from scrapy.statscollectors import StatsCollector

from ...errors import CaptchaAccountError, CaptchaApiError, CaptchaBlockedError, CaptchaFleetError
from ...state.housekeeping import count_error

logger = logging.getLogger(__name__)

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


@dataclass(frozen=True)
class RetryPolicy:
    """How often an error is retried, and how long to wait before each retry."""

    #: Retries after the first try, for an error the table allows to retry.
    max_retries: int = 3
    #: The first retry waits up to this many seconds; each next one up to twice as long...
    backoff_base: float = 1.0
    #: ...but never more than this.
    backoff_max: float = 30.0

    def allowed(self, exc: CaptchaApiError) -> int:
        """Retries allowed after ``exc``: the setting, or fewer when the error table says so
        (a bad request is retried once)."""
        if exc.retry_limit is None:
            return self.max_retries
        return min(self.max_retries, exc.retry_limit)

    def ceiling(self, retry: int) -> float:
        """The longest wait before retry number ``retry`` (1 for the first)."""
        return float(min(self.backoff_max, self.backoff_base * 2.0 ** (retry - 1)))

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        """The wait before retry number ``retry``: half fixed, half random, which spreads the
        retries of many requests that failed together."""
        ceiling = self.ceiling(retry)
        return ceiling / 2 + (rng or random).uniform(0, ceiling / 2)


class Retrier:
    """Runs calls under a :class:`RetryPolicy`, sleeping with ``sleep`` (which raises once
    solving has stopped) and counting in ``stats``."""

    def __init__(self, policy: RetryPolicy, stats: StatsCollector, sleep: Sleep) -> None:
        self.policy = policy
        self._stats = stats
        self._sleep = sleep

    def __repr__(self) -> str:
        return f"Retrier({self.policy!r})"

    async def api_call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        stopped: Callable[[], bool],
        give_up: Callable[[CaptchaApiError], bool] = lambda exc: False,
    ) -> T:
        """``operation()``, retried with backoff on the errors the table allows: transient
        API errors and an unreachable fleet state among them. A block is tried again without
        counting as a retry (the next try waits out the pause), unless solving has
        ``stopped`` since; account errors are never retried, nor an error the caller will
        ``give_up`` on (failover: another service is asked at once)."""
        retries = 0
        while True:
            try:
                return await operation()
            except CaptchaBlockedError as exc:
                count_error(self._stats, exc)
                if stopped():  # a second block: solving has stopped for good
                    raise
            except CaptchaAccountError as exc:
                count_error(self._stats, exc)
                raise
            except CaptchaApiError as exc:
                count_error(self._stats, exc)
                allowed = 0 if give_up(exc) else self.policy.allowed(exc)
                retries = await self._back_off(exc, retries, allowed)

    async def state_call(self, operation: Callable[[], Awaitable[T]]) -> T:
        """A call to the fleet state, retried with backoff while the store is unreachable,
        as a transient API error would be."""
        retries = 0
        while True:
            try:
                return await operation()
            except CaptchaFleetError as exc:
                count_error(self._stats, exc)
                retries = await self._back_off(exc, retries, self.policy.max_retries)

    async def _back_off(self, exc: CaptchaApiError, retries: int, allowed: int) -> int:
        """Wait before retry number ``retries + 1``, and return that number; raise ``exc``
        when ``allowed`` retries were made."""
        if retries >= allowed:
            raise exc
        retries += 1
        self._stats.inc_value("capsolver/retries")
        self._stats.inc_value(f"capsolver/retries/{exc.error_code}")
        delay = self.policy.delay(retries)
        logger.debug("Retrying in %.2f s (%d/%d): %s", delay, retries, allowed, exc)
        await self._sleep(delay)
        return retries
