"""A request waiting for its captcha answer holds one of Scrapy's CONCURRENT_REQUESTS slots:
those cap the solves in flight, whatever CAPSOLVER_CONCURRENCY allows. The add-on makes room
for CAPSOLVER_CONCURRENCY of them, and the solves beyond those wait on slots lent to them."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaTaskError

# Slow enough that every captcha is downloaded before the first answer comes back.
SLOW_TASKS = {"fault": "latency", "method": "createTask", "seconds": 1.0}


def slot_warnings(caplog: Any) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if "is below CAPSOLVER_CONCURRENCY" in record.getMessage()
    ]


WARNING = (
    "CONCURRENT_REQUESTS (4) is below CAPSOLVER_CONCURRENCY (8): a request waiting for "
    "its captcha answer holds one of Scrapy's request slots, so at most 4 solves run at "
    "once and other pages wait while they do. Set CONCURRENT_REQUESTS to "
    "CAPSOLVER_CONCURRENCY plus what the pages need."
)


@pytest.mark.parametrize(
    ("requests", "add_slots", "effective", "in_flight", "warnings"),
    [
        # Without slots of their own, the request slots cap the solves, and the user is told.
        (4, False, 4, 4, [WARNING]),
        (12, False, 12, 8, []),
        # The add-on's default: the solves get CAPSOLVER_CONCURRENCY slots on top.
        (4, True, 4 + 8, 8, []),
    ],
)
@pytest_twisted.ensureDeferred
async def test_request_slots_cap_the_solves_in_flight(
    capsolver: CapSolverMock,
    image_site: str,
    caplog: Any,
    requests: int,
    add_slots: bool,
    effective: int,
    in_flight: int,
    warnings: list[str],
) -> None:
    caplog.set_level(logging.WARNING, logger="scrapy_capsolver_ocr.integration.middleware")
    capsolver.configure(faults=[SLOW_TASKS])
    urls = [f"{image_site}/captcha/slots{requests}{add_slots}{i}.png" for i in range(8)]
    settings = solver_settings(
        capsolver,
        CAPSOLVER_CONCURRENCY=8,
        CONCURRENT_REQUESTS=requests,
        CAPSOLVER_ADD_REQUEST_SLOTS=add_slots,
    )
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert len(spider.texts) == 8
    assert crawler.settings.getint("CONCURRENT_REQUESTS") == effective
    assert capsolver.max_in_flight() == in_flight
    assert slot_warnings(caplog) == warnings


@pytest_twisted.ensureDeferred
async def test_the_middleware_alone_leaves_concurrent_requests_and_warns(
    capsolver: CapSolverMock, image_site: str, caplog: Any
) -> None:
    caplog.set_level(logging.WARNING, logger="scrapy_capsolver_ocr.integration.middleware")
    urls = [f"{image_site}/captcha/alone{i}.png" for i in range(2)]
    settings = solver_settings(capsolver, CAPSOLVER_CONCURRENCY=8, CONCURRENT_REQUESTS=4)
    del settings["ADDONS"]
    settings["DOWNLOADER_MIDDLEWARES"] = {"scrapy_capsolver_ocr.CaptchaSolverMiddleware": 543}
    crawler = await crawl(RecordingSpider, settings, urls=urls)

    assert crawler.settings.getint("CONCURRENT_REQUESTS") == 4
    assert len(slot_warnings(caplog)) == 1


class QueueThenPagesSpider(scrapy.Spider):
    """Captchas first (a higher priority), then ordinary pages; records in which order the
    pages and the solves ended, and the downloader's request slots when the crawl closed."""

    name = "queue_then_pages"

    def __init__(self, captcha_urls: list[str], page_urls: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.captcha_urls = captcha_urls
        self.page_urls = page_urls
        self.events: list[str] = []
        self.errors: list[BaseException] = []
        self.slots_at_close: int | None = None

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for url in self.captcha_urls:
            yield scrapy.Request(
                url,
                meta={"solve_image": True},
                callback=self.solved,
                errback=self.failed,
                priority=1,
                dont_filter=True,
            )
        for url in self.page_urls:
            yield scrapy.Request(url, callback=self.page, dont_filter=True)

    def solved(self, response: Response) -> None:
        self.events.append("solved")

    def failed(self, failure: Failure) -> None:
        self.events.append("failed")
        self.errors.append(failure.value)

    def page(self, response: Response) -> None:
        self.events.append("page")

    def closed(self, reason: str) -> None:
        assert self.crawler.engine is not None
        self.slots_at_close = self.crawler.engine.downloader.total_concurrency


async def crawl_queue_then_pages(
    capsolver: CapSolverMock, image_site: str, name: str, **settings: Any
) -> Any:
    """6 captchas and 10 pages; 2 solves at a time, each taking 2 s; 2 + 2 request slots."""
    capsolver.configure(faults=[{**SLOW_TASKS, "seconds": 2.0}])
    crawler = await crawl(
        QueueThenPagesSpider,
        solver_settings(capsolver, CAPSOLVER_CONCURRENCY=2, CONCURRENT_REQUESTS=2, **settings),
        captcha_urls=[f"{image_site}/captcha/{name}{i}.png" for i in range(6)],
        page_urls=[f"{image_site}/page/{i}" for i in range(10)],
    )
    return crawler.spider


@pytest_twisted.ensureDeferred
async def test_solves_waiting_their_turn_leave_the_pages_their_slots(
    capsolver: CapSolverMock, image_site: str
) -> None:
    spider = await crawl_queue_then_pages(capsolver, image_site, "lend")

    # The 2 solves at the API hold the 2 slots the add-on added; the 4 waiting for their
    # turn are lent slots of their own, so every page is crawled before the first answer.
    assert spider.events == ["page"] * 10 + ["solved"] * 6
    assert capsolver.max_in_flight() == 2
    assert spider.slots_at_close == 2 + 2


@pytest_twisted.ensureDeferred
async def test_failed_solves_give_their_lent_slots_back(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(
        faults=[
            {"fault": "error", "code": "ERROR_INVALID_TASK_DATA", "answer_prefix": "lendfail"},
            {**SLOW_TASKS, "seconds": 2.0},
        ]
    )
    urls = [f"{image_site}/captcha/lendfail{i}.png" for i in range(3)]
    urls += [f"{image_site}/captcha/lendgood{i}.png" for i in range(3)]
    crawler = await crawl(
        QueueThenPagesSpider,
        solver_settings(capsolver, CAPSOLVER_CONCURRENCY=1, CONCURRENT_REQUESTS=1),
        captcha_urls=urls,
        page_urls=[f"{image_site}/page/{i}" for i in range(4)],
    )
    spider: Any = crawler.spider

    assert sorted(spider.events) == ["failed"] * 3 + ["page"] * 4 + ["solved"] * 3
    assert all(isinstance(error, CaptchaTaskError) for error in spider.errors)
    assert spider.slots_at_close == 1 + 1


@pytest.mark.parametrize(
    ("settings", "slots"),
    [
        # Each captcha image is larger than this: no solve may wait on a slot of its own.
        ({"SCRAPER_SLOT_MAX_ACTIVE_SIZE": 2048}, 2 + 2),
        # Neither the add-on's room nor lent slots.
        ({"CAPSOLVER_ADD_REQUEST_SLOTS": False}, 2),
    ],
    ids=["past-the-memory-for-waiting-images", "when-the-plugin-adds-no-slots"],
)
@pytest_twisted.ensureDeferred
async def test_no_slot_is_lent(
    capsolver: CapSolverMock, image_site: str, settings: dict[str, Any], slots: int
) -> None:
    spider = await crawl_queue_then_pages(capsolver, image_site, "nolend", **settings)

    # The request slots hold the solves at the API and those waiting their turn: the pages
    # go through only once the captcha requests are all out of the queue.
    assert spider.events.index("page") > spider.events.index("solved")
    assert sorted(spider.events) == ["page"] * 10 + ["solved"] * 6
    assert spider.slots_at_close == slots
