"""A periodic progress line, like Scrapy's LogStats, for people watching a long crawl; in
fleet mode it also shows the fleet's figures (from the ``capsolver/fleet/*`` stats)."""

from __future__ import annotations

import logging

from scrapy.statscollectors import StatsCollector
from twisted.internet.task import LoopingCall

from ..engines.cloud.account import Account
from ..solving.solver import CaptchaSolver

logger = logging.getLogger(__name__)


class SolveProgress:
    """Every ``interval`` seconds, logs captchas solved, the solve rate, failed, in flight
    (and how many of those are at the API) and API tasks, and with local-first how many
    were read locally, for free; at the end of the crawl, one line of totals. Silent until
    the crawl asks for its first solve, so crawls that meet no captcha get no noise."""

    def __init__(
        self, solver: CaptchaSolver, account: Account, stats: StatsCollector, interval: float
    ) -> None:
        self._solver = solver
        self._account = account
        self._stats = stats
        self._interval = interval
        self._last_solved = 0
        self._loop: LoopingCall | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._loop = LoopingCall(self.log)
            done = self._loop.start(self._interval, now=False)
            # A failing log call stops the loop; say why instead of an unhandled error.
            done.addErrback(
                lambda failure: logger.error(
                    "Captcha progress lines stopped: %s", failure.getErrorMessage()
                )
            )

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self.log_totals()

    def log_totals(self) -> None:
        if not self._stats.get_value("capsolver/requested", 0):
            return
        solved = self._stats.get_value("capsolver/solved", 0)
        free = self._stats.get_value("capsolver/local/solved", 0)
        logger.info(
            "Captchas solved in this crawl: %d, %d of them read locally for free (%.0f %%); "
            "%d failed; %d paid API tasks%s",
            solved,
            free,
            100.0 * free / solved if solved else 0.0,
            self._stats.get_value("capsolver/failed", 0),
            self._account.calls_made,
            providers_line(self._stats),
        )

    def log(self) -> None:
        if not self._stats.get_value("capsolver/requested", 0):
            return
        solved = self._stats.get_value("capsolver/solved", 0)
        rate = (solved - self._last_solved) * 60.0 / self._interval
        self._last_solved = solved
        fleet = ""
        if self._stats.get_value("capsolver/fleet/tasks_used") is not None:
            fleet = f"; fleet: {fleet_line(self._stats)}"
        logger.info(
            "Captchas: %d solved (at %.1f/min, %d of them free, read locally), %d failed, "
            "%d in flight (%d at the API), %d API tasks%s%s",
            solved,
            rate,
            self._stats.get_value("capsolver/local/solved", 0),
            self._stats.get_value("capsolver/failed", 0),
            self._solver.in_flight,
            self._account.calls_in_flight,
            self._account.calls_made,
            providers_line(self._stats),
            fleet,
        )


def fleet_line(stats: StatsCollector) -> str:
    """The fleet's figures in words: API tasks of all processes against the budget, calls
    in flight for the account, cached answers, a pause under way."""
    limit = stats.get_value("capsolver/fleet/max_tasks", 0)
    line = (
        f"{stats.get_value('capsolver/fleet/tasks_used', 0)} API tasks"
        f"{f' of {limit}' if limit else ''} by all processes, "
        f"{stats.get_value('capsolver/fleet/calls_in_flight', 0)} in flight for the account, "
        f"{stats.get_value('capsolver/fleet/cached_answers', 0)} cached answers"
    )
    paused = stats.get_value("capsolver/fleet/paused_for", 0)
    return line + (f", paused for {paused:g} s more" if paused else "")


PROVIDER_PREFIX = "capsolver/provider/"


def providers_line(stats: StatsCollector) -> str:
    """With several services (``CAPSOLVER_PROVIDERS``): the API tasks of each and its
    outages; empty with one service. (What each cost is in its stats, read once the
    balances are read again after this last line.)"""
    names = sorted(
        {
            name.removeprefix(PROVIDER_PREFIX).partition("/")[0]
            for name in stats.get_stats()
            if name.startswith(PROVIDER_PREFIX)
        }
    )
    if not names:
        return ""
    parts = []
    for name in names:
        stat = f"{PROVIDER_PREFIX}{name}/"
        part = f"{name} {stats.get_value(stat + 'task_count', 0)}"
        outages = stats.get_value(stat + "breaker_opened", 0)
        if outages:
            part += f" ({outages} outage{'s' if outages != 1 else ''})"
        parts.append(part)
    return " (" + "; ".join(parts) + ")"
