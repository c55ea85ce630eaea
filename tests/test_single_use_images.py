"""Captcha image URLs that carry a one-time key (django-simple-captcha's kind): re-sending the
image request after a refused answer cannot work, and the errback's error says what does;
page mode and a spider-side retry log in on the same site."""

from __future__ import annotations

import json
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import SERVERS, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.http import FormRequest, Response
from servers.process import running_server
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaImageError

WRONG_CAPTCHA = "Wrong captcha"


@pytest.fixture(scope="module")
def single_use_site() -> Iterator[str]:
    with running_server([str(SERVERS / "single_use_site.py")]) as url:
        yield url


def image_fetches(site: str) -> dict[str, int]:
    """How many times the site served each captcha image URL path."""
    with urllib.request.urlopen(site + "/_fetches", timeout=10) as answer:
        return dict(json.loads(answer.read()))


class SingleUseLoginSpider(scrapy.Spider):
    """Logs in once on the single-use site. ``mode``: ``image`` (the image request solved,
    ``captcha_retry_if`` on the form), ``page`` (page mode) or ``spider_retry`` (the image
    request solved, the spider checks the answer and fetches the form page again)."""

    name = "single_use_login"

    def __init__(self, login_url: str, mode: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.login_url = login_url
        self.mode = mode
        self.attempts: list[int] = []
        self.errors: list[tuple[str, BaseException]] = []
        self.welcomed = False

    async def start(self) -> AsyncIterator[scrapy.Request]:
        yield self.form_page()

    def form_page(self) -> scrapy.Request:
        meta = {"solve_image": {"selector": "#captcha"}} if self.mode == "page" else {}
        return scrapy.Request(
            self.login_url,
            meta=meta,
            callback=self.parse_form,
            errback=self.failed,
            dont_filter=True,
        )

    def parse_form(self, page: Response) -> Iterator[scrapy.Request]:
        if self.mode == "page":
            self.attempts.append(page.meta["captcha_attempt"])
            yield self.login(page, meta={"captcha_field": "captcha"})
            return
        yield page.follow(
            page.css("#captcha::attr(src)").get(""),
            meta={"solve_image": True},
            callback=self.submit,
            errback=self.failed,
            cb_kwargs={"page": page},
            dont_filter=True,
        )

    def submit(self, captcha: Response, page: Response) -> Iterator[scrapy.Request]:
        self.attempts.append(captcha.meta["captcha_attempt"])
        if self.mode == "image":
            yield self.login(page, meta={"captcha_field": "captcha"})
        else:
            yield self.login(page, fields={"captcha": captcha.meta["captcha_text"]})

    def login(
        self,
        page: Response,
        meta: dict[str, Any] | None = None,
        fields: dict[str, str] | None = None,
    ) -> FormRequest:
        meta = dict(meta or {})
        if "captcha_field" in meta:
            meta["captcha_retry_if"] = WRONG_CAPTCHA
        return FormRequest(
            page.urljoin("/login"),
            formdata={"key": page.css("input[name=key]::attr(value)").get(""), **(fields or {})},
            meta=meta,
            callback=self.after_login,
            errback=self.failed,
            dont_filter=True,
        )

    def after_login(self, response: Response) -> Iterator[scrapy.Request]:
        if "Welcome" in response.text:
            self.welcomed = True
        elif self.mode == "spider_retry" and WRONG_CAPTCHA in response.text:
            yield self.form_page()

    def failed(self, failure: Failure) -> None:
        self.errors.append((failure.request.url, failure.value))  # type: ignore[attr-defined]


@pytest.mark.parametrize("gone", [410, 404])
@pytest_twisted.ensureDeferred
async def test_resent_single_use_image_fails_naming_page_mode_and_a_spider_retry(
    capsolver: CapSolverMock, single_use_site: str, gone: int
) -> None:
    capsolver.configure(faults=[{"fault": "wrong_text", "count": 1}])
    crawler = await crawl(
        SingleUseLoginSpider,
        solver_settings(capsolver),
        login_url=f"{single_use_site}/login?gone={gone}",
        mode="image",
    )
    spider = crawler.spider
    assert isinstance(spider, SingleUseLoginSpider)
    assert not spider.welcomed
    assert spider.attempts == [1]
    [(url, error)] = spider.errors
    # The image request's own errback gets it: the form's chain ended with the re-send.
    path = url.removeprefix(single_use_site)
    assert path.startswith("/captcha/")
    assert type(error) is CaptchaImageError
    message = str(error)
    assert f"The captcha image URL {url} answered HTTP {gone}" in message
    assert "(attempt 2)" in message
    assert "looks single-use" in message
    assert "page mode (solve_image={'selector': ...} on the page that carries the form)" in message
    assert "retry from the spider by requesting the form page again" in message
    # The gone image was fetched a second time and never paid for.
    assert image_fetches(single_use_site)[path] == 2
    assert len(capsolver.calls("createTask")) == 1
    assert stat(crawler, "capsolver/rejected") == 1
    assert stat(crawler, "capsolver/requested") == 1


@pytest_twisted.ensureDeferred
async def test_page_mode_logs_in_on_a_single_use_site(
    capsolver: CapSolverMock, single_use_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "wrong_text", "count": 1}])
    before = image_fetches(single_use_site)
    crawler = await crawl(
        SingleUseLoginSpider,
        solver_settings(capsolver),
        login_url=f"{single_use_site}/login",
        mode="page",
    )
    spider = crawler.spider
    assert isinstance(spider, SingleUseLoginSpider)
    assert (spider.errors, spider.welcomed) == ([], True)
    # The refused answer brought the page again: a new key, a new image, each fetched once.
    assert spider.attempts == [1, 2]
    fetched = {path: n for path, n in image_fetches(single_use_site).items() if path not in before}
    assert list(fetched.values()) == [1, 1]
    assert len(capsolver.calls("createTask")) == 2
    assert stat(crawler, "capsolver/rejected") == 1


@pytest_twisted.ensureDeferred
async def test_spider_side_retry_logs_in_on_a_single_use_site(
    capsolver: CapSolverMock, single_use_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "wrong_text", "count": 1}])
    crawler = await crawl(
        SingleUseLoginSpider,
        solver_settings(capsolver),
        login_url=f"{single_use_site}/login",
        mode="spider_retry",
    )
    spider = crawler.spider
    assert isinstance(spider, SingleUseLoginSpider)
    assert (spider.errors, spider.welcomed) == ([], True)
    # Two chains of one attempt each: the spider started over from a new form page.
    assert spider.attempts == [1, 1]
    assert len(capsolver.calls("createTask")) == 2


@pytest.mark.parametrize("gone", [410, 404])
@pytest_twisted.ensureDeferred
async def test_first_fetch_of_a_gone_image_gets_the_usual_message(
    capsolver: CapSolverMock, image_site: str, gone: int
) -> None:
    url = f"{image_site}/status/{gone}"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider = crawler.spider
    assert isinstance(spider, RecordingSpider)
    error = spider.errors[url]
    assert type(error) is CaptchaImageError
    assert str(error) == f"The captcha request {url} got HTTP {gone}, not an image."
    assert capsolver.calls("createTask") == []
