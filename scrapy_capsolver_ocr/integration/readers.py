"""The readers of a crawl's solver, built from its settings: with ``CAPSOLVER_LEARN`` the
learnt reader first, with ``CAPSOLVER_LOCAL_OCR`` the local reader next, then always the
cloud reader (the services of ``CAPSOLVER_PROVIDERS``, CapSolver alone by default). The one
place where ``CAPSOLVER_*`` settings become the engines' own small objects."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from scrapy.statscollectors import StatsCollector
from scrapy.utils.project import data_path

from ..api.client import ApiClient
from ..api.image_task import TaskRunner
from ..api.provider import Provider, TaskOptions
from ..api.registry import PROVIDER_KINDS
from ..engines.base import ImageReader
from ..engines.cloud.account import Account, AccountLimits
from ..engines.cloud.breaker import Breakers
from ..engines.cloud.failover import Failover, FailoverPolicy
from ..engines.cloud.reader import CloudReader
from ..engines.cloud.retry import Retrier, RetryPolicy
from ..engines.cloud.routes import OneRoute, Route, Routes
from ..engines.local import require_ddddocr
from ..reactor import installed_reactor
from ..settings import ProviderEntry, SolverSettings
from ..state.base import SolvingState
from ..state.fleet import LEASE_MARGIN

logger = logging.getLogger(__name__)


def crawl_readers(
    config: SolverSettings,
    stats: StatsCollector,
    state: SolvingState,
    on_fatal: Callable[[str], None],
) -> tuple[list[ImageReader], CloudReader]:
    """The readers in the order the solver asks them, and the cloud reader among them (its
    account and balance are the crawl's too)."""
    cloud = cloud_reader(config, stats, state, on_fatal)
    readers: list[ImageReader] = [learnt_reader(config, stats, state)] if config.learn else []
    if config.local_ocr:
        readers.append(local_reader(config, stats))
    return [*readers, cloud], cloud


def cloud_reader(
    config: SolverSettings,
    stats: StatsCollector,
    state: SolvingState,
    on_fatal: Callable[[str], None],
) -> CloudReader:
    """The cloud reader, with its services' API clients, account guard and retries, as the
    settings say; ``on_fatal`` closes the crawl with a close reason."""
    limits = AccountLimits(
        concurrency=config.concurrency,
        has_key=config.api_key is not None,
        max_tasks=config.max_tasks,
        block_window=config.block_window,
    )
    reactor = installed_reactor()
    account = Account(limits, state, stats, on_fatal, reactor)
    policy = RetryPolicy(config.max_retries, config.backoff_base, config.backoff_max)
    retrier = Retrier(policy, stats, account.sleep)
    routes: Routes
    if len(config.providers) == 1:
        routes = OneRoute(route_for(config, provider_for(config), stats, account), account)
    else:
        every = [
            route_for(config, provider_for(config, entry), stats, account, entry)
            for entry in config.providers
        ]
        breakers = Breakers(
            state, stats, config.failover_cooldown, probe_lease=config.timeout + LEASE_MARGIN
        )
        failover = FailoverPolicy(
            cooldown=config.failover_cooldown,
            no_slot_after=config.no_slot_failover_after,
            answer_errors=config.failover_answer_errors,
            unanswered=config.failover_unanswered,
            block_pause=config.block_pause,
        )
        routes = Failover(every, account, breakers, state, stats, failover, reactor)
    return CloudReader(routes, account, retrier, state, stats, report_wrong=config.report_wrong)


def route_for(
    config: SolverSettings,
    provider: Provider,
    stats: StatsCollector,
    account: Account,
    entry: ProviderEntry | None = None,
) -> Route:
    """One service's route: its provider, API client and task runner."""
    entry = entry or config.providers[0]
    unsupported = provider.unsupported(TaskOptions(config.module, config.score))
    if unsupported:
        logger.warning(
            "%s cannot honour %s (CAPSOLVER_* settings): its tasks are sent without them",
            entry.name,
            ", ".join(unsupported),
        )
    api = ApiClient(
        provider.errors,
        entry.api_url,
        entry.api_key,
        config.timeout,
        entry.concurrency or config.concurrency,
    )
    runner = TaskRunner(
        provider,
        api,
        account.sleep,
        poll_interval=config.poll_interval,
        poll_max=config.backoff_max,
        poll_timeout=config.timeout,
        on_poll=lambda: stats.inc_value("capsolver/polls"),
    )
    return Route(entry.name, provider, api, runner, entry.concurrency, entry.fleet_concurrency)


def provider_for(config: SolverSettings, entry: ProviderEntry | None = None) -> Provider:
    """The service the cloud reader pays, as the settings say: ``entry`` of
    ``CAPSOLVER_PROVIDERS``, by default the first (CapSolver when the setting is unset)."""
    entry = entry or config.providers[0]
    return PROVIDER_KINDS[entry.name].build(entry.options, config.app_id)


def local_reader(config: SolverSettings, stats: StatsCollector) -> ImageReader:
    """The reader on this machine that ``CAPSOLVER_LOCAL_*`` describe."""
    require_ddddocr("CAPSOLVER_LOCAL_OCR = True")
    # numpy and the engine: imported only when local reading is on
    from ..engines.local.reader import LocalOptions, LocalReader

    options = LocalOptions(
        workers=config.local_workers,
        min_confidence=config.local_min_confidence,
        length=config.local_length,
        charset=config.local_charset,
        only_reader=config.api_key is None,
    )
    return LocalReader(options, stats, installed_reactor())


def learnt_reader(
    config: SolverSettings, stats: StatsCollector, state: SolvingState
) -> ImageReader:
    """The reader of each site's learnt model (``CAPSOLVER_LEARN_*``): labels and models on
    disk under the learn directory, or in the fleet's Redis when the crawl has one."""
    from ..engines.learnt import require_learn
    from ..engines.learnt.labels import DiskLabelStore
    from ..engines.learnt.reader import LearntReader
    from ..engines.learnt.shelf import DiskShelf

    require_learn("CAPSOLVER_LEARN = True", ("numpy", "onnxruntime", "autograd", "onnx"))

    reactor = installed_reactor()
    directory = Path(config.learn_dir or data_path("capsolver-learn", createdir=True))
    workdir = directory / "training"
    if config.redis_url is None:
        return LearntReader(
            DiskLabelStore(directory / "labels", config.learn_max_bytes, reactor),
            DiskShelf(directory / "models", reactor),
            stats,
            reactor,
            min_labels=config.learn_min_labels,
            workdir=workdir,
        )
    from ..engines.learnt.labels import LearnKeys, RedisLabelStore
    from ..engines.learnt.shelf import RedisShelf
    from ..state.redis_connection import close_client
    from ..state.redis_state import RedisState

    assert isinstance(state, RedisState)
    client = state.target.client()
    keys = LearnKeys(state.keys.fleet_prefix)

    async def close() -> None:
        await close_client(client)

    return LearntReader(
        RedisLabelStore(client, keys, config.learn_max_bytes),
        RedisShelf(client, keys, directory / "fleet-models", reactor),
        stats,
        reactor,
        min_labels=config.learn_min_labels,
        workdir=workdir,
        close_store=close,
    )
