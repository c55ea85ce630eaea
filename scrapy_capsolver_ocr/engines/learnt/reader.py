"""The learnt reader: reads a site's captchas with the model trained on that site's own
accepted answers, and keeps the labels that train it.

First in the chain when ``CAPSOLVER_LEARN`` is on. For a site with a model it reads in a
worker thread and answers when the model's confidence reaches the threshold chosen for it on
held-out labels; otherwise it declines and the next reader (the general local engine, then
the cloud) reads. Every answer a site accepts, whoever read it, becomes a label
(:mod:`.labels`); enough new labels of a site train a new model off the crawl
(:mod:`.trainer`); every process loads a newer published model within seconds
(:mod:`.shelf`). A model whose answers the site refuses too often steps aside until a
retrained one is promoted.
"""

from __future__ import annotations

import logging
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import LoopingCall

from ...solution import LOCAL, CaptchaSolution
from ..base import CaptchaImage
from ..local.formats import site_of
from ..local.workers import WorkerThreads
from .labels import CLOUD, LabelStore, StoredLabel, now
from .labels import LOCAL as LOCAL_SOURCE
from .shelf import ModelShelf
from .trainer import CrawlTrainer, TrainerOptions

if TYPE_CHECKING:
    from .model import LearntModel

logger = logging.getLogger(__name__)

#: :attr:`CaptchaSolution.solver` of the learnt model's answers.
LEARNT = "learnt"
#: Seconds between two looks for newer models on the shelf.
RELOAD_EVERY = 5.0
#: A model steps aside when the site refused more than this many of its last
#: :data:`REFUSAL_WINDOW` answers (3 %).
REFUSAL_WINDOW = 100
MAX_REFUSALS = 3
#: Answered images remembered until the site says whether it accepted them.
MAX_PENDING = 1000
MAX_PENDING_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class _Pending:
    image: bytes
    site: str
    solver: str


@dataclass
class _SiteModel:
    model: LearntModel
    version: int
    #: The site's verdicts on this model's last answers: True for a refusal.
    verdicts: deque[bool]
    aside: bool = False


def _load(path: Path) -> LearntModel:
    from .model import LearntModel

    return LearntModel.load(path)


class LearntReader:
    """Reads with each site's learnt model; stores accepted answers as labels; trains."""

    name = LEARNT
    local = True

    def __init__(
        self,
        labels: LabelStore,
        shelf: ModelShelf,
        stats: StatsCollector,
        reactor: Any,
        *,
        min_labels: int,
        workdir: Path,
        close_store: Any = None,
    ) -> None:
        self.labels = labels
        self.shelf = shelf
        self._stats = stats
        self._reactor = reactor
        self._threads = WorkerThreads(1, reactor, name="capsolver-learnt-reader")
        self.trainer = CrawlTrainer(
            TrainerOptions(min_labels=min_labels, workdir=workdir),
            labels,
            shelf,
            stats,
            reactor,
            on_model=self._published,
        )
        self.models: dict[str, _SiteModel] = {}
        #: Versions that failed to load: not tried again.
        self._bad: set[tuple[str, int]] = set()
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._pending_bytes = 0
        self._background: set[Deferred[Any]] = set()
        self._storing = True
        self._looked = False
        self._reloading = False
        self._look_failed = False
        self._close_store = close_store
        self._reload_loop = LoopingCall(lambda: self._in_background(self.reload()))
        self._reload_loop.clock = reactor
        self._reload_loop.start(RELOAD_EVERY, now=False)

    def __repr__(self) -> str:
        versions = {site: entry.version for site, entry in self.models.items()}
        return f"LearntReader(models={versions!r}, {self.labels!r})"

    # Reading

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution | None:
        if not captcha.local:
            return None
        if not self._looked:
            await self.reload()
        site = site_of(captcha.website_url, captcha.source)
        entry = self.models.get(site)
        if entry is None or entry.aside:
            return None
        try:
            reading = await self._threads.run(entry.model.read, captcha.body)
        except Exception as exc:  # an image the model cannot read: the next reader may
            logger.debug("The learnt model of %s could not read %s: %s", site, captcha.source, exc)
            return None
        text = reading.text
        if not text or reading.confidence < entry.model.threshold:
            return None
        if captcha.length is not None and len(text) != captcha.length:
            return None
        if captcha.charset is not None and not set(text) <= set(captcha.charset):
            return None
        self._stats.inc_value("capsolver/learn/local_answers")
        logger.debug(
            "Read the captcha of %s with the learnt model v%d (confidence %.3f)",
            captcha.source,
            entry.version,
            reading.confidence,
        )
        return CaptchaSolution(
            text=text,
            task_id="",
            image_sha256=captcha.sha256,
            confidence=round(reading.confidence, 4),
            solver=LEARNT,
        )

    # What became of answers

    def answered(self, captcha: CaptchaImage, solution: CaptchaSolution) -> None:
        """Remember the image until its site says whether it accepted ``solution``."""
        site = site_of(captcha.website_url, captcha.source)
        if not site or not self._storing:
            return
        old = self._pending.pop(solution.image_sha256, None)
        if old is not None:
            self._pending_bytes -= len(old.image)
        self._pending[solution.image_sha256] = _Pending(captcha.body, site, solution.solver)
        self._pending_bytes += len(captcha.body)
        while self._pending and (
            len(self._pending) > MAX_PENDING or self._pending_bytes > MAX_PENDING_BYTES
        ):
            _, dropped = self._pending.popitem(last=False)
            self._pending_bytes -= len(dropped.image)

    def accepted(self, solution: CaptchaSolution) -> None:
        pending = self._pending.pop(solution.image_sha256, None)
        if pending is None:
            return  # not answered in this crawl, or already a label
        self._pending_bytes -= len(pending.image)
        if solution.solver == LEARNT:
            self._verdict(pending.site, refused=False)
        if not solution.text:
            return
        source = LOCAL_SOURCE if solution.solver in (LEARNT, LOCAL) else CLOUD
        label = StoredLabel(pending.image, solution.text, pending.site, now(), source)
        self._in_background(self._store(label))

    async def rejected(self, solution: CaptchaSolution, message: str = "") -> None:
        """A learnt answer the site refused: counted, never a label; too many and the
        model steps aside."""
        self._stats.inc_value("capsolver/learn/refused")
        pending = self._pending.pop(solution.image_sha256, None)
        if pending is not None:
            self._pending_bytes -= len(pending.image)
            self._verdict(pending.site, refused=True)

    def _verdict(self, site: str, *, refused: bool) -> None:
        entry = self.models.get(site)
        if entry is None:
            return
        entry.verdicts.append(refused)
        if not entry.aside and sum(entry.verdicts) > MAX_REFUSALS:
            entry.aside = True
            self._stats.inc_value("capsolver/learn/models_set_aside")
            logger.warning(
                "The learnt model v%d of %s steps aside: the site refused %d of its last %d "
                "answers; it reads again when a retrained model is promoted",
                entry.version,
                site,
                sum(entry.verdicts),
                len(entry.verdicts),
            )

    async def _store(self, label: StoredLabel) -> None:
        try:
            kept = await self.labels.add(label)
        except OSError as exc:
            # A full or read-only disk: learning stops, the crawl goes on.
            self._stats.inc_value("capsolver/learn/labels_skipped")
            if self._storing:
                self._storing = False
                logger.error("Learning stops for this crawl: a label could not be stored: %s", exc)
            return
        except Exception as exc:  # Redis away: this label is lost, the next may be kept
            self._stats.inc_value("capsolver/learn/labels_skipped")
            logger.warning("A label could not be stored: %s", exc)
            return
        if not kept:
            self._stats.inc_value("capsolver/learn/labels_skipped")
            return
        self._stats.inc_value("capsolver/learn/labels_stored")
        await self.trainer.consider(label.site)

    # Models

    async def _published(self, site: str, version: int) -> None:
        await self.reload()

    async def reload(self) -> None:
        """Load every site's model that is newer on the shelf than the one read with.
        Never raises: a model that cannot be had leaves the chain as it was."""
        if self._reloading:
            return
        self._reloading = True
        try:
            for site, version in (await self.shelf.published()).items():
                entry = self.models.get(site)
                if (entry is not None and entry.version >= version) or (
                    site,
                    version,
                ) in self._bad:
                    continue
                await self._load(site, version)
        except Exception as exc:
            # Once per outage: the look is tried again every few seconds.
            log = logger.debug if self._look_failed else logger.warning
            self._look_failed = True
            log("Could not look for newer learnt models: %s", exc)
        else:
            self._look_failed = False
        finally:
            self._looked = True
            self._reloading = False

    async def _load(self, site: str, version: int) -> None:
        path = await self.shelf.fetch(site, version)
        if path is None:
            return
        try:
            model = await self._threads.run(_load, path)
        except (ValueError, OSError) as exc:
            self._bad.add((site, version))
            self._stats.inc_value("capsolver/learn/bad_models")
            logger.error("The learnt model v%d of %s is refused: %s", version, site, exc)
            return
        self.models[site] = _SiteModel(model, version, deque(maxlen=REFUSAL_WINDOW))
        logger.info(
            "Reading %s with the learnt model v%d (threshold %s)", site, version, model.threshold
        )

    # The end

    def _in_background(self, work: Any) -> None:
        running: Deferred[Any] = deferred_from_coro(work)
        self._background.add(running)

        def done(result: Any) -> Any:
            self._background.discard(running)
            return result

        running.addBoth(done)

    async def close(self) -> None:
        """Stop a running training, let the label writes end, stop the threads."""
        if self._reload_loop.running:
            self._reload_loop.stop()
        await self.trainer.close()
        if self._background:
            await maybe_deferred_to_future(DeferredList(list(self._background), consumeErrors=True))
        await self._threads.stop()
        await self.labels.close()
        await self.shelf.close()
        if self._close_store is not None:
            await self._close_store()
