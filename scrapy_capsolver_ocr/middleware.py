"""The downloader middleware: solves the responses of requests that asked for it."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any

from scrapy import Request, Spider, signals
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro

from .browser_captcha import check_request, solve_browser_response
from .images import image_type
from .injection import INJECTED, CaptchaInjector
from .options import SolveOptions, solve_options
from .page_captcha import SIDE_REQUEST, check_image_status, http_url, page_image
from .progress import SolveProgress
from .rejection import RejectionHandler, attempt_of, retry_condition
from .sessions import SessionSolutions, SolvedCaptcha, session_of
from .settings import SolverSettings, mask_api_key
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
        mask_api_key(crawler.settings)  # the add-on does it too; the middleware may be alone
        self.config = SolverSettings.from_settings(crawler.settings)
        requests_cap = crawler.settings.getint("CONCURRENT_REQUESTS")
        if 0 < requests_cap < self.config.concurrency:
            logger.warning(
                "CONCURRENT_REQUESTS (%d) is below CAPSOLVER_CONCURRENCY (%d): a request "
                "waiting for its captcha answer holds one of Scrapy's request slots, so at "
                "most %d solves run at once and other pages wait while they do. Set "
                "CONCURRENT_REQUESTS to CAPSOLVER_CONCURRENCY plus what the pages need.",
                requests_cap,
                self.config.concurrency,
                requests_cap,
            )
        assert crawler.stats is not None
        self.solver = CaptchaSolver(self.config, crawler.stats, self._close_crawl)
        self._progress = SolveProgress(self.solver, crawler.stats, self.config.logstats_interval)
        self._closing = False
        self._sessions = SessionSolutions()
        self._injector = CaptchaInjector(self._sessions, crawler.stats)
        self._rejections = RejectionHandler(self.solver, crawler.stats, self.config.max_attempts)
        self._image_order = itertools.count()
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self._request_scheduled, signal=signals.request_scheduled)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CaptchaSolverMiddleware:
        return cls(crawler)

    def process_request(self, request: Request, spider: Spider | None = None) -> Request | None:
        # Wrong captcha meta values fail here, before anything is downloaded.
        options = solve_options(request.meta)
        if options is not None:
            check_request(request, options, self.config.element_timeout)
        retry_condition(request.meta)
        # A request with captcha_field is sent again with its answer in.
        return self._injector.process_request(request)

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        retry = await self._rejections.process_response(request, response)
        if retry is not None:
            return retry
        options = self._solve_options(request, response)
        if options is None:
            return response
        solution = await solve_browser_response(
            self.crawler, self.solver, request, response, options, self.config.element_timeout
        )
        if solution is not None:  # a captcha on a scrapy-playwright page
            request.meta["captcha_solution"] = solution
            request.meta["captcha_text"] = solution.text
            return response
        image, source = await self._captcha_image(request, response, options)
        order = next(self._image_order)
        website_url = options.website_url
        if website_url is None and options.selector is not None:
            website_url = http_url(response.url)  # page mode: the page the captcha is on
        if website_url is None and request.headers.get("Referer"):
            website_url = request.headers.to_unicode_dict()["Referer"]
        solution = await self.solver.solve(
            image,
            module=options.module,
            score=options.score,
            website_url=website_url,
            source=source,
        )
        logger.debug("Solved the captcha of %s as %r", response.url, solution.text)
        attempt = attempt_of(request.meta)
        self._sessions.add(session_of(request), SolvedCaptcha(solution, request, attempt, order))
        request.meta["captcha_solution"] = solution
        request.meta["captcha_text"] = solution.text
        request.meta["captcha_attempt"] = attempt
        return response

    def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> None:
        # The spider may build its next request from this one's meta: that one needs its
        # own answer.
        request.meta.pop(INJECTED, None)

    def _request_scheduled(self, request: Request, **kwargs: Any) -> None:
        if "captcha_field" in request.meta:
            # Forms built alike (the captcha field still empty) differ once their answers
            # are in: a retry's form must not be dropped as a duplicate of the first one.
            request.dont_filter = True

    def _solve_options(self, request: Request, response: Response) -> SolveOptions | None:
        """What to solve in this response: what the request asked for, or (for a URL in
        CAPSOLVER_URL_PATTERNS) an image body with the default options."""
        options = solve_options(request.meta)
        if options is not None or request.meta.get("solve_image") is False:
            return options
        if SIDE_REQUEST in request.meta or not 200 <= response.status < 300:
            return None
        if not any(pattern.search(response.url) for pattern in self.config.url_patterns):
            return None
        return SolveOptions() if image_type(response.body) is not None else None

    async def _captcha_image(
        self, request: Request, response: Response, options: SolveOptions
    ) -> tuple[bytes, str]:
        """The captcha image to solve, and where it came from (for messages)."""
        if options.selector is not None:
            return await page_image(self.crawler, request, response, options.selector)
        check_image_status(response, f"The captcha request {response.url}")
        return response.body, response.url

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
