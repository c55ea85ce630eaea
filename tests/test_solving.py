"""The happy path: a captcha response is solved and handed to the callback."""

from __future__ import annotations

import base64
import hashlib
import urllib.request
from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import API_KEY, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.http import Response

from scrapy_capsolver_ocr import CaptchaOptionsError, CaptchaSolution, get_solver


def fetch(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return bytes(answer.read())


@pytest_twisted.ensureDeferred
async def test_solution_reaches_the_callback(capsolver: CapSolverMock, image_site: str) -> None:
    url = f"{image_site}/captcha/ab12.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    assert spider.texts == {url: "ab12"}
    solution = spider.solutions[url]
    assert isinstance(solution, CaptchaSolution)
    assert solution.image_sha256 == hashlib.sha256(fetch(url)).hexdigest()
    assert solution.task_id
    assert stat(crawler, "capsolver/requested") == 1
    assert stat(crawler, "capsolver/solved") == 1
    assert stat(crawler, "capsolver/task_count") == 1
    assert stat(crawler, "finish_reason") == "finished"


@pytest_twisted.ensureDeferred
async def test_create_task_body_is_exactly_the_documented_one(
    capsolver: CapSolverMock, image_site: str
) -> None:
    url = f"{image_site}/captcha/zz99.png"
    await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])

    (call,) = capsolver.calls()
    assert call["body"] == {
        "clientKey": API_KEY,
        "task": {"type": "ImageToTextTask", "body": base64.b64encode(fetch(url)).decode()},
    }
    assert "\n" not in call["body"]["task"]["body"]


@pytest_twisted.ensureDeferred
async def test_settings_and_request_options_fill_the_optional_fields(
    capsolver: CapSolverMock, image_site: str
) -> None:
    settings = solver_settings(
        capsolver, CAPSOLVER_MODULE="common", CAPSOLVER_SCORE=0.9, CAPSOLVER_APP_ID="app-1"
    )
    plain = f"{image_site}/captcha/aaaa.png"
    custom = f"{image_site}/captcha/bbbb.png"

    class Spider(RecordingSpider):
        async def start(self) -> Any:
            yield scrapy.Request(
                plain,
                headers={"Referer": "https://example.com/login"},
                meta={"solve_image": True},
                callback=self.parse,
            )
            yield scrapy.Request(
                custom,
                meta={
                    "solve_image": {
                        "module": "number",
                        "score": 0.85,
                        "website_url": "https://example.com/form",
                    }
                },
                callback=self.parse,
            )

    await crawl(Spider, settings, urls=[])

    by_text = {c["body"]["task"]["body"]: c["body"] for c in capsolver.calls()}
    first = by_text[base64.b64encode(fetch(plain)).decode()]
    second = by_text[base64.b64encode(fetch(custom)).decode()]
    assert first["appId"] == "app-1"
    assert {k: v for k, v in first["task"].items() if k != "body"} == {
        "type": "ImageToTextTask",
        "module": "common",
        "score": 0.9,
        "websiteURL": "https://example.com/login",
    }
    assert {k: v for k, v in second["task"].items() if k != "body"} == {
        "type": "ImageToTextTask",
        "module": "number",
        "score": 0.85,
        "websiteURL": "https://example.com/form",
    }


@pytest.mark.parametrize("ext", ["jpg", "gif", "bmp", "webp"])
@pytest_twisted.ensureDeferred
async def test_every_raster_format_is_solved(
    capsolver: CapSolverMock, image_site: str, ext: str
) -> None:
    url = f"{image_site}/captcha/fmt1.{ext}"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider: Any = crawler.spider
    assert spider.ended == {url: 1}
    assert url in spider.texts
    assert len(capsolver.calls()) == 1


@pytest_twisted.ensureDeferred
async def test_requests_that_do_not_ask_are_untouched(
    capsolver: CapSolverMock, image_site: str
) -> None:
    urls = [f"{image_site}/page/1", f"{image_site}/captcha/nope.png"]
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=urls, meta={})
    spider: Any = crawler.spider
    assert spider.ended == {urls[0]: 1, urls[1]: 1}
    assert spider.texts == {}
    assert capsolver.calls() == []


@pytest_twisted.ensureDeferred
async def test_concurrency_bounds_the_calls_in_flight(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(latency=0.3)
    urls = [f"{image_site}/captcha/c{i}.png" for i in range(8)]
    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver, CAPSOLVER_CONCURRENCY=2), urls=urls
    )
    spider: Any = crawler.spider
    assert len(spider.texts) == 8
    assert capsolver.max_in_flight() == 2


@pytest_twisted.ensureDeferred
async def test_same_image_is_paid_once_cached_or_in_flight(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(latency=0.3)
    same = f"{image_site}/captcha/same.png"
    # Three requests for one image at once share one call; a later one hits the cache.
    urls = [same + f"?copy={i}" for i in range(3)]
    late = same + "?copy=late"

    async def then_late(spider: RecordingSpider, response: Response) -> None:
        if response.url == urls[0]:
            spider.crawler.engine.crawl(
                scrapy.Request(
                    late, meta={"solve_image": True}, callback=spider.parse, errback=spider.failed
                )
            )

    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver), urls=urls, on_response=then_late
    )
    spider: Any = crawler.spider
    assert set(spider.texts.values()) == {"same"}
    assert len(spider.texts) == 4
    assert len(capsolver.calls()) == 1
    assert stat(crawler, "capsolver/shared_call") == 2
    assert stat(crawler, "capsolver/cache_hit") == 1
    assert spider.solutions[late].from_cache


@pytest_twisted.ensureDeferred
async def test_cache_size_zero_pays_every_time(capsolver: CapSolverMock, image_site: str) -> None:
    same = f"{image_site}/captcha/nocache.png"

    class Spider(RecordingSpider):
        async def parse(self, response: Response) -> Any:
            self.texts[response.url] = response.meta["captcha_text"]
            if len(self.texts) < 2:
                yield scrapy.Request(same + "?again", meta={"solve_image": True})

    crawler = await crawl(Spider, solver_settings(capsolver, CAPSOLVER_CACHE_SIZE=0), urls=[same])
    assert len(crawler.spider.texts) == 2  # type: ignore[union-attr]
    assert len(capsolver.calls()) == 2


@pytest_twisted.ensureDeferred
async def test_spider_solves_bytes_it_obtained_itself(
    capsolver: CapSolverMock, image_site: str
) -> None:
    url = f"{image_site}/captcha/self.png"

    async def solve_myself(spider: RecordingSpider, response: Response) -> None:
        solution = await get_solver(spider.crawler).solve(response.body, module="common")
        spider.texts["own"] = solution.text

    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver), urls=[url], meta={}, on_response=solve_myself
    )
    assert crawler.spider.texts == {"own": "self"}  # type: ignore[union-attr]
    assert capsolver.calls()[0]["body"]["task"]["module"] == "common"


@pytest_twisted.ensureDeferred
async def test_solve_refuses_a_bad_option_with_the_public_class_and_no_call(
    capsolver: CapSolverMock, image_site: str
) -> None:
    url = f"{image_site}/captcha/opts.png"
    errors: list[BaseException] = []

    async def solve_badly(spider: RecordingSpider, response: Response) -> None:
        solver = get_solver(spider.crawler)
        for options in ({"score": 2.0}, {"module": ""}, {"website_url": "ftp://x"}):
            try:
                await solver.solve(response.body, **options)
            except Exception as exc:
                errors.append(exc)

    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver), urls=[url], meta={}, on_response=solve_badly
    )
    assert [type(e) for e in errors] == [CaptchaOptionsError] * 3
    assert "score=2.0" in str(errors[0])
    assert capsolver.calls() == []
    assert stat(crawler, "capsolver/failed/CaptchaOptionsError") == 3


@pytest_twisted.ensureDeferred
async def test_time_spent_solving_is_in_the_stats(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(latency=0.2)
    urls = [f"{image_site}/captcha/timed{i}.png" for i in range(3)]
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=urls)

    total = stat(crawler, "capsolver/solve_time/total")
    longest = stat(crawler, "capsolver/solve_time/max")
    assert stat(crawler, "capsolver/solved") == 3
    assert 0.2 <= longest <= total
    assert total >= 3 * 0.2
