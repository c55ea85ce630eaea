"""Scrapy request slots for the solves that wait their turn.

Scrapy counts a request against ``CONCURRENT_REQUESTS`` until the downloader middleware
returns its response, so a request whose captcha is being solved holds a request slot for the
whole solve. The add-on makes room for ``CAPSOLVER_CONCURRENCY`` of them. Every solve beyond
those is waiting for a concurrency slot, a pause or the balance read: :class:`RequestSlots`
lends each of them a slot of its own for as long as it lasts, so that a queue of captchas
never takes the slots the pages need. The waiting images stay in memory meanwhile: slots are
lent while they total at most ``SCRAPER_SLOT_MAX_ACTIVE_SIZE`` bytes (5 MB by default),
counted as Scrapy counts the responses waiting for the spider.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..compat import change_request_limit, wake_engine

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

#: As Scrapy's scraper counts a small response: no solve counts for less.
MIN_IMAGE_SIZE = 1024


class RequestSlots:
    """Lends Scrapy's downloader a request slot for each solve beyond the first ``held``
    in progress, within ``max_bytes`` of waiting images."""

    def __init__(self, crawler: Crawler, *, held: int, max_bytes: int, enabled: bool) -> None:
        self._crawler = crawler
        self._held = held
        self._max_bytes = max_bytes
        self._enabled = enabled
        self.solving = 0
        self.lent = 0
        self.lent_bytes = 0

    @classmethod
    def from_crawler(cls, crawler: Crawler, *, held: int, enabled: bool) -> RequestSlots:
        max_bytes = crawler.settings.getint("SCRAPER_SLOT_MAX_ACTIVE_SIZE", 5_000_000)
        return cls(crawler, held=held, max_bytes=max_bytes, enabled=enabled)

    @contextmanager
    def solving_one(self, size: int) -> Iterator[None]:
        """Count one solve of an image of ``size`` bytes for the block it lasts, on a slot of
        its own when it is beyond the first ``held`` solves and the memory allows."""
        self.solving += 1
        size = max(size, MIN_IMAGE_SIZE)
        lent = self._lend(size)
        try:
            yield
        finally:
            self.solving -= 1
            if lent:
                self._give_back(size)

    def _lend(self, size: int) -> bool:
        if not self._enabled or self.solving <= self._held:
            return False
        if self.lent_bytes + size > self._max_bytes:
            return False
        if not change_request_limit(self._crawler, +1):
            return False  # no engine yet, or no limit to lift
        self.lent += 1
        self.lent_bytes += size
        # The engine takes the next request when a download ends or on its 5 s heartbeat:
        # the slot lent now must not stay empty until then.
        wake_engine(self._crawler)
        return True

    def _give_back(self, size: int) -> None:
        self.lent -= 1
        self.lent_bytes -= size
        change_request_limit(self._crawler, -1)
