"""The local reader: reads each image on this machine first, and answers when sure enough.

It is the first of the solver's readers when ``CAPSOLVER_LOCAL_OCR`` is on. An answer it is
not sure of (below ``CAPSOLVER_LOCAL_MIN_CONFIDENCE``, of a length the site does not use, or
for a site whose format is not known yet) is declined, and the paid reader gets the image.
Without an API key there is nobody to pass the image to: every local answer is used.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Protocol

from scrapy.statscollectors import StatsCollector

from ...errors import CaptchaImageError, CaptchaTaskError
from ...solution import LOCAL, CaptchaSolution
from ..base import CaptchaImage
from .engine import InvalidImageError, OcrEngine
from .formats import SiteFormats, site_of
from .gate import ConfidenceGate, Reading
from .workers import WorkerThreads

logger = logging.getLogger(__name__)


class LocalEngine(Protocol):
    """What reads text on this machine: ddddocr's model (:class:`~.engine.OcrEngine`) by
    default; another model plugs in the same way, behind the same :class:`ConfidenceGate`.
    Called in worker threads: it may block, and must be thread-safe."""

    def read(self, image: bytes, chars: str | None = None) -> Reading:
        """The text of ``image`` over the characters ``chars`` and its confidence; raises
        :class:`InvalidImageError` for bytes it cannot read as an image."""
        ...


@dataclass(frozen=True)
class LocalOptions:
    """What the local reader is told (``CAPSOLVER_LOCAL_*``)."""

    #: Threads the engine reads in.
    workers: int
    #: The confidence from which a reading is used instead of paying.
    min_confidence: float
    #: The answers' length and characters, when known for every site.
    length: int | None = None
    charset: str | None = None
    #: No API key: the local answer is the only one there can be, used however unsure.
    only_reader: bool = False


class LocalReader:
    """Reads captchas with a local engine in worker threads; declines (returns None) what
    its gate refuses."""

    name = LOCAL
    local = True

    def __init__(
        self,
        options: LocalOptions,
        stats: StatsCollector,
        reactor: Any,
        engine: LocalEngine | None = None,
    ) -> None:
        self._stats = stats
        self._engine = engine or OcrEngine()
        self._threads = WorkerThreads(options.workers, reactor)
        self.gate = ConfidenceGate(options.min_confidence, only_reader=options.only_reader)
        # Without CapSolver nothing would teach a character the engine was kept from reading.
        self.formats = SiteFormats(
            options.length, options.charset, learn_chars=not options.only_reader
        )
        self.solved = 0

    def __repr__(self) -> str:
        return f"LocalReader(gate={self.gate!r}, solved={self.solved})"

    @property
    def reading(self) -> int:
        """Images being read or waiting for a worker thread."""
        return self._threads.busy

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution | None:
        if not captcha.local:
            return None
        site = site_of(captcha.website_url, captcha.source)
        expected = self.formats.expected(site, captcha.length, captcha.charset)
        refusal = self.gate.refuses_unread(expected)
        if refusal is not None:
            self._decline(captcha, refusal)
            return None
        try:
            reading = await self._threads.run(self._engine.read, captcha.body, expected.alphabet)
        except InvalidImageError as exc:
            if not self.gate.only_reader:
                self._decline(captcha, f"unreadable image ({exc})")
                return None
            raise CaptchaImageError(
                f"The captcha of {captcha.source} cannot be read as an image: {exc}"
            ) from None
        refusal = self.gate.refuses(reading, expected)
        if refusal is None:
            return self._use(captcha, reading)
        self._decline(captcha, refusal)
        return None

    def _use(self, captcha: CaptchaImage, reading: Reading) -> CaptchaSolution:
        if not reading.text:
            raise CaptchaTaskError(
                f"The local OCR engine read no text in the captcha of {captcha.source}, and "
                "without CAPSOLVER_API_KEY CapSolver cannot be asked.",
                "LOCAL_NO_TEXT",
            )
        self.solved += 1
        self._stats.inc_value("capsolver/local/solved")
        logger.debug(
            "Read the captcha of %s locally (confidence %.3f)", captcha.source, reading.confidence
        )
        return CaptchaSolution(
            text=reading.text,
            task_id="",
            image_sha256=captcha.sha256,
            confidence=round(reading.confidence, 4),
            solver=LOCAL,
        )

    def _decline(self, captcha: CaptchaImage, why: str) -> None:
        self._stats.inc_value("capsolver/local/declined")
        logger.debug("CapSolver reads the captcha of %s: %s", captcha.source, why)

    def answered(self, captcha: CaptchaImage, solution: CaptchaSolution) -> None:
        """``solution`` answers ``captcha``: if its site accepts it, it is learnt from."""
        self.formats.answered(solution.image_sha256, site_of(captcha.website_url, captcha.source))

    def accepted(self, solution: CaptchaSolution) -> None:
        self.formats.accepted(solution.image_sha256, solution.text)

    async def rejected(self, solution: CaptchaSolution, message: str = "") -> None:
        """A local answer has no task to report: it is only counted."""
        self._stats.inc_value("capsolver/local/rejected")

    async def close(self) -> None:
        """Let the reads in progress end and stop the threads (the crawl has ended)."""
        await self._threads.stop()
