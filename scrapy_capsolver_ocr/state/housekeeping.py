"""Housekeeping in the solving state that must not fail a solve, and the error stat it
counts when it does fail."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from scrapy.statscollectors import StatsCollector

from ..errors import CaptchaApiError, CaptchaFleetError

logger = logging.getLogger(__name__)


def count_error(stats: StatsCollector, exc: CaptchaApiError) -> None:
    stats.inc_value(f"capsolver/error/{exc.error_code or type(exc).__name__}")


async def quietly(stats: StatsCollector, operation: Awaitable[None], what: str) -> None:
    """Housekeeping in the fleet state that must not fail a solve: a lost claim or permit
    lapses on its own."""
    try:
        await operation
    except CaptchaFleetError as exc:
        count_error(stats, exc)
        logger.warning("Could not %s in the fleet state: %s", what, exc)
