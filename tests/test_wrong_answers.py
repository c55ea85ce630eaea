"""``captcha_retry_if``: a rejected answer is reported and the captcha solved again, up to
``CAPSOLVER_MAX_ATTEMPTS`` times, with a fresh captcha from the spider's own callbacks."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest_twisted
import scrapy
from captcha_spiders import ITEMS, ImageLoginSpider, PageLoginSpider
from conftest import CapSolverMock
from crawling import crawl, solver_settings, stat
from scrapy.http import FormRequest, Response
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaRejectedError


@pytest_twisted.ensureDeferred
async def test_rejected_answers_are_reported_and_solved_again_until_accepted(
    capsolver: CapSolverMock, rejecting_demo_site: str
) -> None:
    crawler = await crawl(PageLoginSpider, solver_settings(capsolver), site=rejecting_demo_site)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.errors == {}
    assert (spider.landed, spider.items) == ({None: "/items"}, {None: ITEMS})
    # The site refused two answers: the page callback ran three times, with new captchas.
    assert [attempt for attempt, _ in spider.solved[None]] == [1, 2, 3]
    assert len({text for _, text in spider.solved[None]}) == 3
    assert [r.method for r in spider.downloads_of("/login")] == ["GET", "POST"] * 3
    feedback = capsolver.calls("feedbackTask")
    assert len(feedback) == 2
    assert feedback[0]["body"]["result"]["invalid"] is True
    assert len({call["body"]["taskId"] for call in feedback}) == 2
    assert len(capsolver.calls("createTask")) == 3
    assert stat(crawler, "capsolver/rejected") == 2
    assert stat(crawler, "capsolver/feedback_sent") == 2
    assert stat(crawler, "capsolver/injected") == 3
    assert stat(crawler, "capsolver/gave_up") == 0


@pytest_twisted.ensureDeferred
async def test_gives_up_after_max_attempts(
    capsolver: CapSolverMock, rejecting_demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider,
        solver_settings(capsolver, CAPSOLVER_MAX_ATTEMPTS=2),
        site=rejecting_demo_site,
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.landed == {}
    error = spider.errors[None]
    assert isinstance(error, CaptchaRejectedError)
    assert "rejected the captcha answers 2 times in a row" in str(error)
    assert "CAPSOLVER_MAX_ATTEMPTS = 2" in str(error)
    assert [attempt for attempt, _ in spider.solved[None]] == [1, 2]
    assert len(capsolver.calls("feedbackTask")) == 2
    assert (stat(crawler, "capsolver/rejected"), stat(crawler, "capsolver/gave_up")) == (2, 1)


@pytest_twisted.ensureDeferred
async def test_explicit_flow_requests_the_image_again(
    capsolver: CapSolverMock, rejecting_demo_site: str
) -> None:
    crawler = await crawl(
        ImageLoginSpider, solver_settings(capsolver), site=rejecting_demo_site, jars=("a",)
    )
    spider = crawler.spider
    assert isinstance(spider, ImageLoginSpider)
    assert (spider.errors, spider.landed) == ({}, {"a": "/items"})
    assert [attempt for attempt, _ in spider.solved["a"]] == [1, 2, 3]
    # The login page once, its image three times: the image request is the one re-sent.
    assert [r.method for r in spider.downloads_of("/login")] == ["GET", "POST", "POST", "POST"]
    assert len(spider.downloads_of("/captcha.png")) == 3
    assert len(capsolver.calls("feedbackTask")) == 2


@pytest_twisted.ensureDeferred
async def test_no_report_when_report_wrong_is_off(
    capsolver: CapSolverMock, rejecting_demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider,
        solver_settings(capsolver, CAPSOLVER_REPORT_WRONG=False),
        site=rejecting_demo_site,
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.landed == {None: "/items"}
    assert capsolver.calls("feedbackTask") == []
    assert stat(crawler, "capsolver/rejected") == 2


@pytest_twisted.ensureDeferred
async def test_callable_retry_if_sees_the_response_and_its_meta(
    capsolver: CapSolverMock, rejecting_demo_site: str
) -> None:
    seen: list[tuple[str, Any]] = []

    def refused(response: Response) -> bool:
        seen.append((urlsplit(response.url).path, response.meta.get("captcha_field")))
        return "Wrong captcha" in response.text

    crawler = await crawl(
        PageLoginSpider, solver_settings(capsolver), site=rejecting_demo_site, retry_if=refused
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.landed == {None: "/items"}
    assert seen == [("/login", "captcha"), ("/login", "captcha"), ("/items", "captcha")]


@pytest_twisted.ensureDeferred
async def test_two_sessions_retry_at_once_without_mixing_answers(
    capsolver: CapSolverMock, rejecting_demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider, solver_settings(capsolver), site=rejecting_demo_site, jars=(1, 2)
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.errors == {}
    assert spider.landed == {1: "/items", 2: "/items"}
    for jar in (1, 2):
        assert [attempt for attempt, _ in spider.solved[jar]] == [1, 2, 3]
    assert (stat(crawler, "capsolver/rejected"), len(capsolver.calls("feedbackTask"))) == (4, 4)


class CachedImageSpider(scrapy.Spider):
    """Solves one fixed image, sends its answer in a GET form that counts an answer
    starting with "wrong" as rejected, then asks for the same image once more."""

    name = "cached_image"

    def __init__(self, image_url: str, form_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.image_url = image_url
        self.form_url = form_url
        self.sent: list[str] = []
        self.texts: list[str] = []
        self.errors: list[BaseException | None] = []

    async def start(self) -> AsyncIterator[scrapy.Request]:
        yield scrapy.Request(
            self.image_url, meta={"solve_image": True}, callback=self.parse_image, dont_filter=True
        )

    def parse_image(self, response: Response) -> Iterable[scrapy.Request]:
        self.texts.append(response.meta["captcha_text"])
        yield FormRequest(
            self.form_url,
            method="GET",
            formdata={"captcha": ""},
            meta={
                "captcha_field": "captcha",
                "captcha_retry_if": lambda form: "captcha=wrong" in form.url,
            },
            callback=self.accepted,
            errback=self.failed,
        )

    def accepted(self, response: Response) -> Iterable[scrapy.Request]:
        self.sent.append(dict(parse_qsl(urlsplit(response.url).query))["captcha"])
        yield scrapy.Request(
            self.image_url, meta={"solve_image": True}, callback=self.again, dont_filter=True
        )

    def again(self, response: Response) -> None:
        self.texts.append(response.meta["captcha_text"])

    def failed(self, failure: Failure) -> None:
        self.errors.append(failure.value)


@pytest_twisted.ensureDeferred
async def test_rejected_answer_leaves_the_cache(capsolver: CapSolverMock, image_site: str) -> None:
    # The first answer for the image is wrong; the site would send the same image again.
    capsolver.configure(faults=[{"fault": "wrong_text", "count": 1}])
    crawler = await crawl(
        CachedImageSpider,
        solver_settings(capsolver),
        image_url=image_site + "/captcha/fixed.png",
        form_url=image_site + "/page/1",
    )
    spider = crawler.spider
    assert isinstance(spider, CachedImageSpider)
    assert spider.errors == []
    wrong = "wrong" + "fixed"[::-1]
    # Rejected, solved again by a new task (not the cached wrong answer), then the right
    # answer is cached: the last solve of the same image is free.
    assert spider.texts == [wrong, "fixed", "fixed"]
    assert spider.sent == ["fixed"]
    assert len(capsolver.calls("createTask")) == 2
    assert len(capsolver.calls("feedbackTask")) == 1
    assert stat(crawler, "capsolver/cache_hit") == 1
    assert stat(crawler, "capsolver/rejected") == 1
