"""The circuit breaker of each solving service, kept in the crawl's state.

A breaker is closed while its service answers. An outage opens it for
``CAPSOLVER_FAILOVER_COOLDOWN`` seconds, during which tasks go to the next service; then it
is half-open: one task (the probe) goes to it; an answer closes it ("back on <service>",
logged once), another outage opens it again. The breakers live in the
:class:`~scrapy_capsolver_ocr.state.base.SolvingState`, so in fleet mode one process noticing
an outage moves every process of the fleet, and only one process of the fleet probes.
"""

from __future__ import annotations

import logging

from scrapy.statscollectors import StatsCollector

from ...errors import CaptchaFleetError
from ...state.base import RouteLeave, SolvingState
from .routes import Route

logger = logging.getLogger(__name__)


def provider_stat(route: Route, name: str) -> str:
    """The stat ``name`` of one service: ``capsolver/provider/<service>/<name>``."""
    return f"capsolver/provider/{route.name}/{name}"


class Breakers:
    """Opens, probes and closes the services' breakers in ``state``; counts and logs."""

    def __init__(
        self, state: SolvingState, stats: StatsCollector, cooldown: float, probe_lease: float
    ) -> None:
        self.cooldown = cooldown
        self._state = state
        self._stats = stats
        self._probe_lease = probe_lease

    def __repr__(self) -> str:
        return f"Breakers(cooldown={self.cooldown:g})"

    async def leave(self, route: Route) -> RouteLeave:
        """May a task go to ``route``: closed, open, or probe (this task tries it again)."""
        return await self._state.route_leave(route.name, self._probe_lease)

    async def open(self, route: Route, reason: Exception, cooldown: float | None = None) -> None:
        """``route`` had an outage (``reason``): tasks go elsewhere for the cool-down."""
        seconds = self.cooldown if cooldown is None else cooldown
        try:
            opening = await self._state.route_failed(route.name, seconds)
        except CaptchaFleetError as exc:
            logger.warning(
                "Could not open the breaker of %s in the fleet state: %s", route.name, exc
            )
            return
        if opening:
            self._stats.inc_value(provider_stat(route, "breaker_opened"))
            logger.warning(
                "Captcha tasks move off %s for %g s (then one task tries it again): %s",
                route.name,
                seconds,
                reason,
            )

    async def close(self, route: Route) -> None:
        """A probe of ``route`` was answered: tasks go to it again."""
        try:
            closing = await self._state.route_recovered(route.name)
        except CaptchaFleetError as exc:
            logger.warning(
                "Could not close the breaker of %s in the fleet state: %s", route.name, exc
            )
            return
        if closing:
            self._stats.inc_value(provider_stat(route, "breaker_closed"))
            logger.info("Captcha tasks are back on %s", route.name)
