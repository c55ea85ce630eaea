"""``captcha_field``: the solved text put into the follow-up form, once, in its session."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
import pytest_twisted
import scrapy
from captcha_spiders import CREDENTIALS, ITEMS, ImageLoginSpider, PageLoginSpider, form_from
from conftest import CapSolverMock
from crawling import crawl, solver_settings, stat
from scrapy.http import FormRequest, JsonRequest, Response
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaInjectionError, CaptchaOptionsError

Step = Callable[["StepsSpider", Response], Iterable[scrapy.Request]]


class StepsSpider(scrapy.Spider):
    """Sends ``first``; each response goes to the next step, which returns the requests to
    send next; the last step's responses and every error are recorded by ``label``
    (``meta["label"]``)."""

    name = "steps"

    def __init__(self, first: list[scrapy.Request], steps: list[Step], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.first = first
        self.steps = steps
        self.responses: dict[str, Response] = {}
        self.errors: dict[str, BaseException | None] = {}

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for request in self.first:
            yield self.wire(request, 0)

    def wire(self, request: scrapy.Request, step: int) -> scrapy.Request:
        return request.replace(
            callback=self.parse, errback=self.failed, cb_kwargs={"step": step}, dont_filter=True
        )

    def parse(self, response: Response, step: int) -> Iterable[scrapy.Request]:
        if step == len(self.steps):
            self.responses[response.meta["label"]] = response
            return
        for request in self.steps[step](self, response):
            yield self.wire(request, step + 1)

    def failed(self, failure: Failure) -> None:
        self.errors[failure.request.meta["label"]] = failure.value  # type: ignore[attr-defined]


async def run_steps(
    capsolver: CapSolverMock,
    first: list[scrapy.Request],
    *steps: Step,
    **settings: Any,
) -> tuple[StepsSpider, Any]:
    crawler = await crawl(
        StepsSpider, solver_settings(capsolver, **settings), first=first, steps=list(steps)
    )
    spider = crawler.spider
    assert isinstance(spider, StepsSpider)
    return spider, crawler


def query(url: str) -> list[tuple[str, str]]:
    return parse_qsl(urlsplit(url).query, keep_blank_values=True)


@pytest_twisted.ensureDeferred
async def test_explicit_flow_image_request_then_form(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    crawler = await crawl(ImageLoginSpider, solver_settings(capsolver), site=demo_site)
    spider = crawler.spider
    assert isinstance(spider, ImageLoginSpider)
    assert spider.errors == {}
    assert (spider.landed, spider.items) == ({None: "/items"}, {None: ITEMS})
    assert (stat(crawler, "capsolver/solved"), stat(crawler, "capsolver/injected")) == (1, 1)


@pytest_twisted.ensureDeferred
async def test_get_form_gets_the_answer_in_its_query_string(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    built: list[str] = []

    def search(spider: StepsSpider, page: Response) -> list[scrapy.Request]:
        form = form_from(page, formcss="#search-form", formdata={"q": "watch"})
        form.meta.update(captcha_field="captcha", captcha_retry_if="Wrong captcha", label="s")
        built.append(form.url)
        return [form]

    page = scrapy.Request(
        demo_site + "/search", meta={"solve_image": {"selector": "#captcha-image"}}
    )
    spider, crawler = await run_steps(capsolver, [page], search)
    assert spider.errors == {}
    results = spider.responses["s"]
    assert results.css("#results li::text").getall() == ["Pocket watch"]
    # Only the captcha's value changed; the fields kept the order the form gave them.
    answer = dict(query(results.url))["captcha"]
    assert len(answer) == 4
    assert query(results.url) == [
        (name, answer if name == "captcha" else value) for name, value in query(built[0])
    ]
    assert stat(crawler, "capsolver/injected") == 1


@pytest_twisted.ensureDeferred
async def test_json_body_gets_the_answer_in_its_key(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    def log_in(spider: StepsSpider, image: Response) -> list[scrapy.Request]:
        data = {**CREDENTIALS, "captcha": "", "remember": True}

        def refused(response: Response) -> bool:
            return not json.loads(response.text)["ok"]

        meta = {"captcha_field": "captcha", "captcha_retry_if": refused, "label": "api"}
        return [JsonRequest(demo_site + "/api/login", data=data, meta=meta)]

    image = scrapy.Request(demo_site + "/captcha.png", meta={"solve_image": True})
    spider, crawler = await run_steps(capsolver, [image], log_in)
    assert spider.errors == {}
    answer = spider.responses["api"]
    assert json.loads(answer.text) == {"ok": True, "next": "/items"}
    sent = json.loads(answer.request.body)  # type: ignore[union-attr]
    assert list(sent) == ["captcha", "password", "remember", "username"]  # sorted, as dumped
    assert sent["remember"] is True and len(sent["captcha"]) == 4
    assert stat(crawler, "capsolver/injected") == 1


@pytest_twisted.ensureDeferred
async def test_other_fields_keep_their_order_and_encoding(
    capsolver: CapSolverMock, image_site: str
) -> None:
    allow = {"handle_httpstatus_all": True}  # the site answers POST with 405: fine here
    formdata = [("name", "Zoë"), ("captcha", "old"), ("note", "1&2 = 3"), ("captcha", "dup")]
    latin1 = FormRequest(
        image_site + "/page/1",
        formdata=formdata,
        encoding="latin-1",
        meta={**allow, "captcha_field": "captcha", "captcha_solution": "ab CD", "label": "l"},
    )
    # What form2request builds (Scrapy 2.19's advice): a plain urlencoded Request.
    plain = scrapy.Request(
        image_site + "/page/1",
        method="POST",
        body=b"csrf=x%2By&user=demo",
        headers={"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"},
        meta={**allow, "captcha_field": "captcha", "captcha_solution": "é1", "label": "p"},
    )
    spider, crawler = await run_steps(capsolver, [latin1, plain])
    assert spider.errors == {}
    sent = {label: response.request.body for label, response in spider.responses.items()}  # type: ignore[union-attr]
    assert sent == {
        "l": b"name=Zo%EB&captcha=ab+CD&note=1%262+%3D+3",
        "p": b"csrf=x%2By&user=demo&captcha=%C3%A91",
    }
    assert stat(crawler, "capsolver/injected") == 2


@pytest_twisted.ensureDeferred
async def test_no_solution_fails_the_request_unsent(
    capsolver: CapSolverMock, image_site: str
) -> None:
    form = FormRequest(
        image_site + "/page/1",
        method="GET",
        formdata={"captcha": ""},
        meta={"captcha_field": "captcha", "label": "form"},
    )
    spider, crawler = await run_steps(capsolver, [form])
    error = spider.errors["form"]
    assert isinstance(error, CaptchaInjectionError)
    assert "No solved captcha to put into 'captcha'" in str(error)
    assert stat(crawler, "downloader/request_count") == 0


@pytest_twisted.ensureDeferred
async def test_a_solution_is_injected_once(capsolver: CapSolverMock, image_site: str) -> None:
    def two_forms(spider: StepsSpider, image: Response) -> list[scrapy.Request]:
        return [
            FormRequest(
                f"{image_site}/page/{n}",
                method="GET",
                formdata={"captcha": ""},
                meta={"captcha_field": "captcha", "label": str(n)},
            )
            for n in (1, 2)
        ]

    image = scrapy.Request(image_site + "/captcha/ab12.png", meta={"solve_image": True})
    spider, crawler = await run_steps(capsolver, [image], two_forms)
    [(label, response)] = spider.responses.items()
    assert query(response.url) == [("captcha", "ab12")]
    [(other, error)] = spider.errors.items()
    assert {label, other} == {"1", "2"}
    assert isinstance(error, CaptchaInjectionError)
    assert stat(crawler, "capsolver/injected") == 1


@pytest.mark.parametrize(
    ("request_kwargs", "message"),
    [
        (
            {"method": "POST", "body": b"captcha=", "headers": {"Content-Type": "text/plain"}},
            "its body is text/plain",
        ),
        (
            {
                "method": "POST",
                "body": b"--b\r\n",
                "headers": {"Content-Type": "multipart/form-data; boundary=b"},
            },
            "its body is multipart/form-data",
        ),
        ({"method": "POST"}, "its body is of no declared type"),
        (
            {"method": "POST", "body": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
            "is a list, not an object",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_body_that_cannot_take_the_answer_is_an_error(
    capsolver: CapSolverMock, image_site: str, request_kwargs: dict[str, Any], message: str
) -> None:
    form = scrapy.Request(
        image_site + "/page/1",
        meta={"captcha_field": "captcha", "captcha_solution": "ab12", "label": "form"},
        **request_kwargs,
    )
    spider, crawler = await run_steps(capsolver, [form])
    error = spider.errors["form"]
    assert isinstance(error, CaptchaInjectionError)
    assert message in str(error)
    assert stat(crawler, "downloader/request_count") == 0


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"captcha_field": 7}, "meta['captcha_field'] must be the name of a form field"),
        ({"captcha_field": "c", "captcha_solution": 7}, "must be a CaptchaSolution or"),
        ({"captcha_retry_if": "Wrong"}, "needs meta['captcha_field']"),
        ({"captcha_field": "c", "captcha_retry_if": "(unclosed"}, "not a valid regular"),
        ({"captcha_field": "c", "captcha_retry_if": 3}, "must be a regular expression"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_meta_values_fail_before_the_download(
    capsolver: CapSolverMock, image_site: str, meta: dict[str, Any], message: str
) -> None:
    form = scrapy.Request(image_site + "/page/1", meta={**meta, "label": "form"})
    spider, crawler = await run_steps(capsolver, [form])
    error = spider.errors["form"]
    assert isinstance(error, CaptchaOptionsError)
    assert message in str(error)
    assert stat(crawler, "downloader/request_count") == 0


@pytest_twisted.ensureDeferred
async def test_two_sessions_log_in_at_once_each_with_its_own_answer(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    crawler = await crawl(PageLoginSpider, solver_settings(capsolver), site=demo_site, jars=(1, 2))
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.errors == {}
    assert spider.landed == {1: "/items", 2: "/items"}
    assert [attempt for jar in (1, 2) for attempt, _ in spider.solved[jar]] == [1, 1]
    assert (stat(crawler, "capsolver/injected"), stat(crawler, "capsolver/rejected")) == (2, 0)


@pytest_twisted.ensureDeferred
async def test_same_image_in_two_sessions_is_paid_once_and_given_to_both(
    capsolver: CapSolverMock, image_site: str
) -> None:
    def form(spider: StepsSpider, image: Response) -> list[scrapy.Request]:
        jar = image.meta["cookiejar"]
        meta = {"captcha_field": "captcha", "cookiejar": jar, "label": str(jar)}
        return [FormRequest(image_site + "/page/1", method="GET", formdata={"q": "x"}, meta=meta)]

    images = [
        scrapy.Request(
            image_site + "/captcha/same.png", meta={"solve_image": True, "cookiejar": jar}
        )
        for jar in (1, 2)
    ]
    spider, crawler = await run_steps(capsolver, images, form)
    assert spider.errors == {}
    assert {label: query(r.url) for label, r in spider.responses.items()} == {
        "1": [("q", "x"), ("captcha", "same")],
        "2": [("q", "x"), ("captcha", "same")],
    }
    assert len(capsolver.calls("createTask")) == 1
    shared = stat(crawler, "capsolver/shared_call") + stat(crawler, "capsolver/cache_hit")
    assert shared == 1


@pytest_twisted.ensureDeferred
async def test_url_patterns_solve_image_responses_without_the_flag(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    # /login matches too, but it is an HTML page: passed on untouched.
    settings = solver_settings(capsolver, CAPSOLVER_URL_PATTERNS=[r"/login$", r"/captcha\.png$"])
    crawler = await crawl(ImageLoginSpider, settings, site=demo_site, solve_image=None)
    spider = crawler.spider
    assert isinstance(spider, ImageLoginSpider)
    assert (spider.errors, spider.landed) == ({}, {None: "/items"})
    assert [attempt for attempt, _ in spider.solved[None]] == [1]
    assert stat(crawler, "capsolver/requested") == 1


@pytest_twisted.ensureDeferred
async def test_page_mode_image_download_is_not_solved_twice_by_url_patterns(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    settings = solver_settings(capsolver, CAPSOLVER_URL_PATTERNS=[r"/captcha\.png$"])
    crawler = await crawl(PageLoginSpider, settings, site=demo_site)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.landed == {None: "/items"}
    assert stat(crawler, "capsolver/requested") == 1


@pytest_twisted.ensureDeferred
async def test_solve_image_false_is_not_matched_by_url_patterns(
    capsolver: CapSolverMock, image_site: str
) -> None:
    image = scrapy.Request(
        image_site + "/captcha/ab12.png", meta={"solve_image": False, "label": "image"}
    )
    settings = {"CAPSOLVER_URL_PATTERNS": [r"/captcha/"]}
    spider, crawler = await run_steps(capsolver, [image], **settings)
    assert "captcha_text" not in spider.responses["image"].meta
    assert stat(crawler, "capsolver/requested") == 0
