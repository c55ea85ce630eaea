"""CapSolver errors, handled by class: retried, failed per image, or fatal for the crawl."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import CapSolverMock, closed_port_url
from crawling import RecordingSpider, crawl, solver_settings, stat

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaBudgetError,
    CaptchaTaskError,
    CaptchaTimeoutError,
    CaptchaTransientError,
)

TRANSIENT_FAULTS = [
    {"fault": "error", "code": "ERROR_SERVICE_UNAVALIABLE"},
    {"fault": "error", "code": "ERROR_SERVICE_UNAVAILABLE"},
    {"fault": "error", "code": "ERROR_RATE_LIMIT", "status": 429},
    {"fault": "error", "code": "ERROR_TASK_TIMEOUT"},
    {"fault": "http", "status": 500},
    {"fault": "http", "status": 502},
    {"fault": "http", "status": 503},
    {"fault": "http", "status": 429},
    {"fault": "not_json"},
    {"fault": "no_error_id"},
    {"fault": "no_solution"},
    {"fault": "reset"},
    {"fault": "drop_mid"},
    {"fault": "huge"},
]


def fault_id(rule: dict[str, Any]) -> str:
    return "-".join(str(rule.get(k)) for k in ("fault", "code", "status") if k in rule)


def urls_of(image_site: str, count: int, prefix: str = "e") -> list[str]:
    return [f"{image_site}/captcha/{prefix}{i}.png" for i in range(count)]


@pytest.mark.parametrize("rule", TRANSIENT_FAULTS, ids=fault_id)
@pytest_twisted.ensureDeferred
async def test_transient_fault_is_retried_then_solved(
    capsolver: CapSolverMock, image_site: str, rule: dict[str, Any]
) -> None:
    capsolver.configure(faults=[{**rule, "count": 2}])
    url = f"{image_site}/captcha/tr1.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    assert spider.texts == {url: "tr1"}
    assert stat(crawler, "capsolver/task_count") == 3
    assert stat(crawler, "capsolver/retries") == 2


@pytest.mark.parametrize("rule", TRANSIENT_FAULTS[:1] + TRANSIENT_FAULTS[4:5], ids=fault_id)
@pytest_twisted.ensureDeferred
async def test_transient_fault_gives_up_after_max_retries(
    capsolver: CapSolverMock, image_site: str, rule: dict[str, Any]
) -> None:
    capsolver.configure(faults=[rule])
    url = f"{image_site}/captcha/tr2.png"
    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver, CAPSOLVER_MAX_RETRIES=2), urls=[url]
    )
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    assert isinstance(spider.errors[url], CaptchaTransientError)
    assert stat(crawler, "capsolver/task_count") == 3
    assert stat(crawler, "capsolver/failed") == 1
    assert stat(crawler, "finish_reason") == "finished"


@pytest.mark.parametrize(
    ("code", "calls"),
    [
        ("ERROR_INVALID_TASK_DATA", 1),
        ("ERROR_TASK_NOT_SUPPORTED", 1),
        ("ERROR_INVALID_IMAGE", 1),
        ("ERROR_PARSE_IMAGE_FAIL", 1),
        ("ERROR_UNKNOWN_QUESTION", 1),
        ("ERROR_SOMETHING_NEW", 1),
        ("ERROR_CAPTCHA_UNSOLVABLE", 2),
        ("ERROR_BAD_REQUEST", 2),
    ],
)
@pytest_twisted.ensureDeferred
async def test_task_error_fails_that_image_only(
    capsolver: CapSolverMock, image_site: str, code: str, calls: int
) -> None:
    bad, good = urls_of(image_site, 2, prefix="task")
    # The first calls are for the bad image: the spider asks for it alone first.
    capsolver.configure(faults=[{"fault": "error", "code": code, "count": calls}])

    class Spider(RecordingSpider):
        async def start(self) -> Any:
            async for request in super().start():
                yield request
                break

        async def failed(self, failure: Any) -> Any:  # type: ignore[override]
            super().failed(failure)
            yield scrapy.Request(
                good, meta={"solve_image": True}, callback=self.parse, errback=self.failed
            )

    crawler = await crawl(Spider, solver_settings(capsolver), urls=[bad])
    spider: Any = crawler.spider
    error = spider.errors[bad]
    assert isinstance(error, CaptchaTaskError)
    assert error.error_code == code
    assert code in str(error)
    assert spider.texts == {good: "task1"}
    assert stat(crawler, "capsolver/task_count") == calls + 1
    assert stat(crawler, "finish_reason") == "finished"


@pytest_twisted.ensureDeferred
async def test_empty_solution_is_retried_once(capsolver: CapSolverMock, image_site: str) -> None:
    capsolver.configure(faults=[{"fault": "empty_text"}])
    url = f"{image_site}/captcha/empty1.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider: Any = crawler.spider
    assert isinstance(spider.errors[url], CaptchaTaskError)
    assert "empty" in str(spider.errors[url])
    assert stat(crawler, "capsolver/task_count") == 2


@pytest_twisted.ensureDeferred
async def test_call_slower_than_timeout_is_cancelled_and_retried(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(latency=5)
    url = f"{image_site}/captcha/slow.png"
    settings = solver_settings(capsolver, CAPSOLVER_TIMEOUT=0.2, CAPSOLVER_MAX_RETRIES=1)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider

    assert spider.ended == {url: 1}
    error = spider.errors[url]
    assert isinstance(error, CaptchaTimeoutError)
    assert "CAPSOLVER_TIMEOUT" in str(error)
    assert stat(crawler, "capsolver/task_count") == 2


@pytest_twisted.ensureDeferred
async def test_connection_refused_is_retried_then_fails(image_site: str) -> None:
    settings = solver_settings(
        None,
        CAPSOLVER_API_URL=closed_port_url(),
        CAPSOLVER_MAX_RETRIES=2,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    url = f"{image_site}/captcha/refused.png"
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider
    error = spider.errors[url]
    assert isinstance(error, CaptchaTransientError)
    assert "ConnectionRefused" in str(error)
    assert stat(crawler, "capsolver/task_count") == 3


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        ({"fault": "error", "code": "ERROR_KEY_DENIED_ACCESS"}, "capsolver_bad_key"),
        ({"fault": "http", "status": 401}, "capsolver_bad_key"),
        ({"fault": "error", "code": "ERROR_ZERO_BALANCE"}, "capsolver_zero_balance"),
        ({"fault": "error", "code": "ERROR_SETTLEMENT_FAILED"}, "capsolver_zero_balance"),
    ],
    ids=fault_id,
)
@pytest_twisted.ensureDeferred
async def test_account_error_closes_the_crawl_once(
    capsolver: CapSolverMock, image_site: str, rule: dict[str, Any], reason: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO)
    capsolver.configure(faults=[rule], latency=0.2)
    urls = urls_of(image_site, 10, prefix="acct")
    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver, CAPSOLVER_CONCURRENCY=2), urls=urls
    )
    spider: Any = crawler.spider

    assert stat(crawler, "finish_reason") == reason
    assert set(spider.ended.values()) == {1}
    assert len(spider.ended) == len(urls)
    assert all(isinstance(e, CaptchaAccountError) for e in spider.errors.values())
    # Only the calls already in flight when the first answer came back were made.
    assert stat(crawler, "capsolver/task_count") <= 2
    assert stat(crawler, "capsolver/solved") + stat(crawler, "capsolver/failed") == len(urls)
    assert sum("Closing spider" in r.getMessage() for r in caplog.records) == 1
    assert sum(r.name == "scrapy_capsolver_ocr.engines.cloud.account" for r in caplog.records) == 1


@pytest_twisted.ensureDeferred
async def test_account_error_without_close_on_fatal_fails_requests_only(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "error", "code": "ERROR_ZERO_BALANCE"}])
    urls = urls_of(image_site, 4, prefix="noclose")
    settings = solver_settings(capsolver, CAPSOLVER_CLOSE_ON_FATAL=False, CAPSOLVER_CONCURRENCY=1)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider
    assert stat(crawler, "finish_reason") == "finished"
    assert len(spider.errors) == 4
    assert stat(crawler, "capsolver/task_count") == 1


@pytest_twisted.ensureDeferred
async def test_missing_key_fails_the_first_solve_and_closes(
    capsolver: CapSolverMock, image_site: str, monkeypatch: Any
) -> None:
    monkeypatch.delenv("CAPSOLVER_API_KEY", raising=False)
    url = f"{image_site}/captcha/nokey.png"
    settings = solver_settings(capsolver, CAPSOLVER_API_KEY=None)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider
    error = spider.errors[url]
    assert isinstance(error, CaptchaAccountError)
    assert "CAPSOLVER_API_KEY" in str(error)
    assert stat(crawler, "finish_reason") == "capsolver_bad_key"
    assert capsolver.calls(None) == []


@pytest_twisted.ensureDeferred
async def test_missing_key_does_not_bother_spiders_that_never_solve(
    capsolver: CapSolverMock, image_site: str, monkeypatch: Any
) -> None:
    monkeypatch.delenv("CAPSOLVER_API_KEY", raising=False)
    urls = [f"{image_site}/page/{i}" for i in range(3)]
    settings = solver_settings(capsolver, CAPSOLVER_API_KEY=None)
    crawler = await crawl(RecordingSpider, settings, urls=urls, meta={})
    assert stat(crawler, "finish_reason") == "finished"
    assert len(crawler.spider.ended) == 3  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_key_from_environment(
    capsolver: CapSolverMock, image_site: str, monkeypatch: Any
) -> None:
    from conftest import API_KEY

    monkeypatch.setenv("CAPSOLVER_API_KEY", API_KEY)
    url = f"{image_site}/captcha/env1.png"
    crawler = await crawl(
        RecordingSpider, solver_settings(capsolver, CAPSOLVER_API_KEY=None), urls=[url]
    )
    assert crawler.spider.texts == {url: "env1"}  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_blocked_key_pauses_all_solving_then_resumes(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "error", "code": "ERROR_KEY_TEMP_BLOCKED", "count": 1}])
    urls = urls_of(image_site, 4, prefix="pause")
    settings = solver_settings(capsolver, CAPSOLVER_BLOCK_PAUSE=0.5, CAPSOLVER_CONCURRENCY=1)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert len(spider.texts) == 4
    assert stat(crawler, "capsolver/paused") == 1
    calls = capsolver.calls()
    # No call during the pause: the one after the block came at least 0.5 s later.
    assert calls[1]["at"] - calls[0]["at"] >= 0.45
    assert stat(crawler, "finish_reason") == "finished"


@pytest.mark.parametrize("code", ["ERROR_KEY_TEMP_BLOCKED", "ERROR_IP_BANNED"])
@pytest_twisted.ensureDeferred
async def test_second_block_within_window_closes_the_crawl(
    capsolver: CapSolverMock, image_site: str, code: str
) -> None:
    capsolver.configure(faults=[{"fault": "error", "code": code}])
    urls = urls_of(image_site, 3, prefix="block")
    settings = solver_settings(capsolver, CAPSOLVER_BLOCK_PAUSE=0.2, CAPSOLVER_CONCURRENCY=1)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert stat(crawler, "finish_reason") == "capsolver_blocked"
    assert len(spider.errors) == 3
    assert set(spider.ended.values()) == {1}
    assert stat(crawler, "capsolver/task_count") == 2


@pytest_twisted.ensureDeferred
async def test_max_tasks_bounds_the_calls_and_closes(
    capsolver: CapSolverMock, image_site: str
) -> None:
    urls = urls_of(image_site, 6, prefix="budget")
    settings = solver_settings(capsolver, CAPSOLVER_MAX_TASKS=3, CAPSOLVER_CONCURRENCY=1)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert len(capsolver.calls()) == 3
    assert len(spider.texts) == 3
    assert len(spider.errors) == 3
    assert all(isinstance(e, CaptchaBudgetError) for e in spider.errors.values())
    assert stat(crawler, "finish_reason") == "capsolver_max_tasks"


@pytest_twisted.ensureDeferred
async def test_balance_is_read_at_start_and_end(capsolver: CapSolverMock, image_site: str) -> None:
    capsolver.configure(balance=5.0, price=0.5)
    urls = urls_of(image_site, 2, prefix="bal")
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=urls)
    assert stat(crawler, "capsolver/balance_start") == 5.0
    assert stat(crawler, "capsolver/balance_end") == 4.0
    assert stat(crawler, "capsolver/spent") == 1.0


@pytest_twisted.ensureDeferred
async def test_zero_balance_at_start_closes_before_any_task(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(balance=0)
    urls = urls_of(image_site, 3, prefix="zero")
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=urls)
    assert stat(crawler, "finish_reason") == "capsolver_zero_balance"
    assert capsolver.calls() == []


@pytest_twisted.ensureDeferred
async def test_bad_key_at_start_closes_before_any_task(
    capsolver: CapSolverMock, image_site: str
) -> None:
    url = f"{image_site}/captcha/badkey.png"
    settings = solver_settings(capsolver, CAPSOLVER_API_KEY="CAP-not-the-right-key-000000000")
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    assert stat(crawler, "finish_reason") == "capsolver_bad_key"
    assert capsolver.calls() == []
    # The close may come before the captcha is downloaded; if it was, it ended in errback.
    spider: Any = crawler.spider
    assert spider.texts == {}
    assert all(isinstance(e, CaptchaAccountError) for e in spider.errors.values())


@pytest_twisted.ensureDeferred
async def test_failed_balance_call_never_stops_the_crawl(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "http", "status": 500, "method": "getBalance"}])
    url = f"{image_site}/captcha/nobal.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    assert crawler.spider.texts == {url: "nobal"}  # type: ignore[union-attr]
    assert stat(crawler, "finish_reason") == "finished"
    assert stat(crawler, "capsolver/balance_start", None) is None


@pytest.mark.parametrize("balance", [float("nan"), float("inf"), "12.5", True, 10**400])
@pytest_twisted.ensureDeferred
async def test_a_balance_that_is_no_finite_number_is_not_recorded(
    capsolver: CapSolverMock, image_site: str, balance: Any, caplog: Any
) -> None:
    capsolver.configure(balance=balance, price=0)
    url = f"{image_site}/captcha/oddbal.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    assert crawler.spider.texts == {url: "oddbal"}  # type: ignore[union-attr]
    assert stat(crawler, "finish_reason") == "finished"
    assert stat(crawler, "capsolver/balance_start", None) is None
    assert stat(crawler, "capsolver/spent", None) is None
    assert "getBalance answered without a finite numeric balance" in caplog.text


@pytest_twisted.ensureDeferred
async def test_a_long_queue_of_solves_fails_at_once_when_solving_stops(
    capsolver: CapSolverMock, image_site: str
) -> None:
    # Hundreds of solves wait for the one concurrency slot when the key is refused (the
    # refusal comes late enough for a busy machine to queue them all): each
    # must end in its errback, under the epoll reactor too (where each waiter is woken by
    # the one before it: they must not pile up on one stack).
    # 8 s: queuing 300 took up to 2 s on a busy machine.
    capsolver.configure(faults=[{"fault": "error", "code": "ERROR_KEY_DENIED_ACCESS"}], latency=8.0)
    urls = [f"{image_site}/captcha/queue{i}.png" for i in range(400)]
    settings = solver_settings(
        capsolver, CAPSOLVER_CONCURRENCY=1, CONCURRENT_REQUESTS=500, CAPSOLVER_CHECK_BALANCE=False
    )
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert stat(crawler, "finish_reason") == "capsolver_bad_key"
    assert set(spider.ended.values()) == {1}
    requested = stat(crawler, "capsolver/requested")
    assert requested >= 300
    assert stat(crawler, "capsolver/failed") == requested == len(spider.errors)
    assert all(isinstance(e, CaptchaAccountError) for e in spider.errors.values())
    assert stat(crawler, "capsolver/task_count") == 1
