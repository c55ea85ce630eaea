"""A periodic progress line, like Scrapy's LogStats, for people watching a long crawl."""

from __future__ import annotations

import logging

from scrapy.statscollectors import StatsCollector
from twisted.internet.task import LoopingCall

from .solver import CaptchaSolver

logger = logging.getLogger(__name__)


class SolveProgress:
    """Logs captchas solved, failed, in flight and the solve rate every ``interval`` s."""

    def __init__(self, solver: CaptchaSolver, stats: StatsCollector, interval: float) -> None:
        self._solver = solver
        self._stats = stats
        self._interval = interval
        self._last_solved = 0
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._loop = LoopingCall(self.log)
            self._loop.start(self._interval, now=False)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def log(self) -> None:
        solved = self._stats.get_value("capsolver/solved", 0)
        rate = (solved - self._last_solved) * 60.0 / self._interval
        self._last_solved = solved
        logger.info(
            "Captchas: %d solved (at %.1f/min), %d failed, %d in flight, %d API tasks",
            solved,
            rate,
            self._stats.get_value("capsolver/failed", 0),
            self._solver.in_flight,
            self._solver.tasks_sent,
        )
