"""The local reader: reads each image on this machine first, and answers when sure enough.

It is the first of the solver's readers when ``CAPSOLVER_LOCAL_OCR`` is on. An answer it is
not sure of (below ``CAPSOLVER_LOCAL_MIN_CONFIDENCE``, of a length the site does not use, or
for a site whose format is not known yet) is declined, and the paid reader gets the image.
Without an API key there is nobody to pass the image to: every local answer is used.
"""

from __future__ import annotations

import logging
from typing import Any

from scrapy.statscollectors import StatsCollector

from ...errors import CaptchaImageError, CaptchaTaskError
from ...settings import SolverSettings
from ...solution import LOCAL, CaptchaSolution
from ..base import CaptchaImage
from .engine import InvalidImageError, OcrEngine
from .formats import ExpectedFormat, SiteFormats, site_of
from .gate import Reading, passes
from .workers import WorkerThreads

logger = logging.getLogger(__name__)


class LocalReader:
    """Reads captchas with the local engine in worker threads; declines (returns None)
    what it is not sure of, unless there is no API key."""

    def __init__(
        self,
        config: SolverSettings,
        stats: StatsCollector,
        reactor: Any,
        engine: OcrEngine | None = None,
    ) -> None:
        self._stats = stats
        self._engine = engine or OcrEngine()
        self._threads = WorkerThreads(config.local_workers, reactor)
        self._min_confidence = config.local_min_confidence
        # Without a key the local answer is the only one there can be.
        self._only_reader = config.api_key is None
        self.formats = SiteFormats(
            config.local_length, config.local_charset, learn_chars=not self._only_reader
        )
        self.solved = 0

    def __repr__(self) -> str:
        return f"LocalReader(min_confidence={self._min_confidence}, solved={self.solved})"

    @property
    def reading(self) -> int:
        """Images being read or waiting for a worker thread."""
        return self._threads.busy

    async def read(self, captcha: CaptchaImage) -> CaptchaSolution | None:
        if not captcha.local:
            return None
        site = site_of(captcha.website_url, captcha.source)
        expected = self.formats.expected(site, captcha.length, captcha.charset)
        if expected.lengths is None and not self._only_reader:
            self._decline(captcha, "the length of this site's captchas is not known yet")
            return None
        try:
            reading = await self._threads.run(self._engine.read, captcha.body, expected.alphabet)
        except InvalidImageError as exc:
            if not self._only_reader:
                self._decline(captcha, f"unreadable image ({exc})")
                return None
            raise CaptchaImageError(
                f"The captcha of {captcha.source} cannot be read as an image: {exc}"
            ) from None
        if self._only_reader or passes(reading, expected.lengths, self._min_confidence):
            return self._use(captcha, reading)
        self._decline(captcha, self._why_not(reading, expected))
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

    def _why_not(self, reading: Reading, expected: ExpectedFormat) -> str:
        if expected.lengths is not None and len(reading.text) not in expected.lengths:
            return f"read {len(reading.text)} characters, expected {sorted(expected.lengths)}"
        return f"confidence {reading.confidence:.3f} < {self._min_confidence:g}"

    def answered(self, captcha: CaptchaImage, solution: CaptchaSolution) -> None:
        """``solution`` answers ``captcha``: if its site accepts it, it is learnt from."""
        self.formats.answered(solution.image_sha256, site_of(captcha.website_url, captcha.source))

    def accepted(self, solution: CaptchaSolution) -> None:
        self.formats.accepted(solution.image_sha256, solution.text)

    async def close(self) -> None:
        """Let the reads in progress end and stop the threads (the crawl has ended)."""
        await self._threads.stop()
