"""The periodic progress line (CAPSOLVER_LOGSTATS_INTERVAL) in real crawls."""

from __future__ import annotations

import itertools
import logging
import re
from typing import Any

import pytest_twisted
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings
from scrapy.http import Response
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred

PROGRESS = re.compile(
    r"Captchas: (?P<solved>\d+) solved \(at (?P<rate>[\d.]+)/min, (?P<free>\d+) of them free, "
    r"read locally\), (?P<failed>\d+) failed, "
    r"(?P<in_flight>\d+) in flight \((?P<at_api>\d+) at the API\), (?P<tasks>\d+) API tasks"
)
TOTALS = "Captchas solved in this crawl: "


def progress_lines(caplog: Any) -> list[dict[str, float]]:
    """The periodic lines (not the totals at the end)."""
    lines = []
    for record in caplog.records:
        if record.name != "scrapy_capsolver_ocr.integration.progress":
            continue
        if record.getMessage().startswith(TOTALS):
            continue
        match = PROGRESS.fullmatch(record.getMessage())
        assert match is not None, record.getMessage()
        lines.append({name: float(value) for name, value in match.groupdict().items()})
    return lines


def later(seconds: float) -> Deferred[None]:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


@pytest_twisted.ensureDeferred
async def test_progress_line_shows_solved_failed_in_flight_and_rate(
    capsolver: CapSolverMock, image_site: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr.integration.progress")
    # Two rounds of slow calls, so that lines fall while solves wait for their answers.
    capsolver.configure(faults=[{"fault": "latency", "method": "createTask", "seconds": 0.6}])
    urls = [f"{image_site}/captcha/progress{i}.png" for i in range(4)]
    urls.append(f"{image_site}/bad/html")
    settings = solver_settings(capsolver, CAPSOLVER_LOGSTATS_INTERVAL=0.1, CAPSOLVER_CONCURRENCY=2)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider
    assert len(spider.texts) == 4 and len(spider.errors) == 1

    lines = progress_lines(caplog)
    assert lines
    # Waiting solves are in flight, at most CAPSOLVER_CONCURRENCY of them at the API.
    assert any(line["in_flight"] >= 1 and line["at_api"] >= 1 for line in lines)
    assert all(line["at_api"] <= min(2, line["in_flight"]) for line in lines)
    # A line after the first round shows it solved, at a rate above zero.
    assert any(line["solved"] >= 1 and line["rate"] > 0 for line in lines)
    # The HTML page failed before any call; counts only grow.
    assert lines[-1]["failed"] == 1
    for before, after in itertools.pairwise(lines):
        for name in ("solved", "failed", "tasks"):
            assert after[name] >= before[name]
    assert all(line["tasks"] <= 4 for line in lines)

    assert all(line["free"] == 0 for line in lines)  # local-first is off

    # The loop stops with the crawl, which logs its totals once.
    count = len(lines)
    await later(0.3)
    assert len(progress_lines(caplog)) == count
    totals = [r.getMessage() for r in caplog.records if r.getMessage().startswith(TOTALS)]
    assert totals == [
        f"{TOTALS}4, 0 of them read locally for free (0 %); 1 failed; 4 paid API tasks"
    ]


@pytest_twisted.ensureDeferred
async def test_no_progress_line_before_the_first_solve(
    capsolver: CapSolverMock, image_site: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr.integration.progress")

    async def linger(spider: RecordingSpider, response: Response) -> None:
        # In a callback, on the asyncio reactor: wait through an asyncio future.
        await maybe_deferred_to_future(later(0.5))

    settings = solver_settings(capsolver, CAPSOLVER_LOGSTATS_INTERVAL=0.1)
    await crawl(
        RecordingSpider, settings, urls=[f"{image_site}/page/1"], meta={}, on_response=linger
    )
    assert progress_lines(caplog) == []


@pytest_twisted.ensureDeferred
async def test_interval_zero_turns_progress_lines_off(
    capsolver: CapSolverMock, image_site: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr.integration.progress")
    capsolver.configure(latency=0.3)
    settings = solver_settings(capsolver, CAPSOLVER_LOGSTATS_INTERVAL=0)
    crawler = await crawl(RecordingSpider, settings, urls=[f"{image_site}/captcha/off.png"])
    spider: Any = crawler.spider
    assert len(spider.texts) == 1
    assert progress_lines(caplog) == []
