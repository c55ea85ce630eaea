"""Page mode: ``solve_image={"selector": ...}`` solves the captcha shown on an HTML page."""

from __future__ import annotations

import base64
from urllib.parse import quote

import pytest
import pytest_twisted
from captcha_spiders import ITEMS, PageLoginSpider
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.crawler import Crawler
from servers.image_site import captcha_image

from scrapy_capsolver_ocr import CaptchaImageError, CaptchaNotFoundError, CaptchaOptionsError


def html_page(body: str) -> str:
    """A page served by Scrapy itself (a data: URL): no server needed to hold odd markup."""
    return "data:text/html;charset=utf-8," + quote(f"<html><body>{body}</body></html>")


async def login_page_error(
    capsolver: CapSolverMock, demo_site: str, selector: object
) -> tuple[Crawler, BaseException]:
    """Crawls the demo login page with ``selector`` and returns the error its errback got."""
    crawler = await crawl(
        RecordingSpider,
        solver_settings(capsolver),
        urls=[demo_site + "/login"],
        meta={"solve_image": {"selector": selector}},
    )
    spider = crawler.spider
    assert isinstance(spider, RecordingSpider)
    return crawler, spider.errors[demo_site + "/login"]


@pytest_twisted.ensureDeferred
async def test_login_with_page_mode_and_injection(capsolver: CapSolverMock, demo_site: str) -> None:
    crawler = await crawl(PageLoginSpider, solver_settings(capsolver), site=demo_site)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.errors == {}
    assert (spider.landed, spider.items) == ({None: "/items"}, {None: ITEMS})
    [(attempt, text)] = spider.solved[None]
    assert attempt == 1 and len(text) == 4
    assert len(capsolver.calls("createTask")) == 1
    # The page's website URL goes with the task.
    assert capsolver.calls("createTask")[0]["body"]["task"]["websiteURL"] == demo_site + "/login"
    assert (stat(crawler, "capsolver/solved"), stat(crawler, "capsolver/injected")) == (1, 1)
    assert stat(crawler, "capsolver/rejected") == 0


@pytest_twisted.ensureDeferred
async def test_image_is_downloaded_in_the_pages_session_with_its_headers(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider,
        solver_settings(capsolver, DEFAULT_REQUEST_HEADERS={"X-Shop": "north"}),
        site=demo_site,
        jars=("alice",),
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.landed == {"alice": "/items"}
    [image] = spider.downloads_of("/captcha.png")
    assert image.meta["cookiejar"] == "alice"
    assert image.headers["Referer"] == (demo_site + "/login").encode()
    assert image.headers["X-Shop"] == b"north"
    assert (image.headers.get("Accept") or b"").startswith(b"image/")
    # The session cookie the page set came along: the site matched the answer to it.
    assert (image.headers.get("Cookie") or b"").startswith(b"TWISTED_SESSION=")


@pytest_twisted.ensureDeferred
async def test_inline_data_uri_captcha_is_decoded_in_place(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider, solver_settings(capsolver), site=demo_site, path="/login-inline"
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert (spider.errors, spider.landed) == ({}, {None: "/items"})
    assert spider.downloads_of("/captcha.png") == []
    assert len(capsolver.calls("createTask")) == 1


@pytest_twisted.ensureDeferred
async def test_relative_image_url_is_resolved_against_the_page(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider, solver_settings(capsolver), site=demo_site, path="/account/login"
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert (spider.errors, spider.landed) == ({}, {None: "/items"})
    assert len(spider.downloads_of("/captcha.png")) == 1


@pytest_twisted.ensureDeferred
async def test_selector_may_select_the_source_itself(
    capsolver: CapSolverMock, demo_site: str
) -> None:
    crawler = await crawl(
        PageLoginSpider,
        solver_settings(capsolver),
        site=demo_site,
        selector="img[alt=captcha]::attr(src)",
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert (spider.errors, spider.landed) == ({}, {None: "/items"})


@pytest.mark.parametrize(
    ("selector", "message"),
    [
        ("#no-such-element", "No element matches '#no-such-element'"),
        ("#login-form", "has no image (no src attribute)"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_page_without_the_captcha_goes_to_the_errback(
    capsolver: CapSolverMock, demo_site: str, selector: str, message: str
) -> None:
    _, error = await login_page_error(capsolver, demo_site, selector)
    assert isinstance(error, CaptchaNotFoundError)
    assert message in str(error)
    assert capsolver.calls("createTask") == []


@pytest_twisted.ensureDeferred
async def test_malformed_data_uri_is_an_image_error(capsolver: CapSolverMock) -> None:
    png = base64.b64encode(captcha_image("ab12")).decode()
    pages = [
        html_page('<img id="c" src="data:image/png;base64,not*base64!">'),
        html_page(f'<img id="c" src="data:image/png;base64,{png[:-7]}">'),  # cut short
        html_page(f'<img id="c" src="data:image/png;base64,{png}">'),
    ]
    crawler = await crawl(
        RecordingSpider,
        # Pages holding a whole image are longer than Scrapy lets links be by default.
        solver_settings(capsolver, URLLENGTH_LIMIT=0),
        urls=pages,
        meta={"solve_image": {"selector": "#c"}},
    )
    spider = crawler.spider
    assert isinstance(spider, RecordingSpider)
    bad, cut, good = pages
    assert isinstance(spider.errors[bad], CaptchaImageError)
    assert "base64 is malformed" in str(spider.errors[bad])
    assert isinstance(spider.errors[cut], CaptchaImageError)
    assert spider.texts == {good: "ab12"}
    assert len(capsolver.calls("createTask")) == 1


@pytest_twisted.ensureDeferred
async def test_failed_image_download_is_an_image_error(
    capsolver: CapSolverMock, image_site: str
) -> None:
    pages = [
        html_page(f'<img id="c" src="{image_site}/status/404">'),
        html_page(f'<img id="c" src="{image_site}/bad/html">'),
        html_page('<img id="c" src="http://127.0.0.1:9/captcha.png">'),  # nothing listens
        html_page(f'<img id="c" src="{image_site}/captcha/xy34.png">'),
    ]
    crawler = await crawl(
        RecordingSpider,
        solver_settings(capsolver),
        urls=pages,
        meta={"solve_image": {"selector": "#c"}},
    )
    spider = crawler.spider
    assert isinstance(spider, RecordingSpider)
    not_found, html, refused, good = pages
    assert "got HTTP 404" in str(spider.errors[not_found])
    assert "not a PNG, JPEG, GIF, BMP or WEBP image but an HTML page" in str(spider.errors[html])
    assert "Could not download the captcha" in str(spider.errors[refused])
    assert all(isinstance(spider.errors[url], CaptchaImageError) for url in pages[:3])
    assert spider.texts == {good: "xy34"}
    assert sum(spider.ended.values()) == len(pages)


@pytest_twisted.ensureDeferred
async def test_error_page_is_not_solved_unless_the_spider_handles_its_status(
    capsolver: CapSolverMock, image_site: str
) -> None:
    crawler = await crawl(
        RecordingSpider,
        solver_settings(capsolver),
        urls=[image_site + "/status/403"],
        meta={"solve_image": {"selector": "img"}},
    )
    spider = crawler.spider
    assert isinstance(spider, RecordingSpider)
    error = spider.errors[image_site + "/status/403"]
    assert isinstance(error, CaptchaImageError) and "HTTP 403" in str(error)
    # Allowed, the page is looked at (and this one has no captcha).
    crawler = await crawl(
        RecordingSpider,
        solver_settings(capsolver),
        urls=[image_site + "/status/403"],
        meta={"solve_image": {"selector": "img"}, "handle_httpstatus_list": [403]},
    )
    spider = crawler.spider
    assert isinstance(spider, RecordingSpider)
    assert isinstance(spider.errors[image_site + "/status/403"], CaptchaNotFoundError)


@pytest.mark.parametrize("selector", ["", "img[", 42])
@pytest_twisted.ensureDeferred
async def test_bad_selector_fails_before_the_download(
    capsolver: CapSolverMock, demo_site: str, selector: object
) -> None:
    crawler, error = await login_page_error(capsolver, demo_site, selector)
    assert isinstance(error, CaptchaOptionsError)
    assert "selector" in str(error)
    assert stat(crawler, "downloader/request_count") == 0
