"""A task accepted before it is ready is polled with getTaskResult, never paid twice."""

from __future__ import annotations

from typing import Any

import pytest_twisted
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat

from scrapy_capsolver_ocr import CaptchaTaskError

FAST_POLLS = {"CAPSOLVER_POLL_INTERVAL": 0.01}


@pytest_twisted.ensureDeferred
async def test_processing_task_is_polled_until_ready_and_created_once(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "pending", "polls": 3}])
    urls = [f"{image_site}/captcha/poll{i}.png" for i in range(4)]
    crawler = await crawl(RecordingSpider, solver_settings(capsolver, **FAST_POLLS), urls=urls)
    spider: Any = crawler.spider

    assert spider.texts == {url: f"poll{i}" for i, url in enumerate(urls)}
    assert len(capsolver.calls("createTask")) == 4
    assert stat(crawler, "capsolver/task_count") == 4
    # 3 "processing" answers, then "ready", for each task.
    polls = capsolver.calls("getTaskResult")
    assert len(polls) == 16 == stat(crawler, "capsolver/polls")
    task_ids = {call["body"]["taskId"] for call in polls}
    assert len(task_ids) == 4
    assert all(spider.solutions[url].task_id in task_ids for url in urls)
    assert stat(crawler, "capsolver/retries") == 0


@pytest_twisted.ensureDeferred
async def test_failed_polls_are_asked_again_not_the_task_created_again(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(
        faults=[
            {"fault": "pending", "polls": 1, "count": 1},
            {"fault": "http", "status": 503, "method": "getTaskResult", "count": 2},
        ]
    )
    url = f"{image_site}/captcha/pollfail.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver, **FAST_POLLS), urls=[url])
    spider: Any = crawler.spider

    assert spider.texts == {url: "pollfail"}
    assert len(capsolver.calls("createTask")) == 1
    # Two polls met HTTP 503, one said "processing", one was ready.
    assert len(capsolver.calls("getTaskResult")) == 4


@pytest_twisted.ensureDeferred
async def test_task_that_never_gets_ready_fails_without_a_second_task(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "pending", "never": True}])
    url = f"{image_site}/captcha/pollnever.png"
    # 1 s: long enough that createTask itself never times out on a busy machine (it is
    # counted exactly), short enough for the polls to give up soon.
    settings = solver_settings(capsolver, CAPSOLVER_TIMEOUT=1.0, **FAST_POLLS)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider

    error = spider.errors[url]
    assert isinstance(error, CaptchaTaskError)
    assert error.error_code == "TASK_NOT_READY"
    assert len(capsolver.calls("createTask")) == 1
    assert len(capsolver.calls("getTaskResult")) >= 2
    assert stat(crawler, "capsolver/failed/CaptchaTaskError") == 1


@pytest_twisted.ensureDeferred
async def test_unsolvable_answer_to_a_poll_is_classified_by_its_code(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(
        faults=[
            {"fault": "pending", "per_image": 1},
            {"fault": "error", "code": "ERROR_CAPTCHA_UNSOLVABLE", "method": "getTaskResult"},
        ]
    )
    url = f"{image_site}/captcha/pollunsolvable.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver, **FAST_POLLS), urls=[url])
    spider: Any = crawler.spider

    # ERROR_CAPTCHA_UNSOLVABLE is not billed and retried once: a new task, answered ready.
    assert spider.texts == {url: "pollunsolvable"}
    assert len(capsolver.calls("createTask")) == 2
    assert stat(crawler, "capsolver/retries/ERROR_CAPTCHA_UNSOLVABLE") == 1
