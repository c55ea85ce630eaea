"""A request waiting for its captcha answer holds one of Scrapy's CONCURRENT_REQUESTS slots:
those cap the solves in flight, whatever CAPSOLVER_CONCURRENCY allows."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import pytest_twisted
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings

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
    caplog.set_level(logging.WARNING, logger="scrapy_capsolver_ocr.middleware")
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
    caplog.set_level(logging.WARNING, logger="scrapy_capsolver_ocr.middleware")
    urls = [f"{image_site}/captcha/alone{i}.png" for i in range(2)]
    settings = solver_settings(capsolver, CAPSOLVER_CONCURRENCY=8, CONCURRENT_REQUESTS=4)
    del settings["ADDONS"]
    settings["DOWNLOADER_MIDDLEWARES"] = {"scrapy_capsolver_ocr.CaptchaSolverMiddleware": 543}
    crawler = await crawl(RecordingSpider, settings, urls=urls)

    assert crawler.settings.getint("CONCURRENT_REQUESTS") == 4
    assert len(slot_warnings(caplog)) == 1
