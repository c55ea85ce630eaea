"""The readers of a crawl's solver, built from its settings: with ``CAPSOLVER_LOCAL_OCR``
the local reader first, then always the cloud reader (CapSolver)."""

from __future__ import annotations

from collections.abc import Callable

from scrapy.statscollectors import StatsCollector

from ..engines.base import ImageReader
from ..engines.cloud import CloudReader
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
    cloud = CloudReader.from_settings(config, stats, state, on_fatal)
    if not config.local_ocr:
        return [cloud], cloud
    return [local_reader(config, stats), cloud], cloud


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
