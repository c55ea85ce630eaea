"""Fleet mode in one crawl process (CrawlerRunner) beside the fleet's other members as Redis
sees them: a stop another process recorded, the fleet's figures in stats and the progress
line, the ``fleet`` commands, and a missing Redis extra."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from typing import Any

import pytest
import pytest_twisted
import redis
from conftest import CapSolverMock, run_command
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from scrapy_capsolver_ocr.errors import CLOSE_BLOCKED


def fleet_settings(capsolver: CapSolverMock, redis_url: str, **overrides: Any) -> dict[str, Any]:
    name = f"test-{uuid.uuid4().hex[:8]}"
    return solver_settings(
        capsolver, CAPSOLVER_REDIS_URL=redis_url, CAPSOLVER_FLEET=name, **overrides
    )


def fleet_command(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("fleet", *args, timeout=60, text=True)


@pytest.mark.asyncio_reactor
@pytest_twisted.ensureDeferred
async def test_a_stop_recorded_by_another_process_closes_this_crawl(
    capsolver: CapSolverMock, image_site: str, redis_url: str
) -> None:
    capsolver.configure(latency=0.3)
    settings = fleet_settings(capsolver, redis_url, CAPSOLVER_CONCURRENCY=2)
    stop_key = f"capsolver:fleet:{settings['CAPSOLVER_FLEET']}:stop"
    client = redis.Redis.from_url(redis_url)

    async def stop_once_paying() -> None:
        # What a second block in another process of the fleet leaves behind, once this crawl
        # pays (not at a fixed time: a loaded machine may take longer than that to start).
        while not await maybe_deferred_to_future(deferToThread(capsolver.calls)):
            await maybe_deferred_to_future(deferLater(reactor, 0.05, lambda: None))
        await maybe_deferred_to_future(
            deferToThread(client.set, stop_key, CLOSE_BLOCKED, px=60_000)
        )

    from twisted.internet import reactor

    stopping = deferred_from_coro(stop_once_paying())
    urls = [f"{image_site}/captcha/stopped{i}.png" for i in range(40)]
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    await stopping
    client.close()
    spider: Any = crawler.spider

    assert stat(crawler, "finish_reason") == CLOSE_BLOCKED
    assert 0 < len(capsolver.calls()) < 20
    assert all(count == 1 for count in spider.ended.values())
    assert {type(e).__name__ for e in spider.errors.values()} <= {
        "CaptchaBlockedError",
        "CaptchaCrawlClosingError",
    }


@pytest.mark.asyncio_reactor
@pytest_twisted.ensureDeferred
async def test_fleet_figures_in_stats_the_progress_line_and_fleet_status(
    capsolver: CapSolverMock, image_site: str, redis_url: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr.integration.progress")
    capsolver.configure(latency=0.1)
    settings = fleet_settings(
        capsolver,
        redis_url,
        CAPSOLVER_MAX_TASKS=100,
        CAPSOLVER_BUDGET_PERIOD=86400,
        CAPSOLVER_LOGSTATS_INTERVAL=0.2,
        CAPSOLVER_CONCURRENCY=2,
    )
    fleet = settings["CAPSOLVER_FLEET"]
    urls = [f"{image_site}/captcha/figures{i}.png" for i in range(6)]
    crawler = await crawl(RecordingSpider, settings, urls=urls * 2)

    assert stat(crawler, "capsolver/fleet/tasks_used") == 6
    assert stat(crawler, "capsolver/fleet/max_tasks") == 100
    assert stat(crawler, "capsolver/fleet/calls_in_flight") == 0
    assert stat(crawler, "capsolver/fleet/cached_answers") == 6
    assert 0 < stat(crawler, "capsolver/fleet/budget_resets_in") <= 86400
    lines = [r.getMessage() for r in caplog.records if r.name.endswith("progress")]
    assert any("; fleet: " in line and "by all processes" in line for line in lines), lines

    shown = fleet_command("status", "--redis-url", redis_url, "--fleet", fleet)
    assert shown.returncode == 0, shown.stderr
    assert f"Fleet {fleet}" in shown.stdout
    assert "6 of 100 API tasks used; period 86400 s, resets in" in shown.stdout
    assert "cached answers:  6" in shown.stdout
    reset = fleet_command("reset-budget", "--redis-url", redis_url, "--fleet", fleet)
    assert reset.returncode == 0, reset.stderr
    assert "(6 API tasks were counted in this period)" in reset.stdout
    shown = fleet_command("status", "--redis-url", redis_url)  # every fleet
    assert "0 of 100 API tasks used" in shown.stdout


def test_fleet_commands_name_what_failed() -> None:
    unknown = fleet_command("status", "--redis-url", "redis://:pw@127.0.0.1:1/0")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("scrapy-capsolver-ocr fleet status: Redis at ")
    assert "redis://:***@127.0.0.1:1/0" in unknown.stderr and ":pw@" not in unknown.stderr
    bad = fleet_command("reset-budget", "--redis-url", "http://x", "--fleet", "f")
    assert bad.returncode == 1
    assert "--redis-url='http://x' is not valid" in bad.stderr


def test_fleet_status_of_a_fleet_that_never_ran(redis_url: str) -> None:
    missing = fleet_command("status", "--redis-url", redis_url, "--fleet", "no-such-fleet")
    assert missing.returncode == 1
    assert "No fleet named 'no-such-fleet' in this Redis" in missing.stderr


@pytest_twisted.ensureDeferred
async def test_a_missing_redis_extra_is_named_at_crawl_start(
    capsolver: CapSolverMock, image_site: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # as if it was never installed
    for module in (
        "scrapy_capsolver_ocr.state.redis_state",
        "scrapy_capsolver_ocr.state.redis_connection",
    ):
        monkeypatch.delitem(sys.modules, module, raising=False)
    settings = fleet_settings(capsolver, "redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ImportError) as raised:
        await crawl(RecordingSpider, settings, urls=[f"{image_site}/captcha/x.png"])
    message = str(raised.value)
    assert 'pip install "scrapy-capsolver-ocr[redis]"' in message
    assert "redis://:***@127.0.0.1:6379/0" in message and "secret" not in message
    assert capsolver.calls() == []
