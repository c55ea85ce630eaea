"""The readers of a crawl's solver, built from its settings: with ``CAPSOLVER_LOCAL_OCR``
the local reader first, then always the cloud reader (CapSolver, the one provider today).
The one place where ``CAPSOLVER_*`` settings become the engines' own small objects."""

from __future__ import annotations

from collections.abc import Callable

from scrapy.statscollectors import StatsCollector

from ..api.capsolver import CapSolver
from ..api.client import ApiClient
from ..api.image_task import TaskRunner
from ..api.provider import Provider
from ..engines.base import ImageReader
from ..engines.cloud.account import Account, AccountLimits
from ..engines.cloud.reader import CloudReader
from ..engines.cloud.retry import Retrier, RetryPolicy
from ..engines.local import require_ddddocr
from ..reactor import installed_reactor
from ..settings import SolverSettings
from ..state.base import SolvingState


def crawl_readers(
    config: SolverSettings,
    stats: StatsCollector,
    state: SolvingState,
    on_fatal: Callable[[str], None],
) -> tuple[list[ImageReader], CloudReader]:
    """The readers in the order the solver asks them, and the cloud reader among them (its
    account and balance are the crawl's too)."""
    cloud = cloud_reader(config, stats, state, on_fatal)
    if not config.local_ocr:
        return [cloud], cloud
    return [local_reader(config, stats), cloud], cloud


def cloud_reader(
    config: SolverSettings,
    stats: StatsCollector,
    state: SolvingState,
    on_fatal: Callable[[str], None],
) -> CloudReader:
    """The cloud reader, with its API client, account guard and retries, as the settings
    say; ``on_fatal`` closes the crawl with a close reason."""
    provider = provider_for(config)
    api = ApiClient(
        provider.errors, config.api_url, config.api_key, config.timeout, config.concurrency
    )
    limits = AccountLimits(
        concurrency=config.concurrency,
        has_key=config.api_key is not None,
        max_tasks=config.max_tasks,
        block_window=config.block_window,
    )
    account = Account(limits, state, stats, on_fatal, installed_reactor())
    policy = RetryPolicy(config.max_retries, config.backoff_base, config.backoff_max)
    runner = TaskRunner(
        provider,
        api,
        account.sleep,
        poll_interval=config.poll_interval,
        poll_max=config.backoff_max,
        poll_timeout=config.timeout,
        on_poll=lambda: stats.inc_value("capsolver/polls"),
    )
    retrier = Retrier(policy, stats, account.sleep)
    return CloudReader(
        provider, api, runner, account, retrier, state, stats, report_wrong=config.report_wrong
    )


def provider_for(config: SolverSettings) -> Provider:
    """The service the cloud reader pays, as the settings say."""
    return CapSolver(app_id=config.app_id)


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
