"""Captchas on scrapy-playwright pages, captured and solved in a real headless Chromium.

The pages come from servers/browser_site.py; the CapSolver mock reads the answer that the
site colour-codes into each captcha's pixels (servers/color_code.py), so a screenshot of the
element is solved like a real OCR would. Each crawl checks at its end that no browser page
is left open.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import SERVERS, CapSolverMock
from crawling import crawl, solver_settings, stat
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.http import Response
from scrapy.utils.reactor import is_asyncio_reactor_installed
from servers.process import running_server
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import (
    CaptchaImageError,
    CaptchaInjectionError,
    CaptchaNotFoundError,
    CaptchaOptionsError,
    get_solver,
    solve_page_captcha,
)

pytestmark = pytest.mark.playwright

BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
LIVE_PAGE = {"playwright": True, "playwright_include_page": True}
SOLVE_AND_FILL = {"selector": "#captcha", "fill": "#captcha-input"}


def playwright_chromium() -> str | None:
    """Playwright's own Chromium, when `playwright install chromium` put one in place.
    Asked in a subprocess: the sync API refuses to run inside the test's event loop."""
    script = (
        "from playwright.sync_api import sync_playwright\n"
        "with sync_playwright() as p: print(p.chromium.executable_path)"
    )
    try:
        found = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    path = found.stdout.strip()
    return path if found.returncode == 0 and path and os.access(path, os.X_OK) else None


@pytest.fixture(scope="session")
def chromium() -> str:
    """A Chromium executable: CHROMIUM_PATH, Debian's, or Playwright's own. In CI a missing
    browser fails these tests; elsewhere they are skipped, saying how to get one."""
    if not is_asyncio_reactor_installed():
        pytest.skip("scrapy-playwright needs the asyncio reactor (pytest --reactor=asyncio)")
    configured = os.environ.get("CHROMIUM_PATH")
    if configured:
        if not os.access(configured, os.X_OK):
            pytest.fail(f"CHROMIUM_PATH={configured!r} is not an executable file")
        return configured
    for candidate in ("/usr/lib/chromium/chromium", shutil.which("chromium")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    own = playwright_chromium()
    if own is not None:
        return own
    reason = (
        "No Chromium for the browser tests: install Debian's (apt-get install chromium), run "
        "`python -m playwright install chromium`, or set CHROMIUM_PATH"
    )
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def browser_site() -> Iterator[str]:
    with running_server([str(SERVERS / "browser_site.py")]) as url:
        yield url


def browser_settings(capsolver: CapSolverMock, chromium: str, **overrides: Any) -> dict[str, Any]:
    handler = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"
    return solver_settings(
        capsolver,
        TWISTED_REACTOR="twisted.internet.asyncioreactor.AsyncioSelectorReactor",
        DOWNLOAD_HANDLERS={"http": handler, "https": handler},
        PLAYWRIGHT_BROWSER_TYPE="chromium",
        # The browser's own form posts keep their Content-Type (scrapy-playwright #329).
        PLAYWRIGHT_PROCESS_REQUEST_HEADERS=None,
        PLAYWRIGHT_LAUNCH_OPTIONS={
            "executable_path": chromium,
            "headless": True,
            "args": BROWSER_ARGS,
        },
        **overrides,
    )


PageFlow = Callable[["LoginSpider", Response, Any], Awaitable[list[str]]]


async def submit(spider: LoginSpider, response: Response, page: Any) -> list[str]:
    """Send the login form the middleware filled in; the site's verdict."""
    await page.click("#submit")
    return [await page.locator("#result").inner_text()]


class LoginSpider(scrapy.Spider):
    """Opens each ``(label, url, meta)`` and records, per label, the site's verdicts on the
    login, the captcha text, or the error; and how many browser pages were open at the end."""

    name = "login"

    def __init__(
        self,
        site: str,
        visits: list[tuple[str, str, dict[str, Any]]],
        flow: PageFlow = submit,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.visits = visits
        self.flow = flow
        self.verdicts: dict[str, list[str]] = {}
        self.texts: dict[str, str] = {}
        self.attempts: dict[str, int] = {}
        self.errors: dict[str, BaseException] = {}
        self.page_closed_in_errback: dict[str, bool] = {}
        self.open_pages_at_close: int | None = None

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> LoginSpider:
        spider: LoginSpider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.count_open_pages, signal=signals.spider_closed)
        return spider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for label, path, meta in self.visits:
            yield scrapy.Request(
                self.site + path,
                meta={**meta, "label": label},
                callback=self.parse,
                errback=self.failed,
                dont_filter=True,
            )

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        label = response.meta["label"]
        self.texts[label] = response.meta["captcha_text"]
        self.attempts[label] = response.meta["captcha_attempt"]
        page = response.meta.get("playwright_page")
        if page is None:
            # The browser is gone: post the form with Scrapy, as a spider without the page would.
            yield scrapy.FormRequest(
                self.site + "/login",
                formdata={
                    "captcha_id": response.css("#captcha-id::attr(value)").get(""),
                    "captcha": response.meta["captcha_text"],
                },
                meta={"label": label},
                callback=self.verdict,
                dont_filter=True,
            )
            return
        try:
            self.verdicts[label] = await self.flow(self, response, page)
        finally:
            await page.close()

    def verdict(self, response: Response) -> None:
        self.verdicts[response.meta["label"]] = [response.css("#result::text").get("")]

    def failed(self, failure: Failure) -> None:
        request: Any = failure.request  # type: ignore[attr-defined]
        label = request.meta["label"]
        self.errors[label] = failure.value
        page = request.meta.get("playwright_page")
        if page is not None:
            self.page_closed_in_errback[label] = page.is_closed()

    async def count_open_pages(self) -> None:
        # Before the download handler closes the browser (on engine_stopped).
        engine: Any = self.crawler.engine
        handler = engine.downloader.handlers._get_handler("http")
        wrappers = getattr(handler, "context_wrappers", {})  # none without scrapy-playwright
        self.open_pages_at_close = sum(len(wrapper.context.pages) for wrapper in wrappers.values())


async def crawl_logins(
    capsolver: CapSolverMock, chromium: str, site: str, visits: list[Any], **kwargs: Any
) -> tuple[Crawler, LoginSpider]:
    settings = browser_settings(capsolver, chromium, **kwargs.pop("settings", {}))
    crawler = await crawl(LoginSpider, settings, site=site, visits=visits, **kwargs)
    spider: Any = crawler.spider
    assert spider.open_pages_at_close == 0, "a browser page was left open"
    assert stat(crawler, "finish_reason") == "finished"
    return crawler, spider


@pytest_twisted.ensureDeferred
async def test_img_canvas_css_and_late_captchas_are_solved_typed_and_accepted(
    capsolver: CapSolverMock, chromium: str, browser_site: str
) -> None:
    # Eight pages in one crawl, solving at the same time.
    visits = [
        (f"{kind}-{n}", f"/login/{kind}", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL})
        for kind in ("img", "canvas", "css", "late")
        for n in (1, 2)
    ]
    crawler, spider = await crawl_logins(capsolver, chromium, browser_site, visits)

    assert spider.errors == {}
    assert spider.verdicts == {label: ["accepted"] for label, _, _ in visits}
    # Published like every other solve: the attempt of the captcha chain comes with it.
    assert spider.attempts == {label: 1 for label, _, _ in visits}
    assert len(set(spider.texts.values())) == len(visits)  # a captcha of its own for each
    assert len(capsolver.calls()) == len(visits)
    assert stat(crawler, "capsolver/solved") == len(visits)
    assert stat(crawler, "playwright/page_count") == len(visits)


@pytest_twisted.ensureDeferred
async def test_rejected_answer_is_reported_and_a_fresh_captcha_solved(
    capsolver: CapSolverMock, chromium: str, browser_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "wrong_text", "count": 1}])

    async def retry_once(spider: LoginSpider, response: Response, page: Any) -> list[str]:
        verdicts = await submit(spider, response, page)
        if verdicts == ["rejected"]:
            await get_solver(spider.crawler).report_wrong(response.meta["captcha_solution"])
            await page.goto(response.url)  # a new captcha
            await solve_page_captcha(
                page, "#captcha", fill="#captcha-input", crawler=spider.crawler
            )
            verdicts += await submit(spider, response, page)
        return verdicts

    visits = [("img", "/login/img", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL})]
    crawler, spider = await crawl_logins(capsolver, chromium, browser_site, visits, flow=retry_once)

    assert spider.verdicts == {"img": ["rejected", "accepted"]}
    assert spider.texts["img"].startswith("wrong")  # what the mock answered first
    feedback = capsolver.calls("feedbackTask")
    assert len(feedback) == 1
    assert feedback[0]["body"]["result"]["invalid"] is True
    assert len(capsolver.calls()) == 2
    assert stat(crawler, "capsolver/feedback_sent") == 1


@pytest_twisted.ensureDeferred
async def test_without_the_page_a_page_method_captures_the_captcha(
    capsolver: CapSolverMock, chromium: str, browser_site: str
) -> None:
    from scrapy_playwright.page import PageMethod

    captured = {"playwright": True, "solve_image": {"selector": "#captcha"}}
    visits = [
        ("img", "/login/img", captured),
        ("canvas", "/login/canvas", captured),
        # The spider's own page methods run first and keep their results.
        (
            "own-list",
            "/login/late",
            {**captured, "playwright_page_methods": [PageMethod("title")]},
        ),
        (
            "own-dict",
            "/login/css",
            {**captured, "playwright_page_methods": {"title": PageMethod("title")}},
        ),
        ("missing", "/login/img", {**captured, "solve_image": {"selector": "#no-captcha"}}),
        ("fill", "/login/img", {**captured, "solve_image": SOLVE_AND_FILL}),
        ("no-selector", "/login/img", {"playwright": True, "solve_image": True}),
    ]
    # Long enough for a screenshot on a busy machine; the "missing" visit waits all of it.
    settings = {"CAPSOLVER_ELEMENT_TIMEOUT": 10}
    crawler, spider = await crawl_logins(
        capsolver, chromium, browser_site, visits, settings=settings
    )

    accepted = ["img", "canvas", "own-list", "own-dict"]
    assert spider.verdicts == {label: ["accepted"] for label in accepted}
    assert set(spider.errors) == {"missing", "fill", "no-selector"}
    assert isinstance(spider.errors["missing"], CaptchaNotFoundError)
    assert "No element matches '#no-captcha'" in str(spider.errors["missing"])
    assert isinstance(spider.errors["fill"], CaptchaOptionsError)
    assert "playwright_include_page" in str(spider.errors["fill"])
    assert isinstance(spider.errors["no-selector"], CaptchaOptionsError)
    assert "'selector'" in str(spider.errors["no-selector"])
    # scrapy-playwright closed every page it opened; "fill" and "no-selector" were refused
    # before the download, so no page was opened for them.
    assert stat(crawler, "playwright/page_count") == len(accepted) + 1
    assert stat(crawler, "playwright/page_count/closed") == len(accepted) + 1
    assert len(capsolver.calls()) == len(accepted)


class ClosePageMiddleware:
    """Closes the page of requests marked ``close_page``: the browser lost the page between
    the download and the solve (a crash, a script, a spider middleware)."""

    async def process_response(
        self, request: scrapy.Request, response: Response, spider: Any = None
    ) -> Response:
        if request.meta.get("close_page"):
            await request.meta["playwright_page"].close()
        return response


@pytest_twisted.ensureDeferred
async def test_capture_errors_are_clear_and_close_the_page(
    capsolver: CapSolverMock, chromium: str, browser_site: str
) -> None:
    visits = [
        ("missing", "/login/img", {**LIVE_PAGE, "solve_image": {"selector": "#no-captcha"}}),
        ("zero-size", "/login/empty", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL}),
        ("broken", "/login/broken", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL}),
        ("not-found", "/login/gone", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL}),
        ("closed", "/login/img", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL, "close_page": True}),
        (
            "no-input",
            "/login/img",
            {**LIVE_PAGE, "solve_image": {"selector": "#captcha", "fill": "#no-input"}},
        ),
    ]
    settings = {
        # Captures that must succeed get it all on a busy machine; the failures wait it out.
        "CAPSOLVER_ELEMENT_TIMEOUT": 5,
        # Closer to the downloader than the solver's (543): its process_response runs first.
        "DOWNLOADER_MIDDLEWARES": {ClosePageMiddleware: 600},
    }
    _, spider = await crawl_logins(capsolver, chromium, browser_site, visits, settings=settings)

    errors = spider.errors
    assert set(errors) == {label for label, _, _ in visits}
    assert spider.page_closed_in_errback == {label: True for label, _, _ in visits}
    assert isinstance(errors["missing"], CaptchaNotFoundError)
    assert "No element matches '#no-captcha' on " in str(errors["missing"])
    assert isinstance(errors["zero-size"], CaptchaImageError)
    assert "has zero size (0x0 px)" in str(errors["zero-size"])
    assert isinstance(errors["broken"], CaptchaImageError)
    assert "failed to load" in str(errors["broken"])
    assert isinstance(errors["not-found"], CaptchaImageError)
    assert "got HTTP 404" in str(errors["not-found"])
    assert isinstance(errors["closed"], CaptchaImageError)
    assert "page was closed before the captcha" in str(errors["closed"])
    assert isinstance(errors["no-input"], CaptchaInjectionError)
    assert "'#no-input'" in str(errors["no-input"])
    assert "no element matches it" in str(errors["no-input"])
    # Only the captcha whose input was missing reached CapSolver.
    assert len(capsolver.calls()) == 1


@pytest_twisted.ensureDeferred
async def test_playwright_requests_without_its_download_handler_fail_clearly(
    capsolver: CapSolverMock, browser_site: str
) -> None:
    # scrapy-playwright installed, but its handler not in DOWNLOAD_HANDLERS: the meta keys
    # are ignored and a plain HTML response comes back, with no page to solve on.
    visits = [
        ("live", "/login/img", {**LIVE_PAGE, "solve_image": SOLVE_AND_FILL}),
        ("captured", "/login/img", {"playwright": True, "solve_image": {"selector": "#captcha"}}),
    ]
    crawler = await crawl(LoginSpider, solver_settings(capsolver), site=browser_site, visits=visits)
    spider: Any = crawler.spider

    assert set(spider.errors) == {"live", "captured"}
    for error in spider.errors.values():
        assert isinstance(error, CaptchaImageError)
        assert "ScrapyPlaywrightDownloadHandler" in str(error)
    assert capsolver.calls() == []
