"""Spiders that log in on the demo site through its captcha, the ways the README shows."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import AsyncIterator, Hashable
from typing import Any
from urllib.parse import urlsplit

import scrapy
from scrapy import signals
from scrapy.crawler import Crawler
from scrapy.exceptions import ScrapyDeprecationWarning
from scrapy.http import FormRequest, Response, TextResponse
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaSolution

CREDENTIALS = {"username": "demo", "password": "demo"}
WRONG_CAPTCHA = "Wrong captcha"
ITEMS = ["Brass compass", "Pocket watch", "Oil lamp", "Sextant", "Telescope", "Ship in a bottle"]


def form_from(response: Response, **kwargs: Any) -> FormRequest:
    """``FormRequest.from_response``: what spiders on Scrapy 2.13-2.18 use to fill forms.
    Scrapy 2.19 deprecates it for the form2request package, whose requests are urlencoded
    ``Request`` objects, which the injection tests build directly."""
    assert isinstance(response, TextResponse)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ScrapyDeprecationWarning)
        return FormRequest.from_response(response, **kwargs)


def jar_meta(jar: Hashable) -> dict[str, Any]:
    return {} if jar is None else {"cookiejar": jar}


class CaptchaSpider(scrapy.Spider):
    """Records, per session (cookiejar), the captchas solved, where the login landed and the
    errors; and every request that reached the downloader."""

    name = "captcha"

    def __init__(self, site: str, jars: tuple[Hashable, ...] = (None,), **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.jars = jars
        self.solved: defaultdict[Hashable, list[tuple[int, str]]] = defaultdict(list)
        self.solutions: defaultdict[Hashable, list[CaptchaSolution]] = defaultdict(list)
        self.landed: dict[Hashable, str] = {}
        self.items: dict[Hashable, list[str]] = {}
        self.errors: dict[Hashable, BaseException | None] = {}
        self.downloaded: list[scrapy.Request] = []

    @classmethod
    def from_crawler(cls, crawler: Crawler, *args: Any, **kwargs: Any) -> CaptchaSpider:
        spider: CaptchaSpider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.reached, signal=signals.request_reached_downloader)
        return spider

    def reached(self, request: scrapy.Request, spider: scrapy.Spider) -> None:
        self.downloaded.append(request)

    def record_solve(self, response: Response) -> None:
        jar = response.meta.get("cookiejar")
        self.solved[jar].append((response.meta["captcha_attempt"], response.meta["captcha_text"]))
        self.solutions[jar].append(response.meta["captcha_solution"])

    def logged_in(self, response: Response) -> None:
        jar = response.meta.get("cookiejar")
        self.landed[jar] = urlsplit(response.url).path
        self.items[jar] = response.css("#items a::text").getall()

    def failed(self, failure: Failure) -> None:
        jar = failure.request.meta.get("cookiejar")  # type: ignore[attr-defined]
        self.errors[jar] = failure.value

    def downloads_of(self, path: str) -> list[scrapy.Request]:
        return [r for r in self.downloaded if urlsplit(r.url).path == path]


class PageLoginSpider(CaptchaSpider):
    """Page mode: the login page's captcha is solved, its answer put into the form."""

    name = "page_login"

    def __init__(
        self,
        site: str,
        path: str = "/login",
        selector: str = "#captcha-image",
        retry_if: Any = WRONG_CAPTCHA,
        options: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(site, **kwargs)
        self.path = path
        self.selector = selector
        self.retry_if = retry_if
        self.options = options or {}

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for jar in self.jars:
            yield self.login_page(jar)

    def login_page(self, jar: Hashable) -> scrapy.Request:
        return scrapy.Request(
            self.site + self.path,
            meta={"solve_image": {"selector": self.selector, **self.options}, **jar_meta(jar)},
            callback=self.parse_form,
            errback=self.failed,
            dont_filter=True,
        )

    def parse_form(self, response: Response) -> FormRequest:
        self.record_solve(response)
        return form_from(
            response,
            formcss="#login-form",
            formdata=CREDENTIALS,
            meta={
                "captcha_field": "captcha",
                "captcha_retry_if": self.retry_if,
                **jar_meta(response.meta.get("cookiejar")),
            },
            callback=self.logged_in,
            errback=self.failed,
        )


class ImageLoginSpider(CaptchaSpider):
    """The explicit flow: the login page, then its captcha image as a request of its own,
    then the form with the answer put in."""

    name = "image_login"

    def __init__(self, site: str, solve_image: Any = True, **kwargs: Any) -> None:
        super().__init__(site, **kwargs)
        self.solve_image = solve_image

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for jar in self.jars:
            yield scrapy.Request(
                self.site + "/login",
                meta=jar_meta(jar),
                callback=self.parse_page,
                errback=self.failed,
                dont_filter=True,
            )

    def parse_page(self, response: Response) -> scrapy.Request:
        meta = jar_meta(response.meta.get("cookiejar"))
        if self.solve_image is not None:
            meta["solve_image"] = self.solve_image
        return scrapy.Request(
            response.urljoin(response.css("#captcha-image::attr(src)").get("")),
            meta=meta,
            callback=self.parse_captcha,
            errback=self.failed,
            cb_kwargs={"page": response},
            dont_filter=True,
        )

    def parse_captcha(self, response: Response, page: Response) -> FormRequest:
        self.record_solve(response)
        return form_from(
            page,
            formcss="#login-form",
            formdata=CREDENTIALS,
            meta={
                "captcha_field": "captcha",
                "captcha_retry_if": WRONG_CAPTCHA,
                **jar_meta(response.meta.get("cookiejar")),
            },
            callback=self.logged_in,
            errback=self.failed,
        )
