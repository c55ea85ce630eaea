"""The ``fleet status`` and ``fleet reset-budget`` commands: what a fleet shares in Redis,
read or reset from outside any crawl.

``status`` prints, for one fleet or every fleet in that Redis, the budget used against its
limit and when the period resets, the calls in flight for the account, a pause or stop
under way, and the cached answers. ``reset-budget`` starts the budget's count again.

They run outside any crawl, so they use redis-py's ``redis.asyncio`` on an asyncio loop of
their own (``asyncio.run``), with the same client a crawl's fleet mode builds.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from ..checks import check_redis_url
from ..state.base import StateFigures
from ..state.redis_connection import UNAVAILABLE, RedisTarget, close_client
from ..state.redis_scripts import FIGURES, RESET_BUDGET, FleetKeys, figures_keys
from ..state.redis_state import figures_from

T = TypeVar("T")


class FleetCommandError(Exception):
    """A failure to report in one line."""


@dataclass(frozen=True)
class FleetRedis:
    """The Redis a command reads: where it is (for messages) and a client to it."""

    target: RedisTarget
    client: Any

    @property
    def prefix(self) -> str:
        return self.target.key_prefix


async def fleet_names(redis: FleetRedis, key: str = ":meta") -> list[str]:
    """Every fleet that has used this Redis (that has written its ``fleet:<name><key>``)."""
    start = f"{redis.prefix}fleet:"
    names: set[str] = set()
    async for found in redis.client.scan_iter(match=f"{start}*{key}", count=1000):
        names.add(found.decode()[len(start) : -len(key)])
    return sorted(names)


async def fleet_keys(redis: FleetRedis, fleet: str) -> FleetKeys:
    account = await redis.client.hget(f"{redis.prefix}fleet:{fleet}:meta", "account")
    if account is None:
        known = ", ".join(await fleet_names(redis)) or "none"
        raise FleetCommandError(f"No fleet named {fleet!r} in this Redis (fleets: {known}).")
    return FleetKeys(fleet, account.decode(), redis.prefix)


async def fleet_figures(redis: FleetRedis, fleet: str) -> StateFigures:
    """The figures of ``fleet``, as ``fleet status`` shows them."""
    return await read_figures(redis, await fleet_keys(redis, fleet))


async def read_figures(redis: FleetRedis, keys: FleetKeys) -> StateFigures:
    raw = await FIGURES.run(redis.client, figures_keys(keys), [-1])  # -1: the period last used
    return figures_from(raw, 0, {"fleet": keys.fleet, "account": keys.account})


def _duration(seconds: float) -> str:
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes:02d}m"
    return f"{minutes}m {seconds:02d}s" if minutes else f"{seconds}s"


def describe(figures: StateFigures, server_time: float, period: float) -> list[str]:
    """The lines ``fleet status`` prints for one fleet."""
    limit = f"of {figures.max_tasks}" if figures.max_tasks else "(no limit)"
    budget = f"{figures.tasks_used} {limit} API tasks used"
    if figures.budget_resets_in is not None:
        resets_at = time.strftime(
            "%Y-%m-%d %H:%M:%S UTC", time.gmtime(server_time + figures.budget_resets_in)
        )
        budget += (
            f"; period {period:g} s, resets in {_duration(figures.budget_resets_in)} "
            f"(at {resets_at})"
        )
    else:
        budget += "; no period: until `fleet reset-budget`"
    paused = f"for {_duration(figures.paused_for)} more" if figures.paused_for else "no"
    return [
        f"Fleet {figures.extra['fleet']}",
        f"  budget:          {budget}",
        f"  calls in flight: {figures.calls_in_flight} (account {figures.extra['account'][:8]})",
        f"  paused:          {paused}",
        f"  stopped:         {figures.stopped or 'no'}",
        f"  cached answers:  {figures.cached_answers}",
    ]


async def status(redis: FleetRedis, fleet: str | None) -> str:
    names = [fleet] if fleet else await fleet_names(redis)
    if not names:
        return f"No fleet has used this Redis ({redis.target.describe()}) yet."
    seconds, micros = await redis.client.time()
    server_time = int(seconds) + int(micros) / 1e6
    lines = []
    for name in names:
        keys = await fleet_keys(redis, name)
        figures = await read_figures(redis, keys)
        period_ms = await redis.client.hget(keys.budget, "period_ms")
        lines += describe(figures, server_time, int(period_ms or 0) / 1000)
    return "\n".join(lines)


async def reset_budget(redis: FleetRedis, fleet: str) -> str:
    keys = await fleet_keys(redis, fleet)
    used = await RESET_BUDGET.run(redis.client, [keys.budget], [])
    return f"Budget of fleet {fleet} reset ({used} API tasks were counted in this period)."


def run(
    url: str,
    command: Callable[[FleetRedis], Awaitable[T]],
    *,
    sentinels: tuple[tuple[str, int], ...] = (),
    cluster: bool = False,
) -> T:
    """Run ``command`` against the Redis at ``url`` (a master through ``sentinels``, or a
    node of a ``cluster``) on an asyncio loop of its own; what it returned."""
    try:
        target = RedisTarget(check_redis_url("--redis-url", url), sentinels, cluster)
    except ValueError as exc:
        raise FleetCommandError(str(exc)) from None

    async def main() -> T:
        client = target.client()
        try:
            return await command(FleetRedis(target, client))
        except UNAVAILABLE as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise FleetCommandError(f"Redis at {target.describe()}: {reason}") from None
        finally:
            await close_client(client)

    return asyncio.run(main())
