"""The downloader middleware: solves the responses of requests that asked for it."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from scrapy import Request, Spider, signals
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro

from .errors import CaptchaImageError
from .options import solve_options
from .progress import SolveProgress
from .settings import SolverSettings
from .solver import CaptchaSolver

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)


class CaptchaSolverMiddleware:
    """Solves the response of every request whose meta has ``solve_image``.

    On success the request's callback gets ``response.meta["captcha_solution"]`` (a
    :class:`~scrapy_capsolver_ocr.CaptchaSolution`) and ``response.meta["captcha_text"]``;
    on failure its errback gets a :class:`~scrapy_capsolver_ocr.CaptchaSolveError`.
    """

    def __init__(self, crawler: Crawler) -> None:
        if not crawler.settings.getbool("TWISTED_REACTOR_ENABLED", True):
            raise ValueError(
                "TWISTED_REACTOR_ENABLED=False is not supported by scrapy-capsolver-ocr: its "
                "API client (treq) needs a Twisted reactor. Remove the setting or set it to True."
            )
        self.crawler = crawler
        self.config = SolverSettings.from_settings(crawler.settings)
        assert crawler.stats is not None
        self.solver = CaptchaSolver(self.config, crawler.stats, self._close_crawl)
        self._progress = SolveProgress(self.solver, crawler.stats, self.config.logstats_interval)
        self._closing = False
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CaptchaSolverMiddleware:
        return cls(crawler)

    def process_request(self, request: Request, spider: Spider | None = None) -> None:
        # A wrong solve_image value fails here, before the captcha is even downloaded.
        solve_options(request.meta)

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Response:
        options = solve_options(request.meta)
        if options is None:
            return response
        if not 200 <= response.status < 300:
            raise CaptchaImageError(
                f"The captcha request {response.url} got HTTP {response.status}, not an image."
            )
        website_url = options.website_url
        if website_url is None and request.headers.get("Referer"):
            website_url = request.headers.to_unicode_dict()["Referer"]
        solution = await self.solver.solve(
            response.body,
            module=options.module,
            score=options.score,
            website_url=website_url,
            source=response.url,
        )
        logger.debug("Solved the captcha of %s as %r", response.url, solution.text)
        request.meta["captcha_solution"] = solution
        request.meta["captcha_text"] = solution.text
        return response

    def _spider_opened(self, spider: Spider) -> None:
        self._progress.start()
        if self.config.api_key is None:
            logger.info(
                "No CapSolver API key (CAPSOLVER_API_KEY): requests that ask for a solve will fail."
            )
            return
        if self.config.check_balance:
            self.solver.hold_until_balance_checked()
            # Not awaited: ordinary pages start crawling at once; only solves wait for it.
            deferred_from_coro(self._log_start_balance())

    async def _log_start_balance(self) -> None:
        balance = await self.solver.record_balance(at_start=True)
        if balance is not None:
            logger.info(
                "CapSolver balance at start: %.4f USD (key %r)", balance, self.config.api_key
            )

    async def _spider_closed(self, spider: Spider, reason: str) -> None:
        self._closing = True
        self._progress.stop()
        assert self.crawler.stats is not None
        start = self.crawler.stats.get_value("capsolver/balance_start")
        if start is not None:
            end = await self.solver.record_balance(at_start=False)
            if end is not None:
                self.crawler.stats.set_value("capsolver/spent", round(start - end, 6))
        await self.solver.close()

    def _close_crawl(self, reason: str) -> None:
        if not self.config.close_on_fatal or self._closing:
            return
        self._closing = True
        from twisted.internet import reactor as installed_reactor

        reactor: Any = installed_reactor
        # Not awaited: closing waits for the downloads in flight, the caller's included.
        reactor.callLater(0, self._start_close, reason)

    def _start_close(self, reason: str) -> None:
        engine: Any = self.crawler.engine
        if engine is None:
            return
        if hasattr(engine, "close_spider_async"):
            closing = deferred_from_coro(engine.close_spider_async(reason=reason))
        else:  # Scrapy < 2.14
            closing = engine.close_spider(self.crawler.spider, reason)
        closing.addErrback(
            lambda failure: logger.error(
                "Could not close the crawl (%s): %s", reason, failure.getErrorMessage()
            )
        )
