"""Which solving state a crawl uses, and what keeps this process in step with its fleet.

Without ``CAPSOLVER_REDIS_URL`` a crawl has a :class:`~scrapy_capsolver_ocr.state.base.MemoryState`
of its own; with it, a :class:`~scrapy_capsolver_ocr.state.redis_state.RedisState` shared by every
process of the fleet. :class:`FleetWatch` opens the state when the spider opens, looks every
second whether another process stopped solving for the whole fleet (a second block), copies
the fleet's figures into ``capsolver/fleet/*`` stats, and closes the state at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import LoopingCall

from ..checks import redact_url
from ..errors import CaptchaFleetError
from ..settings import SolverSettings
from .base import MemoryState, SolvingState, StateFigures, StateLimits

logger = logging.getLogger(__name__)

#: Seconds between two looks for a fleet-wide stop, and between two copies of the figures
#: (or CAPSOLVER_LOGSTATS_INTERVAL when shorter, so that each progress line is up to date).
CHECK_INTERVAL = 1.0
FIGURES_INTERVAL = 5.0
EXTRA_HINT = 'pip install "scrapy-capsolver-ocr[redis]"'
#: Seconds a fleet claim or permit outlives CAPSOLVER_TIMEOUT when its process is gone.
LEASE_MARGIN = 10.0


def state_limits(config: SolverSettings) -> StateLimits:
    """What the crawl-wide solving state enforces, from the crawl's settings."""
    return StateLimits(
        max_tasks=config.max_tasks,
        budget_period=config.budget_period,
        fleet_concurrency=config.fleet_concurrency,
        block_pause=config.block_pause,
        block_window=config.block_window,
        cache_size=config.cache_size,
        cache_ttl=config.cache_ttl,
        # A claim or permit outlives the call it covers, plus time to notice a death.
        lease=config.timeout + LEASE_MARGIN,
    )


def build_state(config: SolverSettings, fleet: str) -> SolvingState:
    """The state for a crawl with ``config``; ``fleet`` names it in fleet mode."""
    limits = state_limits(config)
    if config.redis_url is None:
        return MemoryState(limits)
    try:
        from .redis_connection import RedisTarget
        from .redis_state import RedisState
    except ImportError as exc:
        if exc.name is None or exc.name.partition(".")[0] not in ("redis", "hiredis"):
            raise
        raise ImportError(
            f"CAPSOLVER_REDIS_URL is set ({redact_url(config.redis_url)}): fleet mode needs "
            f"the Redis extra, which is not installed: {EXTRA_HINT}",
            name=exc.name,
        ) from None
    target = RedisTarget(config.redis_url, config.redis_sentinels, config.redis_cluster)
    return RedisState(target, fleet, config.api_key, limits)


def fleet_name(config: SolverSettings, crawler: Any) -> str:
    """``CAPSOLVER_FLEET``, else the spider's name."""
    spider_name = getattr(crawler.spider, "name", None)
    return config.fleet or spider_name or str(crawler.settings.get("BOT_NAME") or "default")


def figures_stats(figures: StateFigures) -> dict[str, Any]:
    """The ``capsolver/fleet/*`` stats for ``figures``."""
    stats: dict[str, Any] = {
        "capsolver/fleet/tasks_used": figures.tasks_used,
        "capsolver/fleet/max_tasks": figures.max_tasks,
        "capsolver/fleet/calls_in_flight": figures.calls_in_flight,
        "capsolver/fleet/cached_answers": figures.cached_answers,
        "capsolver/fleet/paused_for": round(figures.paused_for, 1),
    }
    if figures.budget_resets_in is not None:
        stats["capsolver/fleet/budget_resets_in"] = round(figures.budget_resets_in)
    return stats


class FleetWatch:
    """Opens and closes the crawl's state; in fleet mode, brings fleet-wide stops and
    figures to this process."""

    def __init__(
        self,
        state: SolvingState,
        on_stop: Callable[[str], None],
        stats: StatsCollector,
        config: SolverSettings,
    ) -> None:
        self.state = state
        #: Called with the close reason when another process stopped solving for the fleet.
        self._on_stop = on_stop
        self._stats = stats
        self._config = config
        self._loop: LoopingCall | None = None
        self._ticks = 0
        progress = config.logstats_interval or FIGURES_INTERVAL
        self._tick = min(CHECK_INTERVAL, progress)
        self._figures_every = max(1, round(min(FIGURES_INTERVAL, progress) / self._tick))

    def start(self) -> None:
        # Not awaited: pages crawl meanwhile, and solves wait for the state on their own.
        deferred_from_coro(self._open())

    async def _open(self) -> None:
        try:
            await self.state.open()
        except CaptchaFleetError as exc:
            logger.error(
                "%s Solves wait and retry (CAPSOLVER_MAX_RETRIES), then fail with "
                "CaptchaFleetError, until Redis answers.",
                exc,
            )
        else:
            if self._config.redis_url is not None:
                logger.info("Fleet mode: %r, sharing its solving state", self.state)
        if self._config.redis_url is not None and self._loop is None:
            self._loop = LoopingCall(lambda: deferred_from_coro(self._check()))
            self._loop.start(self._tick, now=False)

    async def _check(self) -> None:
        self._ticks += 1
        try:
            reason = await self.state.stop_reason()
            if reason is not None:
                self._on_stop(reason)
            if self._ticks % self._figures_every == 1 % self._figures_every:
                await self._record_figures()
        except CaptchaFleetError as exc:
            # The solves say it where it matters; once a tick would be noise.
            logger.debug("Could not look at the fleet: %s", exc)

    async def _record_figures(self) -> None:
        for name, value in figures_stats(await self.state.figures()).items():
            self._stats.set_value(name, value)

    async def stop(self) -> None:
        """Record the fleet's last figures and close the state (the crawl has ended)."""
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        if self._config.redis_url is not None:
            try:
                await self._record_figures()
            except CaptchaFleetError as exc:
                logger.warning("Could not read the fleet's figures at the end: %s", exc)
        await self.state.close()
