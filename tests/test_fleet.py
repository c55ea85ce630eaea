"""Fleet mode with real crawl processes: three or more ``scrapy`` crawls (fleet_crawl.py)
share one real ``redis-server``, the CapSolver mock and the image site.

Each shared guarantee is checked at the mock, which sees every paid call of every process:
one createTask per distinct image, the budget exact, the account's concurrency cap, a block
pausing everyone and a second one closing every crawl. Then what goes wrong: a process
killed with permits held, Redis killed and restarted mid-crawl, Redis down at start.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import API_KEY, CapSolverMock
from crawling import solver_settings
from fleet_processes import run_fleet, start_crawl

#: What every request of a crawl may end with, besides its answer.
PUBLIC_FAILURES = {"CaptchaBudgetError", "CaptchaCrawlClosingError", "CaptchaBlockedError"}


# The crawl processes run fleet mode on the reactor of this pass: the asyncio one only.
pytestmark = pytest.mark.asyncio_reactor


def fleet_settings(capsolver: CapSolverMock, redis_url: str, **overrides: Any) -> dict[str, Any]:
    return solver_settings(
        capsolver,
        CAPSOLVER_REDIS_URL=redis_url,
        CAPSOLVER_FLEET=f"test-{uuid.uuid4().hex[:8]}",
        LOG_LEVEL="DEBUG",
        **overrides,
    )


def captchas(site: str, prefix: str, count: int) -> list[str]:
    return [f"{site}/captcha/{prefix}{i}.png" for i in range(count)]


def assert_each_request_ended_once(result: dict[str, Any], urls: list[str]) -> None:
    assert set(result["ended"]) <= set(urls)
    assert all(count == 1 for count in result["ended"].values()), result["ended"]


def assert_nothing_secret_in_redis(redis_url: str) -> None:
    """The API key is stored nowhere, and images only as the labels a fleet learns from
    (``...:learn:...``, other tests' fleets on the same Redis): scan every key and value."""
    client = redis.Redis.from_url(redis_url)
    seen = 0
    for key in client.scan_iter(count=1000):
        kind = client.type(key).decode()
        if kind == "string":
            values = [client.get(key)]
        elif kind == "hash":
            values = [item for pair in client.hgetall(key).items() for item in pair]
        elif kind == "zset":
            values = client.zrange(key, 0, -1)
        elif kind == "set":
            values = list(client.smembers(key))
        elif kind == "list":
            values = client.lrange(key, 0, -1)
        else:
            values = []
        labels = b":learn:" in key
        for blob in [key, *values]:
            text = blob if isinstance(blob, bytes) else str(blob).encode()
            assert API_KEY.encode() not in text and API_KEY[-12:].encode() not in text, key
            if not labels:
                assert b"\x89PNG" not in text and b"iVBORw0KGgo" not in text, key  # or base64
        seen += 1
    assert seen > 0
    client.close()


def calls_between(capsolver: CapSolverMock, start: float, end: float) -> list[dict[str, Any]]:
    return [call for call in capsolver.calls() if start < call["at"] < end]


def test_three_processes_pay_once_per_distinct_image_and_share_the_answers(
    capsolver: CapSolverMock, image_site: str, redis_url: str, tmp_path: Path
) -> None:
    capsolver.configure(latency=0.2)
    shared = captchas(image_site, "shared", 12)
    url_lists = [shared + captchas(image_site, f"own{n}x", 6) for n in range(3)]
    results = run_fleet(tmp_path, fleet_settings(capsolver, redis_url), url_lists)

    distinct = 12 + 3 * 6
    assert len(capsolver.calls()) == distinct
    assert sum(r["stats"].get("capsolver/task_count", 0) for r in results) == distinct
    for result, urls in zip(results, url_lists, strict=True):
        assert result["finish_reason"] == "finished"
        assert_each_request_ended_once(result, urls)
        assert result["texts"] == {url: url.rsplit("/", 1)[1][:-4] for url in urls}
        # The fleet's count as this process read it when it closed: its own calls and
        # those the others had made by then.
        own = result["stats"].get("capsolver/task_count", 0)
        assert own <= result["stats"]["capsolver/fleet/tasks_used"] <= distinct
    # The last process to close read the whole fleet's count.
    assert max(r["stats"]["capsolver/fleet/tasks_used"] for r in results) == distinct
    # The shared images were paid for once: the other processes waited or read the cache.
    reused = sum(
        r["stats"].get("capsolver/shared_call", 0) + r["stats"].get("capsolver/cache_hit", 0)
        for r in results
    )
    assert reused >= 2 * 12
    assert_nothing_secret_in_redis(redis_url)


def test_the_budget_counts_calls_of_every_process_never_one_more(
    capsolver: CapSolverMock, image_site: str, redis_url: str, tmp_path: Path
) -> None:
    capsolver.configure(latency=0.05)
    url_lists = [captchas(image_site, f"budget{n}x", 30) for n in range(3)]
    settings = fleet_settings(capsolver, redis_url, CAPSOLVER_MAX_TASKS=25, CAPSOLVER_CONCURRENCY=8)
    results = run_fleet(tmp_path, settings, url_lists)

    assert len(capsolver.calls()) == 25
    assert sum(len(r["texts"]) for r in results) == 25
    for result, urls in zip(results, url_lists, strict=True):
        # Each process needed a call beyond the budget: each closes for it.
        assert result["finish_reason"] == "capsolver_max_tasks"
        assert_each_request_ended_once(result, urls)
        classes = {error["class"] for error in result["errors"].values()}
        assert "CaptchaBudgetError" in classes and classes <= PUBLIC_FAILURES
        assert result["stats"]["capsolver/fleet/tasks_used"] == 25


def test_fleet_concurrency_caps_calls_in_flight_across_processes(
    capsolver: CapSolverMock, image_site: str, redis_url: str, tmp_path: Path
) -> None:
    capsolver.configure(latency=0.3)
    url_lists = [captchas(image_site, f"cap{n}x", 16) for n in range(3)]
    # No getBalance at start: the mock counts every API call in flight, and the cap is on
    # createTask calls.
    settings = fleet_settings(
        capsolver,
        redis_url,
        CAPSOLVER_FLEET_CONCURRENCY=4,
        CAPSOLVER_CONCURRENCY=16,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    results = run_fleet(tmp_path, settings, url_lists)

    assert capsolver.max_in_flight() == 4
    assert len(capsolver.calls()) == 48
    for result, urls in zip(results, url_lists, strict=True):
        assert result["finish_reason"] == "finished"
        assert len(result["texts"]) == len(urls)


def test_a_block_pauses_every_process_and_a_second_one_closes_every_crawl(
    capsolver: CapSolverMock, image_site: str, redis_url: str, tmp_path: Path
) -> None:
    latency = 0.1
    blocks = {"fault": "error", "code": "ERROR_KEY_TEMP_BLOCKED", "every": 12, "count": 2}
    capsolver.configure(latency=latency, faults=[blocks])
    url_lists = [captchas(image_site, f"block{n}x", 40) for n in range(3)]
    settings = fleet_settings(
        capsolver,
        redis_url,
        CAPSOLVER_CONCURRENCY=3,
        CAPSOLVER_BLOCK_PAUSE=2.0,
        CAPSOLVER_BLOCK_WINDOW=60,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    results = run_fleet(tmp_path, settings, url_lists)

    calls = capsolver.calls()
    first_block = calls[11]["at"] + latency
    # Calls already sent may still arrive just after it (a busy machine's process can take
    # a while between taking its permit and sending); none is sent during the pause.
    assert calls_between(capsolver, first_block + 0.8, first_block + 1.9) == []
    assert calls_between(capsolver, first_block + 1.9, first_block + 10)  # then solving resumed
    assert len(calls) < 3 * 40
    for result, urls in zip(results, url_lists, strict=True):
        assert result["finish_reason"] == "capsolver_blocked"
        assert_each_request_ended_once(result, urls)
        assert {e["class"] for e in result["errors"].values()} <= PUBLIC_FAILURES
    assert_nothing_secret_in_redis(redis_url)


def test_permits_of_a_killed_process_return_within_the_lease(
    capsolver: CapSolverMock, image_site: str, redis_url: str, tmp_path: Path
) -> None:
    timeout = 4.0  # no call of the waiters comes near it: each is counted exactly
    lease = timeout + 10
    # The images of the process to kill are answered only after it is gone.
    capsolver.configure(faults=[{"fault": "latency", "answer_prefix": "held", "seconds": 60}])
    settings = fleet_settings(
        capsolver,
        redis_url,
        CAPSOLVER_FLEET_CONCURRENCY=2,
        CAPSOLVER_TIMEOUT=timeout,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    holder = start_crawl(tmp_path, "holder", settings, captchas(image_site, "held", 2))
    deadline = time.time() + 60
    while len(capsolver.calls()) < 2:
        assert time.time() < deadline, holder.log_tail()
        time.sleep(0.05)
    client = redis.Redis.from_url(redis_url)
    calls_key = next(iter(client.scan_iter(match="capsolver:account:*:calls")))
    holder.kill()
    killed_at = time.time()
    assert client.zcard(calls_key) == 2  # the permits outlive their process...
    others = [
        start_crawl(tmp_path, f"waiter{n}", settings, captchas(image_site, f"after{n}x", 3))
        for n in range(2)
    ]
    results = [crawl.wait() for crawl in others]

    # ...until their lease lapses; then the other processes get them.
    later_calls = [c for c in capsolver.calls() if c["at"] > killed_at]
    assert len(later_calls) == 6
    assert min(c["at"] for c in later_calls) - killed_at <= lease + 3
    for result in results:
        assert result["finish_reason"] == "finished"
        assert len(result["texts"]) == 3
    assert client.zcard(calls_key) == 0
    client.close()


def test_redis_killed_and_restarted_mid_crawl_pauses_paying_then_solving_resumes(
    capsolver: CapSolverMock, image_site: str, own_redis: Any, tmp_path: Path
) -> None:
    own_redis.start()
    capsolver.configure(latency=0.1)
    settings = fleet_settings(
        capsolver,
        own_redis.unix_url,
        CAPSOLVER_CONCURRENCY=2,
        CAPSOLVER_MAX_RETRIES=40,
        CAPSOLVER_BACKOFF_BASE=0.2,
        CAPSOLVER_BACKOFF_MAX=0.4,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    url_lists = [captchas(image_site, f"restart{n}x", 20) for n in range(3)]
    crawls = [
        start_crawl(tmp_path, f"crawl{n}", settings, urls) for n, urls in enumerate(url_lists)
    ]
    deadline = time.time() + 60
    while len(capsolver.calls()) < 8:
        assert time.time() < deadline, crawls[0].log_tail()
        time.sleep(0.02)
    own_redis.kill()
    killed_at = time.time()
    time.sleep(2.0)
    restarted_at = time.time()
    own_redis.start()
    results = [crawl.wait() for crawl in crawls]

    # Nothing is paid for while the budget cannot be counted.
    assert calls_between(capsolver, killed_at + 0.8, restarted_at) == []
    assert calls_between(capsolver, restarted_at, time.time())
    for result, urls in zip(results, url_lists, strict=True):
        assert result["finish_reason"] == "finished"
        assert result["texts"] == {url: url.rsplit("/", 1)[1][:-4] for url in urls}
        assert result["stats"].get("capsolver/error/REDIS_UNAVAILABLE", 0) > 0


def test_redis_down_at_start_pays_nothing_and_solving_starts_when_it_answers(
    capsolver: CapSolverMock, image_site: str, own_redis: Any, tmp_path: Path
) -> None:
    own_redis.password = "s3cret-pass"
    url = own_redis.unix_url.replace("unix://", "unix://:s3cret-pass@")
    patient = fleet_settings(
        capsolver,
        url,
        CAPSOLVER_MAX_RETRIES=60,
        CAPSOLVER_BACKOFF_BASE=0.1,
        CAPSOLVER_BACKOFF_MAX=0.3,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    impatient = {**patient, "CAPSOLVER_MAX_RETRIES": 1}
    gives_up = start_crawl(tmp_path, "gives_up", impatient, captchas(image_site, "down", 4))
    waiters = [
        start_crawl(tmp_path, f"waits{n}", patient, captchas(image_site, f"late{n}x", 5))
        for n in range(2)
    ]
    gave_up = gives_up.wait()
    assert capsolver.calls() == []
    started_at = time.time()
    own_redis.start()
    results = [crawl.wait() for crawl in waiters]

    assert gave_up["texts"] == {}
    assert {e["class"] for e in gave_up["errors"].values()} == {"CaptchaFleetError"}
    log = gives_up.log()
    error_lines = [line for line in log.splitlines() if "ERROR" in line and "Redis" in line]
    assert any(
        "CAPSOLVER_REDIS_URL=unix://:***@" in line and str(own_redis.socket) in line
        for line in error_lines
    ), error_lines
    assert "s3cret-pass" not in log
    assert all(call["at"] > started_at for call in capsolver.calls())
    assert len(capsolver.calls()) == 10
    for result in results:
        assert result["finish_reason"] == "finished"
        assert len(result["texts"]) == 5
