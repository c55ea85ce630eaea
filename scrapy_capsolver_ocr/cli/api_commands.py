"""The ``solve`` and ``balance`` commands: one API call each, outside any crawl.

They go through the same :class:`~scrapy_capsolver_ocr.CaptchaSolver` a crawl uses (image
checks, retries, error classification), run on a Twisted reactor with
:func:`twisted.internet.task.react`, and turn every failure into a one-line message.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from scrapy import Spider
from scrapy.crawler import Crawler
from scrapy.settings import Settings
from scrapy.statscollectors import MemoryStatsCollector

from ..api.provider import Provider, TaskOptions
from ..api.registry import PROVIDER_KINDS
from ..engines.cloud.reader import CloudReader
from ..errors import CaptchaSolveError
from ..integration import readers
from ..settings import SolverSettings
from ..solving.solver import CaptchaSolver
from ..state.base import MemoryState
from ..state.fleet import state_limits

#: What a command does with the solver and its cloud reader: returns the line to print.
Command = Callable[[CaptchaSolver, CloudReader], Awaitable[str]]


class CommandError(Exception):
    """A failure to report in one line, with no traceback."""


def command_provider(name: str) -> Provider:
    """The provider a command talks to, by its name in the registry (without options)."""
    return PROVIDER_KINDS[name].build({}, None)


def solver_settings(
    api_url: str, timeout: float, retries: int, provider: str = "capsolver"
) -> SolverSettings:
    """The solver's settings for one command; the key comes from ``provider``'s own
    environment variable (``CAPSOLVER_API_KEY``, ``ANTICAPTCHA_API_KEY``, ...), never from
    another service's."""
    kind = PROVIDER_KINDS[provider]
    key = os.environ.get(kind.key_variable)
    if not key:
        service = command_provider(provider).name
        raise CommandError(
            f"No {service} API key: set the {kind.key_variable} environment variable."
        )
    # Named as a crawl names it, so the reader is built as a crawl's: CapSolver alone by its
    # own settings, another service as the one entry of CAPSOLVER_PROVIDERS.
    named: dict[str, Any] = (
        {"CAPSOLVER_API_KEY": key, "CAPSOLVER_API_URL": api_url}
        if provider == "capsolver"
        else {"CAPSOLVER_PROVIDERS": [{"name": provider, "api_key": key, "api_url": api_url}]}
    )
    settings = Settings(
        {
            **named,
            "CAPSOLVER_TIMEOUT": timeout,
            "CAPSOLVER_MAX_RETRIES": retries,
            "CAPSOLVER_CONCURRENCY": 1,
            "CAPSOLVER_CACHE_SIZE": 0,
        }
    )
    try:
        return SolverSettings.from_settings(settings)
    except ValueError as exc:
        raise CommandError(str(exc)) from None


def check_honoured(provider: str, module: str | None, score: float | None) -> None:
    """Refuse ``--module`` or ``--score`` when ``provider`` has no field for them: a command
    never drops an option that changes the answer."""
    service = command_provider(provider)
    dropped = service.unsupported(TaskOptions(module=module, score=score))
    if dropped:
        options = " and ".join(f"--{name}" for name in dropped)
        raise CommandError(f"{service.name} cannot honour {options}; leave it out")


def solve_command(image: bytes, source: str, module: str | None, score: float | None) -> Command:
    async def solve(solver: CaptchaSolver, cloud: CloudReader) -> str:
        solution = await solver.solve(image, module=module, score=score, source=source)
        return solution.text

    return solve


async def balance_command(solver: CaptchaSolver, cloud: CloudReader) -> str:
    return f"{await cloud.balance():.4f}"


def run(name: str, config: SolverSettings, command: Command) -> int:
    """Run ``command`` on a reactor through the service ``config`` names; print its line, or
    ``name: message`` on stderr.

    Returns the exit status: 0, or 1 when the command failed.
    """

    async def main(reactor: Any) -> None:
        try:
            line = await _through_solver(config, command)
        # ValueError: an option the solver refused.
        except (CaptchaSolveError, ValueError) as exc:
            raise SystemExit(report_failure(name, str(exc))) from None
        print(line, flush=True)

    return _react(main)


def each_balance(config: SolverSettings, timeout: float) -> list[float | str]:
    """The balance of each service of ``config`` in order, read as ``balance`` reads one
    (each service alone, through the solver a crawl builds), or why it could not be read."""
    balances: list[float | str] = []

    async def main(reactor: Any) -> None:
        for entry in config.providers:
            alone = dataclasses.replace(
                config,
                providers=(entry,),
                api_key=entry.api_key,
                api_url=entry.api_url,
                timeout=timeout,
                max_retries=0,
                concurrency=1,
                cache_size=0,
            )
            try:
                line = await _through_solver(alone, balance_command)
            except (CaptchaSolveError, ValueError) as exc:
                balances.append(" ".join(str(exc).split()))
            else:
                balances.append(float(line))

    _react(main)
    return balances


async def _through_solver(config: SolverSettings, command: Command) -> str:
    # The solver counts into Scrapy stats; a command has no crawl, so a throwaway collector.
    stats = MemoryStatsCollector(Crawler(Spider))
    # One call in one process: nothing to share with a fleet.
    state = MemoryState(state_limits(config))
    cloud = readers.cloud_reader(config, stats, state, on_fatal=lambda reason: None)
    solver = CaptchaSolver(config, stats, [cloud], state)
    try:
        return await command(solver, cloud)
    finally:
        await solver.close()


def _react(main: Callable[[Any], Coroutine[Any, Any, None]]) -> int:
    from twisted.internet.task import react

    try:
        react(main)
    except SystemExit as done:  # react() always ends this way, with main's status
        return done.code if isinstance(done.code, int) else 1
    return 0  # pragma: no cover - react() never returns


def report_failure(name: str, message: str) -> int:
    """Print ``scrapy-capsolver-ocr NAME: message`` as one line on stderr; return the exit
    status of a failed command."""
    print(f"scrapy-capsolver-ocr {name}: {' '.join(message.split())}", file=sys.stderr)
    return 1
