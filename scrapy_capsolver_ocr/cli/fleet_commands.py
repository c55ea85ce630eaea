"""The ``fleet status`` and ``fleet reset-budget`` commands: what a fleet shares in Redis,
read or reset from outside any crawl.

``status`` prints, for one fleet or every fleet in that Redis, the budget used against its
limit and when the period resets, the calls in flight for the account, a pause or stop
under way, and the cached answers. ``reset-budget`` starts the budget's count again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from ..checks import check_redis_url
from ..state.base import StateFigures
from ..state.redis_client import RedisAddress, RedisClient, RedisReplyError, RedisUnavailable
from ..state.redis_scripts import FIGURES, PREFIX, RESET_BUDGET, FleetKeys, figures_keys
from ..state.redis_state import figures_from

T = TypeVar("T")


class FleetCommandError(Exception):
    """A failure to report in one line."""


async def fleet_names(client: RedisClient) -> list[str]:
    """Every fleet that has used this Redis."""
    names: set[str] = set()
    cursor = b"0"
    pattern = f"{PREFIX}fleet:*:meta"
    while True:
        cursor, keys = await client.call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
        names.update(key.decode()[len(f"{PREFIX}fleet:") : -len(":meta")] for key in keys)
        if cursor == b"0":
            return sorted(names)


async def fleet_keys(client: RedisClient, fleet: str) -> FleetKeys:
    account = await client.call("HGET", f"{PREFIX}fleet:{fleet}:meta", "account")
    if account is None:
        known = ", ".join(await fleet_names(client)) or "none"
        raise FleetCommandError(f"No fleet named {fleet!r} in this Redis (fleets: {known}).")
    return FleetKeys(fleet, account.decode())


async def fleet_figures(client: RedisClient, fleet: str) -> StateFigures:
    """The figures of ``fleet``, as ``fleet status`` shows them."""
    return await read_figures(client, await fleet_keys(client, fleet))


async def read_figures(client: RedisClient, keys: FleetKeys) -> StateFigures:
    raw = await FIGURES.run(client, figures_keys(keys), [-1])  # -1: the period last used
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


async def status(client: RedisClient, fleet: str | None) -> str:
    names = [fleet] if fleet else await fleet_names(client)
    if not names:
        return f"No fleet has used this Redis ({client.address.safe_url}) yet."
    seconds, micros = await client.call("TIME")
    server_time = int(seconds) + int(micros) / 1e6
    lines = []
    for name in names:
        keys = await fleet_keys(client, name)
        figures = await read_figures(client, keys)
        period_ms = await client.call("HGET", keys.budget, "period_ms")
        lines += describe(figures, server_time, int(period_ms or 0) / 1000)
    return "\n".join(lines)


async def reset_budget(client: RedisClient, fleet: str) -> str:
    keys = await fleet_keys(client, fleet)
    used = await RESET_BUDGET.run(client, [keys.budget], [])
    return f"Budget of fleet {fleet} reset ({used} API tasks were counted in this period)."


def run(url: str, command: Callable[[RedisClient], Awaitable[T]]) -> T:
    """Run ``command`` against the Redis at ``url`` on a reactor (once per process: a
    reactor does not start twice); what it returned."""
    try:
        address = RedisAddress.from_url(check_redis_url("--redis-url", url))
    except ValueError as exc:
        raise FleetCommandError(str(exc)) from None
    from twisted.internet.task import react

    output: list[T] = []
    failure: list[str] = []

    async def main(reactor: Any) -> None:
        client = RedisClient(address, reactor)
        try:
            output.append(await command(client))
        except (RedisUnavailable, RedisReplyError) as exc:
            failure.append(f"Redis at {address.safe_url}: {exc}")
        except FleetCommandError as exc:
            failure.append(str(exc))
        finally:
            client.close()

    with contextlib.suppress(SystemExit):  # react() always ends this way
        react(main)
    if failure:
        raise FleetCommandError(failure[0])
    return output[0]
