"""The downloader middleware: solves the responses of requests that asked for it."""

from __future__ import annotations

import itertools
import logging
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from scrapy import Request, Spider, signals
from scrapy.exceptions import IgnoreRequest
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.defer import CancelledError

from ..errors import CaptchaImageError, CaptchaOptionsError, CaptchaSolveError, unexpected_error
from ..images import image_type
from ..reactor import installed_reactor
from ..settings import SolverSettings, mask_api_key
from ..solution import CaptchaSolution
from ..solving.options import SolveOptions
from ..solving.solver import CaptchaSolver
from ..state.fleet import FleetWatch, build_state, fleet_name
from .browser_captcha import check_request, solve_browser_response
from .injection import ANSWER, LOGGED_TEXT, CaptchaInjector
from .page_captcha import (
    SIDE_REQUEST,
    check_image_status,
    download_error,
    http_url,
    page_image,
)
from .progress import SolveProgress
from .readers import crawl_readers
from .rejection import RejectionHandler
from .request_meta import CaptchaMeta, parse_meta
from .request_slots import RequestSlots
from .sessions import SessionSolutions, SolvedCaptcha

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

try:  # Scrapy 2.14+ names a download stopped at its size limit; before, Twisted's class
    from scrapy.exceptions import DownloadCancelledError

    _CANCELLED: tuple[type[Exception], ...] = (CancelledError, DownloadCancelledError)
except ImportError:  # pragma: no cover - Scrapy 2.13
    _CANCELLED = (CancelledError,)


class CaptchaSolverMiddleware:
    """Solves the response of every request whose meta has ``solve_image``.

    On success the request's callback gets ``response.meta["captcha_solution"]`` (a
    :class:`~scrapy_capsolver_ocr.CaptchaSolution`) and ``response.meta["captcha_text"]``;
    on failure its errback gets a :class:`~scrapy_capsolver_ocr.CaptchaSolveError`.
    """

    def __init__(self, crawler: Crawler) -> None:
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
        state = build_state(self.config, fleet_name(self.config, crawler))
        readers, self._cloud = crawl_readers(self.config, crawler.stats, state, self._close_crawl)
        self.solver = CaptchaSolver(self.config, crawler.stats, readers, state)
        account = self._cloud.account
        self._fleet = FleetWatch(state, account.fleet_stopped, crawler.stats, self.config)
        self._progress = SolveProgress(
            self.solver, account, crawler.stats, self.config.logstats_interval
        )
        self._closing = False
        self._sessions = SessionSolutions()
        self._injector = CaptchaInjector(crawler, self._sessions, crawler.stats)
        self._rejections = RejectionHandler(
            self.solver, self._injector, crawler.stats, self.config.max_attempts
        )
        self._image_order = itertools.count()
        # The add-on made room for CAPSOLVER_CONCURRENCY solves; the others get slots lent.
        self._request_slots = RequestSlots.from_crawler(
            crawler, held=self.config.concurrency, enabled=self.config.add_request_slots
        )
        self._parsed: WeakKeyDictionary[Request, CaptchaMeta] = WeakKeyDictionary()
        crawler.signals.connect(self._spider_opened, signal=signals.spider_opened)
        crawler.signals.connect(self._spider_closed, signal=signals.spider_closed)
        crawler.signals.connect(self._request_scheduled, signal=signals.request_scheduled)

    @classmethod
    def from_crawler(cls, crawler: Crawler) -> CaptchaSolverMiddleware:
        return cls(crawler)

    def process_request(self, request: Request, spider: Spider | None = None) -> Request | None:
        # Every captcha meta key is checked here, before anything is downloaded.
        parsed = self._parse(request)
        if parsed.solve is not None:
            check_request(request, parsed.solve, self.config.element_timeout)
        if self._downloads_image(request, parsed):
            self._limit_download(request)
        # A request with captcha_field is sent again with its answer in.
        return self._injector.process_request(request, parsed)

    async def process_response(
        self, request: Request, response: Response, spider: Spider | None = None
    ) -> Request | Response:
        parsed = self._parsed.get(request) or self._parse(request)
        retry = await self._rejections.process_response(request, response, parsed.retry_if)
        if retry is not None:
            return retry
        options = self._solve_options(parsed, request, response)
        if options is None:
            return response
        try:
            with self._request_slots.solving_one(len(response.body)):
                solution, order = await self._solve(request, response, options, parsed.attempt)
        except CaptchaSolveError:
            raise
        except Exception as exc:
            raise unexpected_error(exc, response.url) from exc
        self._publish(request, parsed, solution, order)
        return response

    def process_exception(
        self, request: Request, exception: Exception, spider: Spider | None = None
    ) -> None:
        # The spider may build its next request from this one's meta: that one needs its
        # own answer.
        request.meta.pop(ANSWER, None)
        parsed = self._parsed.get(request)
        # IgnoreRequest is Scrapy's word for a request dropped on purpose (robots.txt, a
        # user's middleware): it reaches the errback as Scrapy sends it.
        if parsed is None or isinstance(exception, (CaptchaSolveError, IgnoreRequest)):
            return
        # Scrapy's RetryMiddleware (550) has already had its turns at this exception.
        if self._downloads_image(request, parsed):
            if isinstance(exception, _CANCELLED):
                raise CaptchaImageError(
                    f"The captcha from {request.url} is larger than CAPSOLVER_MAX_IMAGE_SIZE "
                    f"({self.config.max_image_size} bytes); its download was stopped. Raise "
                    "the setting if the image is really a captcha."
                ) from exception
            raise download_error(f"the captcha {request.url}", exception) from exception
        if parsed.solve is not None:
            what = f"the page {request.url} whose captcha was to be solved"
            raise download_error(what, exception) from exception

    def _parse(self, request: Request) -> CaptchaMeta:
        parsed = parse_meta(request.meta)
        self._parsed[request] = parsed
        return parsed

    def _request_scheduled(self, request: Request, **kwargs: Any) -> None:
        if "captcha_field" not in request.meta:
            return
        # Forms built alike (the captcha field still empty) differ once their answers
        # are in: a retry's form must not be dropped as a duplicate of the first one.
        request.dont_filter = True
        try:
            parsed = self._parse(request)
        except CaptchaOptionsError:
            return  # it fails in process_request, into its errback
        # Bound now, the answer travels in the request: through a JOBDIR queue too.
        self._injector.bind(request, parsed)

    def _downloads_image(self, request: Request, parsed: CaptchaMeta) -> bool:
        """Whether the response to ``request`` is itself the captcha image."""
        if parsed.solve is not None:
            return parsed.solve.selector is None and not request.meta.get("playwright")
        return not parsed.opted_out and self._matches_patterns(request.url)

    def _limit_download(self, request: Request) -> None:
        # The image check refuses larger bodies: do not download them whole first.
        limit = self.config.max_image_size
        current = request.meta.get("download_maxsize")
        request.meta["download_maxsize"] = min(current, limit) if current else limit

    def _matches_patterns(self, url: str) -> bool:
        return any(pattern.search(url) for pattern in self.config.url_patterns)

    def _solve_options(
        self, parsed: CaptchaMeta, request: Request, response: Response
    ) -> SolveOptions | None:
        """What to solve in this response: what the request asked for, or (for a URL in
        CAPSOLVER_URL_PATTERNS) an image body with the default options."""
        if parsed.solve is not None or parsed.opted_out:
            return parsed.solve
        if SIDE_REQUEST in request.meta or not 200 <= response.status < 300:
            return None
        if not self._matches_patterns(response.url):
            return None
        return SolveOptions() if image_type(response.body) is not None else None

    async def _solve(
        self, request: Request, response: Response, options: SolveOptions, attempt: int
    ) -> tuple[CaptchaSolution, int]:
        """The answer to the captcha of ``response``, and the order in which its image was
        obtained."""
        solution = await solve_browser_response(
            self.crawler,
            self.solver,
            request,
            response,
            options,
            self.config.element_timeout,
            attempt,
        )
        if solution is not None:  # a captcha on a scrapy-playwright page
            return solution, next(self._image_order)
        image, source = await self._captcha_image(request, response, options)
        order = next(self._image_order)
        if options.selector is not None:
            options = options.with_page_url(http_url(response.url))  # page mode: its page
        if request.headers.get("Referer"):
            options = options.with_page_url(request.headers.to_unicode_dict()["Referer"])
        solution = await self.solver.solve_with(image, options, source=source, attempt=attempt)
        return solution, order

    def _publish(
        self, request: Request, parsed: CaptchaMeta, solution: CaptchaSolution, order: int
    ) -> None:
        """Hand ``solution`` to the callback, and keep it for the session's next form."""
        logger.debug("Solved the captcha of %s as %r", request.url, solution.text[:LOGGED_TEXT])
        self._sessions.add(parsed.session, SolvedCaptcha(solution, request, parsed.attempt, order))
        request.meta["captcha_solution"] = solution
        request.meta["captcha_text"] = solution.text
        request.meta["captcha_attempt"] = parsed.attempt

    async def _captcha_image(
        self, request: Request, response: Response, options: SolveOptions
    ) -> tuple[bytes, str]:
        """The captcha image to solve, and where it came from (for messages)."""
        if options.selector is not None:
            return await page_image(
                self.crawler, request, response, options.selector, self.config.max_image_size
            )
        check_image_status(response, f"The captcha request {response.url}")
        return response.body, response.url

    def _spider_opened(self, spider: Spider) -> None:
        self._progress.start()
        self._fleet.start()
        if self.config.api_key is None:
            logger.info(
                "No CapSolver API key (CAPSOLVER_API_KEY): %s",
                "captchas are read by the local OCR engine only, however unsure it is."
                if self.config.local_ocr
                else "requests that ask for a solve will fail.",
            )
            return
        if self.config.check_balance:
            self._cloud.account.hold_until_balance_checked()
            # Not awaited: ordinary pages start crawling at once; only solves wait for it.
            deferred_from_coro(self._log_start_balance())

    async def _log_start_balance(self) -> None:
        balance = await self._cloud.record_balance(at_start=True)
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
            end = await self._cloud.record_balance(at_start=False)
            if end is not None:
                self.crawler.stats.set_value("capsolver/spent", round(start - end, 6))
        await self.solver.close()
        await self._fleet.stop()

    def _close_crawl(self, reason: str) -> None:
        if not self.config.close_on_fatal or self._closing:
            return
        self._closing = True
        # Not awaited: closing waits for the downloads in flight, the caller's included.
        installed_reactor().callLater(0, self._start_close, reason)

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


def get_solver(crawler: Crawler) -> CaptchaSolver:
    """The running crawl's :class:`CaptchaSolver`, to solve images a spider obtained
    itself: ``solution = await get_solver(self.crawler).solve(png_bytes)``."""
    try:
        middleware = crawler.get_downloader_middleware(CaptchaSolverMiddleware)
    except RuntimeError:  # the engine does not exist yet
        middleware = None
    if middleware is not None:
        return middleware.solver
    raise RuntimeError(
        "CaptchaSolverMiddleware is not enabled in this crawl: add "
        "ADDONS = {'scrapy_capsolver_ocr.Addon': 500} to the settings."
    )
