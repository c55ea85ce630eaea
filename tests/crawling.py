"""Running real crawls in tests: a spider that records how each request ended."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import scrapy
from conftest import API_KEY, CapSolverMock
from scrapy.crawler import Crawler, CrawlerRunner
from scrapy.http import Response
from scrapy.utils.reactor import is_asyncio_reactor_installed
from twisted.python.failure import Failure


def solver_settings(capsolver: CapSolverMock | None, **overrides: Any) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
        "CAPSOLVER_API_KEY": API_KEY,
        # Retries in tests need not wait like a real crawl would.
        "CAPSOLVER_BACKOFF_BASE": 0.01,
        "CAPSOLVER_BACKOFF_MAX": 0.05,
        "CAPSOLVER_LOGSTATS_INTERVAL": 0,
        "LOG_LEVEL": "DEBUG",
        "TELNETCONSOLE_ENABLED": False,
        "CONCURRENT_REQUESTS": 32,
        "CONCURRENT_REQUESTS_PER_DOMAIN": 32,
        "RETRY_ENABLED": False,
    }
    if capsolver is not None:
        settings["CAPSOLVER_API_URL"] = capsolver.url
    if not is_asyncio_reactor_installed():
        # The suite also runs under the epoll reactor (pytest --reactor=default).
        settings["TWISTED_REACTOR"] = "twisted.internet.epollreactor.EPollReactor"
    settings.update(overrides)
    return settings


class RecordingSpider(scrapy.Spider):
    """Requests each of ``urls`` with ``meta`` and records how every request ended."""

    name = "recording"

    def __init__(
        self,
        urls: list[str],
        meta: dict[str, Any] | None = None,
        on_response: Callable[[RecordingSpider, Response], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.urls = urls
        self.request_meta = {"solve_image": True} if meta is None else meta
        self.on_response = on_response
        self.ended: Counter[str] = Counter()
        self.texts: dict[str, str] = {}
        self.solutions: dict[str, Any] = {}
        self.errors: dict[str, BaseException] = {}

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for url in self.urls:
            yield scrapy.Request(
                url,
                meta=dict(self.request_meta),
                callback=self.parse,
                errback=self.failed,
                dont_filter=True,
            )

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        self.ended[response.url] += 1
        if "captcha_text" in response.meta:
            self.texts[response.url] = response.meta["captcha_text"]
            self.solutions[response.url] = response.meta["captcha_solution"]
        if self.on_response is not None:
            await self.on_response(self, response)
        return
        yield

    def failed(self, failure: Failure) -> None:
        url = failure.request.url  # type: ignore[attr-defined]
        self.ended[url] += 1
        self.errors[url] = failure.value


async def crawl(
    spider_cls: type[scrapy.Spider], settings: dict[str, Any], **kwargs: Any
) -> Crawler:
    crawler = CrawlerRunner(settings).create_crawler(spider_cls)
    await crawler.crawl(**kwargs)
    return crawler


def stat(crawler: Crawler, name: str, default: Any = 0) -> Any:
    assert crawler.stats is not None
    return crawler.stats.get_value(name, default)
