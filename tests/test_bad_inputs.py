"""Wrong inputs fail their request with a clear error and cost no API call."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from conftest import CapSolverMock, closed_port_url
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy import Request
from scrapy.exceptions import IgnoreRequest

from scrapy_capsolver_ocr import CaptchaImageError, CaptchaOptionsError
from scrapy_capsolver_ocr.images import check_image, image_type


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("bad/empty", "is empty"),
        ("bad/html", "an HTML page"),
        ("bad/truncated", "truncated"),
        ("bad/svg", "SVG"),
        ("bad/big", "larger than CAPSOLVER_MAX_IMAGE_SIZE"),
        ("bad/json", "JSON"),
        ("status/404", "HTTP 404"),
        ("status/503", "HTTP 503"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_image_response_fails_without_api_call(
    capsolver: CapSolverMock, image_site: str, path: str, message: str
) -> None:
    url = f"{image_site}/{path}"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    error = spider.errors[url]
    assert isinstance(error, CaptchaImageError)
    assert message in str(error)
    assert capsolver.calls() == []
    assert stat(crawler, "capsolver/task_count") == 0
    assert stat(crawler, "finish_reason") == "finished"


@pytest.mark.parametrize(
    ("solve_image", "message"),
    [
        (True, "Could not download the captcha http://"),
        ({"selector": "img"}, "Could not download the page http://"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_download_that_fails_after_scrapys_retries_is_a_captcha_image_error(
    capsolver: CapSolverMock, solve_image: Any, message: str
) -> None:
    url = f"{closed_port_url()}/captcha/refused.png"
    settings = solver_settings(capsolver, RETRY_ENABLED=True, RETRY_TIMES=2)
    crawler = await crawl(RecordingSpider, settings, urls=[url], meta={"solve_image": solve_image})
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    error = spider.errors[url]
    assert isinstance(error, CaptchaImageError)
    assert message in str(error)
    # Twisted's ConnectionRefusedError, or Scrapy's DownloadConnectionRefusedError (2.14+).
    assert type(error.__cause__).__name__.endswith("ConnectionRefusedError")
    assert "ConnectionRefusedError: " in str(error)
    assert stat(crawler, "retry/count") == 2  # Scrapy retried it before it failed
    assert capsolver.calls() == []


class DropsEveryRequest:
    """A project's middleware that drops requests on purpose, as robots.txt rules do."""

    def process_request(self, request: Request, spider: Any = None) -> None:
        raise IgnoreRequest(f"dropped {request.url}")


@pytest_twisted.ensureDeferred
async def test_a_request_dropped_on_purpose_reaches_its_errback_as_scrapy_sent_it(
    capsolver: CapSolverMock, image_site: str
) -> None:
    url = f"{image_site}/captcha/dropped.png"
    settings = solver_settings(
        capsolver, DOWNLOADER_MIDDLEWARES={f"{__name__}.DropsEveryRequest": 600}
    )
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    assert type(spider.errors[url]) is IgnoreRequest
    assert capsolver.calls() == []
    assert stat(crawler, "downloader/request_count") == 0


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("yes", "must be True or a dict"),
        (1, "must be True or a dict"),
        (["module"], "must be True or a dict"),
        ({"modul": "number"}, "unknown option(s) 'modul'"),
        ({"score": 0.5}, "score'] = 0.5"),
        ({"module": ""}, "module']"),
        ({"website_url": "ftp://x"}, "website_url']"),
        ({"selector": "img[src"}, "not a valid CSS selector"),
        ({"selector": "img:visible"}, "not a valid CSS selector"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_solve_image_value_fails_before_download(
    capsolver: CapSolverMock, image_site: str, value: Any, message: str
) -> None:
    url = f"{image_site}/captcha/opt1.png"
    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver), urls=[url], meta={"solve_image": value}
    )
    spider: Any = crawler.spider
    assert spider.ended == {url: 1}
    error = spider.errors[url]
    assert isinstance(error, CaptchaOptionsError)
    assert message.replace("] = ", "]=") in str(error)
    assert capsolver.calls() == []
    assert stat(crawler, "downloader/request_count") == 0


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        ({"captcha_attempt": 0}, "captcha_attempt"),
        ({"captcha_attempt": "2"}, "captcha_attempt"),
        ({"captcha_field": 3}, "captcha_field"),
        ({"captcha_retry_if": "Wrong"}, "needs meta['captcha_field']"),
        ({"captcha_field": "c", "captcha_retry_if": "(unclosed"}, "not a valid regular"),
        ({"captcha_field": "c", "captcha_solution": 42}, "captcha_solution"),
        ({"cookiejar": ["unhashable"]}, "cookiejar"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_wrong_captcha_meta_fails_before_download(
    capsolver: CapSolverMock, image_site: str, meta: dict[str, Any], message: str
) -> None:
    url = f"{image_site}/captcha/meta1.png"
    crawler = await crawl(
        RecordingSpider,
        solver_settings(capsolver),
        urls=[url],
        meta={"solve_image": True, **meta},
    )
    spider: Any = crawler.spider
    assert spider.ended == {url: 1}
    error = spider.errors[url]
    assert isinstance(error, CaptchaOptionsError)
    assert message in str(error)
    assert capsolver.calls() == []
    assert stat(crawler, "downloader/request_count") == 0


@pytest.mark.parametrize(
    ("head", "kind"),
    [
        (b"\x89PNG\r\n\x1a\n", "png"),
        (b"\xff\xd8\xff\xe0", "jpeg"),
        (b"GIF89a", "gif"),
        (b"GIF87a", "gif"),
        (b"BM" + b"\x00" * 20, "bmp"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "webp"),
        (b"<html>", None),
        (b"", None),
    ],
)
def test_image_type_is_judged_by_magic_bytes(head: bytes, kind: str | None) -> None:
    assert image_type(head) == kind


def test_size_limit_is_inclusive() -> None:
    png = b"\x89PNG\r\n\x1a\n" + b"\x00" * 10 + b"IEND\xaeB`\x82"
    assert check_image(png, len(png), "x") == "png"
    with pytest.raises(CaptchaImageError, match="over CAPSOLVER_MAX_IMAGE_SIZE"):
        check_image(png, len(png) - 1, "x")
