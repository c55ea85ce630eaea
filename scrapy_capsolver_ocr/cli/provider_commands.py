"""The ``providers`` command: each solving service a crawl would use, in order of preference,
with its URL, its key masked, its circuit breaker and its balance.

The services are those of the Scrapy project's settings when run inside a project (as
``scrapy crawl`` would read them), else CapSolver alone with ``CAPSOLVER_API_KEY`` and
``CAPSOLVER_API_URL`` from the environment, as ``balance`` reads them. Breakers are read
from the fleet's Redis (``--redis-url``, else ``$CAPSOLVER_REDIS_URL``, else the project's
``CAPSOLVER_REDIS_URL``) without taking a probe; without Redis each crawl keeps its own in
memory and nothing outside it can see them. Balances go through the path ``balance`` uses,
one service at a time; a failure is that service's line, never the command's end.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any

from scrapy.exceptions import NotConfigured
from scrapy.settings import BaseSettings, Settings

from ..checks import redact_url
from ..settings import DEFAULT_API_URL, SolverSettings
from . import api_commands

#: Where the services came from, as the output says it.
FROM_PROJECT = "project"
FROM_ENVIRONMENT = "environment"


@dataclass(frozen=True)
class Breaker:
    """One service's breaker in one fleet: ``healthy``, ``cooling down`` (for ``seconds``
    more) or ``probing`` (the cool-down is over: the next task tries it again)."""

    fleet: str
    state: str
    seconds: float = 0.0

    @classmethod
    def from_open_for(cls, fleet: str, open_for: float | None) -> Breaker:
        """From what :meth:`~scrapy_capsolver_ocr.state.base.SolvingState.route_open_for`
        answers."""
        if open_for is None:
            return cls(fleet, "healthy")
        if open_for > 0:
            return cls(fleet, "cooling down", round(open_for, 1))
        return cls(fleet, "probing")

    def describe(self) -> str:
        state = f"cooling down for {self.seconds:g} s" if self.seconds else self.state
        return f"{state} (fleet {self.fleet})"


@dataclass
class ServiceStatus:
    """What ``providers`` shows of one service."""

    name: str
    url: str
    key: str
    balance: float | None = None
    balance_error: str | None = None
    breakers: list[Breaker] = field(default_factory=list)


def configured(env: dict[str, str] | None = None) -> tuple[SolverSettings, str]:
    """The crawl settings the command describes, and where they came from."""
    from scrapy.utils.project import get_project_settings, inside_project

    env = dict(os.environ) if env is None else env
    settings: BaseSettings
    if inside_project():
        settings, source = get_project_settings(), FROM_PROJECT
    else:
        settings = Settings(
            {
                "CAPSOLVER_API_KEY": env.get("CAPSOLVER_API_KEY"),
                "CAPSOLVER_API_URL": env.get("CAPSOLVER_API_URL") or DEFAULT_API_URL,
            }
        )
        source = FROM_ENVIRONMENT
    try:
        return SolverSettings.from_settings(settings), source
    except ValueError as exc:
        raise api_commands.CommandError(str(exc)) from None
    except NotConfigured as exc:  # CAPSOLVER_ENABLED is False
        raise api_commands.CommandError(f"the plugin is off in this project: {exc}") from None


def statuses(config: SolverSettings, timeout: float) -> list[ServiceStatus]:
    """Each service of ``config`` in order, with its balance (or why it has none)."""
    balances = api_commands.each_balance(config, timeout)
    services = []
    for entry, balance in zip(config.providers, balances, strict=True):
        service = ServiceStatus(
            entry.name,
            redact_url(entry.api_url),
            str(entry.api_key) if entry.api_key is not None else "none",
        )
        if isinstance(balance, float):
            service.balance = balance
        else:
            service.balance_error = balance
        services.append(service)
    return services


async def read_breakers(
    redis: Any, fleet: str | None, names: list[str]
) -> dict[str, list[Breaker]]:
    """Each service's breaker in ``fleet`` (None: every fleet of that Redis), by name.

    ``redis`` is a :class:`~scrapy_capsolver_ocr.cli.fleet_commands.FleetRedis`."""
    from ..state.redis_scripts import ROUTE_OPEN_FOR
    from . import fleet_commands

    fleets = [fleet] if fleet else await fleet_commands.fleet_names(redis)
    found: dict[str, list[Breaker]] = {name: [] for name in names}
    for each in fleets:
        keys = await fleet_commands.fleet_keys(redis, each)
        for name in names:
            # The script RedisState.route_open_for runs: read-only, no probe taken.
            left = int(await ROUTE_OPEN_FOR.run(redis.client, [keys.breaker(name)], []))
            found[name].append(Breaker.from_open_for(each, None if left < 0 else left / 1000))
    return found


def text(services: list[ServiceStatus], source: str, breakers_note: str) -> str:
    """The lines ``providers`` prints."""
    where = (
        "the project's settings"
        if source == FROM_PROJECT
        else "CAPSOLVER_API_KEY and CAPSOLVER_API_URL"
    )
    lines = [f"Solving services from {where}, in order of preference:"]
    for number, service in enumerate(services, 1):
        if service.balance is not None:
            balance = f"{service.balance:.4f} USD"
        else:
            balance = f"unavailable: {service.balance_error}"
        if service.breakers:
            breaker = "; ".join(b.describe() for b in service.breakers)
        else:
            breaker = breakers_note
        lines += [
            f"{number}. {service.name}",
            f"   url:     {service.url}",
            f"   key:     {service.key}",
            f"   breaker: {breaker}",
            f"   balance: {balance}",
        ]
    return "\n".join(lines)


def as_json(services: list[ServiceStatus], source: str, breakers_note: str | None) -> str:
    """The ``--json`` output: ``breakers`` is null for each service when they cannot be read
    (``breakers_note`` says why)."""
    return json.dumps(
        {
            "source": source,
            "breakers_note": breakers_note,
            "providers": [
                {
                    "name": s.name,
                    "url": s.url,
                    "key": s.key,
                    "breakers": None
                    if breakers_note
                    else [
                        {"fleet": b.fleet, "state": b.state, "cooling_down_for": b.seconds}
                        for b in s.breakers
                    ],
                    "balance": s.balance,
                    "balance_error": s.balance_error,
                }
                for s in services
            ],
        },
        indent=2,
    )
