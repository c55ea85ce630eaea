"""Several solving services in one crawl (``CAPSOLVER_PROVIDERS``): real crawls against two
CapSolver mocks started as processes on 127.0.0.1, the preferred one killed in the middle
of a crawl and started again; account and answer errors; every bad setting."""

from __future__ import annotations

import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import failover_kinds
import pytest
import pytest_twisted
import scrapy
from captcha_spiders import ITEMS, PageLoginSpider
from conftest import API_KEY, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from fleet_processes import start_crawl
from scrapy import signals
from scrapy.exceptions import DontCloseSpider
from scrapy.settings import Settings
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.test import get_crawler
from servers.mock_process import MockProcess, answered_twice, paid_twice
from twisted.internet import reactor, threads
from twisted.internet.task import deferLater

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from scrapy_capsolver_ocr.integration import readers
from scrapy_capsolver_ocr.settings import ApiKey, SolverSettings, mask_api_key
from scrapy_capsolver_ocr.state.base import MemoryState, StateLimits

COOLDOWN = 1.0


class Mock(MockProcess, CapSolverMock):
    """A CapSolver mock in a process of its own, to kill and start again on its port, and
    the client of its control endpoints."""

    def __init__(self, log: Path, *options: str) -> None:
        MockProcess.__init__(self, log, "--key", API_KEY, *options)


@pytest.fixture
def backup_kind() -> Iterator[None]:
    failover_kinds.register()
    yield
    failover_kinds.unregister()


@pytest.fixture
def mocks(tmp_path: Path, backup_kind: None) -> Iterator[Callable[..., Mock]]:
    """``mocks(name, *options)`` starts a mock; every one is stopped at the end."""
    started: list[Mock] = []

    def start(name: str, *options: str) -> Mock:
        mock = Mock(tmp_path / f"{name}.calls", *options)
        started.append(mock)
        return mock

    yield start
    for mock in started:
        mock.stop()


def providers(preferred: str, backup: str) -> list[dict[str, Any]]:
    return [
        {"name": "capsolver", "api_key": API_KEY, "api_url": preferred},
        {"name": failover_kinds.BACKUP, "api_key": API_KEY, "api_url": backup},
    ]


def two_services(preferred: Mock, backup: Mock, **overrides: Any) -> dict[str, Any]:
    return solver_settings(
        None,
        **{
            "CAPSOLVER_PROVIDERS": providers(preferred.url, backup.url),
            "CAPSOLVER_FAILOVER_COOLDOWN": COOLDOWN,
            **overrides,
        },
    )


async def sleep(seconds: float) -> None:
    await maybe_deferred_to_future(deferLater(reactor, seconds, lambda: None))


Step = Callable[["ScriptedSpider"], Awaitable[None]]


class ScriptedSpider(RecordingSpider):
    """Requests its script's URLs in order, running its steps (functions) in between."""

    def __init__(self, script: list[str | Step], **kwargs: Any) -> None:
        super().__init__(urls=[], **kwargs)
        self.script = script
        self.done = False

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> ScriptedSpider:
        spider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.idle, signal=signals.spider_idle)
        return spider  # type: ignore[return-value]

    def idle(self) -> None:
        # Nothing in flight while a step waits: the crawl is not over yet.
        if not self.done:
            raise DontCloseSpider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        try:
            for step in self.script:
                if isinstance(step, str):
                    yield scrapy.Request(
                        step,
                        meta=dict(self.request_meta),
                        callback=self.parse,
                        errback=self.failed,
                        dont_filter=True,
                    )
                else:
                    await step(self)
        finally:
            self.done = True


def ended(count: int) -> Step:
    async def step(spider: ScriptedSpider) -> None:
        while sum(spider.ended.values()) < count:
            await sleep(0.02)

    return step


def images(site: str, phase: str, count: int = 10) -> list[str]:
    return [f"{site}/captcha/{phase}{number:02d}.png" for number in range(count)]


def answered_by(spider: Any, urls: list[str]) -> set[str]:
    return {spider.solutions[url].provider for url in urls}


@pytest.mark.parametrize("unanswered", [True, False], ids=["moved", "not-moved"])
@pytest_twisted.ensureDeferred
async def test_the_preferred_service_killed_mid_crawl_then_back_after_the_cooldown(
    mocks: Callable[..., Mock],
    image_site: str,
    caplog: pytest.LogCaptureFixture,
    unanswered: bool,
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr")
    # The preferred service takes a while per task, so that some are in flight at the kill.
    preferred, backup = mocks("preferred", "--latency", "1"), mocks("backup")
    before, during, outage, probe, back = (
        images(image_site, phase) for phase in ("ab", "cd", "ef", "gh", "jk")
    )

    async def kill(spider: ScriptedSpider) -> None:
        # Killed once it holds some of these tasks, before it answers them.
        while preferred.received() <= len(before):
            await sleep(0.01)
        preferred.kill()

    async def restart(spider: ScriptedSpider) -> None:
        await maybe_deferred_to_future(threads.deferToThread(preferred.restart))
        await sleep(COOLDOWN + 0.2)

    script: list[str | Step] = [
        *before,
        ended(10),
        *during,
        kill,
        ended(20),
        *outage,
        ended(30),
        restart,
        *probe,
        ended(40),
        *back,
    ]
    settings = two_services(preferred, backup, CAPSOLVER_FAILOVER_UNANSWERED=unanswered)
    crawler = await crawl(ScriptedSpider, settings, script=script)
    spider: Any = crawler.spider

    urls = before + during + outage + probe + back
    assert set(spider.ended) == set(urls) and set(spider.ended.values()) == {1}
    moved = stat(crawler, "capsolver/provider/capsolver/unanswered_moved")
    if unanswered:
        # The tasks the preferred service held when it died went to the backup: a dead
        # service cannot deliver their answers. Every image sent to both is such a move
        # (a lost call may also have died before the service read it).
        assert spider.errors == {}
        assert moved >= 1
        assert paid_twice(preferred, backup) <= moved
        assert answered_by(spider, during) <= {"capsolver", failover_kinds.BACKUP}
    else:
        # Those tasks fail: the preferred service may have created them, and they are
        # never paid again elsewhere.
        assert spider.errors and set(spider.errors) <= set(during)
        for error in spider.errors.values():
            assert isinstance(error, CaptchaTransientError)
        assert moved == 0
        assert paid_twice(preferred, backup) == 0
    # No image was answered with a solution by both services.
    assert answered_twice(preferred, backup) == 0
    assert len(preferred.created()) >= 10 + max(len(spider.errors), moved)
    # Before: the preferred; during the outage: the backup; back on the preferred after
    # the cool-down and one probe.
    assert answered_by(spider, before) == {"capsolver"}
    assert answered_by(spider, outage) == {failover_kinds.BACKUP}
    assert answered_by(spider, back) == {"capsolver"}
    for url, text in spider.texts.items():
        assert url.endswith(f"/{text}.png")
    assert stat(crawler, "capsolver/provider/capsolver/breaker_opened") == 1
    assert stat(crawler, "capsolver/provider/capsolver/breaker_closed") == 1
    assert stat(crawler, "capsolver/provider/capsolver/errors") >= 1
    per_service = stat(crawler, "capsolver/provider/capsolver/task_count") + stat(
        crawler, "capsolver/provider/backup/task_count"
    )
    assert per_service == stat(crawler, "capsolver/task_count")
    assert stat(crawler, "capsolver/provider/backup/task_count") == len(backup.created())
    said = [r.getMessage() for r in caplog.records]
    assert said.count("Captcha tasks are back on capsolver") == 1
    (totals,) = [line for line in said if line.startswith("Captchas solved in this crawl")]
    assert "paid API tasks (backup " in totals and totals.endswith(" (1 outage))")
    assert stat(crawler, "capsolver/provider/backup/spent") > 0
    assert stat(crawler, "finish_reason", None) == "finished"


@pytest_twisted.ensureDeferred
async def test_a_slow_service_that_timed_out_is_not_paid_twice(
    mocks: Callable[..., Mock], image_site: str
) -> None:
    # Up, but slower than CAPSOLVER_TIMEOUT: its tasks may be solved and billed all the same.
    preferred, backup = mocks("preferred", "--latency", "2"), mocks("backup")
    urls = images(image_site, "sl", 3)
    settings = two_services(preferred, backup, CAPSOLVER_TIMEOUT=0.3, CAPSOLVER_CHECK_BALANCE=False)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert set(spider.errors) == set(urls)
    for error in spider.errors.values():
        assert isinstance(error, CaptchaTransientError) and error.error_code == "TIMEOUT"
    assert preferred.received() == 3 and backup.created() == []
    assert stat(crawler, "capsolver/provider/capsolver/unanswered_moved") == 0
    assert stat(crawler, "capsolver/provider/capsolver/breaker_opened") == 1


@pytest.mark.parametrize(
    "trouble",
    [
        {"faults": [{"fault": "error", "code": "ERROR_ZERO_BALANCE", "method": "*"}]},
        {"balance": 0},
        {"key": "another-key"},
        {"faults": [{"fault": "error", "code": "ERROR_IP_BANNED", "method": "*"}]},
    ],
    ids=["zero-balance-error", "balance-0", "bad-key", "banned-ip"],
)
@pytest_twisted.ensureDeferred
async def test_an_account_out_on_the_preferred_service_moves_every_task_on(
    mocks: Callable[..., Mock], image_site: str, trouble: dict[str, Any]
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup")
    preferred.configure(**trouble)
    urls = images(image_site, "mn")
    settings = two_services(preferred, backup, CAPSOLVER_FAILOVER_COOLDOWN=600)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    # Found out when the balances are read at the start: no task goes to it.
    assert spider.errors == {}
    assert answered_by(spider, urls) == {failover_kinds.BACKUP}
    assert preferred.created() == [] and len(backup.created()) == 10
    assert stat(crawler, "finish_reason", None) == "finished"
    assert stat(crawler, "capsolver/provider/capsolver/breaker_opened") == 1
    assert stat(crawler, "capsolver/provider/backup/balance_start") == 10.0


@pytest_twisted.ensureDeferred
async def test_an_account_error_met_by_a_task_moves_it_without_closing_the_crawl(
    mocks: Callable[..., Mock], image_site: str
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup")
    preferred.configure(faults=[{"fault": "error", "code": "ERROR_ZERO_BALANCE"}])
    urls = images(image_site, "pq", 5)
    settings = two_services(preferred, backup, CAPSOLVER_CHECK_BALANCE=False)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert spider.errors == {}
    assert answered_by(spider, urls) == {failover_kinds.BACKUP}
    # The error answer created no task: the images sent to both are paid once.
    assert 1 <= preferred.received() <= 5 and preferred.created() == []
    assert paid_twice(preferred, backup) == 0
    assert stat(crawler, "finish_reason", None) == "finished"


@pytest_twisted.ensureDeferred
async def test_every_service_out_closes_the_crawl_as_with_one(
    mocks: Callable[..., Mock], image_site: str
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup")
    for mock in (preferred, backup):
        mock.configure(faults=[{"fault": "error", "code": "ERROR_ZERO_BALANCE", "method": "*"}])
    urls = images(image_site, "rs", 5)
    crawler = await crawl(RecordingSpider, two_services(preferred, backup), urls=urls)
    spider: Any = crawler.spider

    assert stat(crawler, "finish_reason", None) == "capsolver_zero_balance"
    assert set(spider.ended.values()) <= {1}
    assert spider.texts == {}
    for error in spider.errors.values():
        assert isinstance(error, CaptchaAccountError)
    assert preferred.created() == backup.created() == []


@pytest.mark.parametrize("answer_errors", [False, True])
@pytest_twisted.ensureDeferred
async def test_an_unsolvable_image_is_paid_elsewhere_only_when_the_setting_says(
    mocks: Callable[..., Mock], image_site: str, answer_errors: bool
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup")
    unsolvable = {"fault": "error", "code": "ERROR_CAPTCHA_UNSOLVABLE", "answer_prefix": "zz"}
    preferred.configure(faults=[unsolvable])
    hard, easy = f"{image_site}/captcha/zz01.png", f"{image_site}/captcha/tu01.png"
    settings = two_services(preferred, backup, CAPSOLVER_FAILOVER_ANSWER_ERRORS=answer_errors)
    crawler = await crawl(RecordingSpider, settings, urls=[hard, easy])
    spider: Any = crawler.spider

    assert spider.solutions[easy].provider == "capsolver"
    # The service is up: its breaker stays closed, whatever the setting.
    assert stat(crawler, "capsolver/provider/capsolver/breaker_opened") == 0
    if answer_errors:
        assert spider.solutions[hard].provider == failover_kinds.BACKUP
        assert len(backup.created()) == 1
    else:
        assert isinstance(spider.errors[hard], CaptchaTaskError)
        assert backup.created() == []
        # Tried twice on the preferred service, as its error table says.
        assert preferred.received() == 3


@pytest_twisted.ensureDeferred
async def test_a_failing_service_moves_tasks_after_retries_and_wrong_answers_go_to_who_answered(
    mocks: Callable[..., Mock], rejecting_demo_site: str
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup")
    preferred.configure(faults=[{"fault": "http", "status": 503}])
    settings = two_services(preferred, backup, CAPSOLVER_MAX_RETRIES=1)
    crawler = await crawl(PageLoginSpider, settings, site=rejecting_demo_site)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)

    assert (spider.errors, spider.items) == ({}, {None: ITEMS})
    # The first task tried the preferred twice (a 503 creates no task), then the backup;
    # later ones went straight to the backup while the breaker was open.
    assert preferred.received() == 2 and preferred.created() == []
    assert len(backup.created()) == 3 and paid_twice(preferred, backup) == 0
    assert backup.calls("feedbackTask") and len(backup.calls("feedbackTask")) == 2
    assert preferred.calls("feedbackTask") == []
    assert stat(crawler, "capsolver/feedback_sent") == 2
    assert stat(crawler, "capsolver/provider/capsolver/errors") == 1
    assert stat(crawler, "capsolver/provider/capsolver/failovers") == 1


@pytest_twisted.ensureDeferred
async def test_a_single_service_crawl_keeps_its_stats_and_solutions(
    capsolver: CapSolverMock, image_site: str
) -> None:
    urls = images(image_site, "vw", 3)
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=urls)
    spider: Any = crawler.spider
    assert {spider.solutions[url].provider for url in urls} == {""}
    assert crawler.stats is not None
    assert not [name for name in crawler.stats.get_stats() if "/provider/" in name]


@pytest.mark.parametrize(("cap", "most"), [("concurrency", 2), ("fleet_concurrency", 1)])
@pytest_twisted.ensureDeferred
async def test_a_service_cap_holds_its_calls_in_flight(
    mocks: Callable[..., Mock], image_site: str, cap: str, most: int
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup", "--latency", "0.1")
    settings = two_services(preferred, backup)
    # The backup preferred here, with a cap of its own below CAPSOLVER_CONCURRENCY (16).
    entries = settings["CAPSOLVER_PROVIDERS"][::-1]
    entries[0] = {**entries[0], cap: most}
    settings["CAPSOLVER_PROVIDERS"] = entries
    urls = images(image_site, "yz", 8)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert spider.errors == {}
    assert answered_by(spider, urls) == {failover_kinds.BACKUP}
    assert backup.max_in_flight() == most
    assert preferred.created() == []


# Settings


def config_of(**values: Any) -> SolverSettings:
    return SolverSettings.from_settings(Settings({"CAPSOLVER_API_KEY": API_KEY, **values}))


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("capsolver", "CAPSOLVER_PROVIDERS must be a list of dicts"),
        ({"name": "capsolver"}, "CAPSOLVER_PROVIDERS must be a list of dicts"),
        (["capsolver"], "CAPSOLVER_PROVIDERS entry 1 must be a dict, not str"),
        ([{"name": "deathbycaptcha", "api_key": "k"}], "unknown provider name 'deathbycaptcha'"),
        ([{"name": "capsolver", "api_key": "k", "colour": 1}], "unknown keys ['colour']"),
        (
            [{"name": "capsolver", "api_key": "k"}, {"name": "capsolver", "api_key": "j"}],
            "CAPSOLVER_PROVIDERS entry 2: provider 'capsolver' is listed twice",
        ),
        (
            [{"name": "backup"}],
            "no API key for 'backup': give its api_key or set the BACKUP_API_KEY",
        ),
        ([{"name": "backup", "api_key": 42}], "api_key must be a string, not int"),
        (
            [{"name": "backup", "api_key": "k", "api_url": "http://solver.example"}],
            "entry 1 (backup) api_url='http://solver.example' is not valid: expected an https",
        ),
        (
            [{"name": "backup", "api_key": "k", "options": {"speed": "max"}}],
            "entry 1 (backup) options: Backup takes only the option 'region'",
        ),
        ([{"name": "backup", "api_key": "k", "options": ["region"]}], "options must be a dict"),
        ([{"name": "backup", "api_key": "k", "concurrency": -1}], "concurrency=-1 is not valid"),
    ],
)
def test_bad_providers_fail_at_start_naming_the_setting(
    backup_kind: None, value: Any, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BACKUP_API_KEY", raising=False)
    with pytest.raises(ValueError) as raised:
        config_of(CAPSOLVER_PROVIDERS=value)
    assert message in str(raised.value)
    assert "CAPSOLVER_PROVIDERS" in str(raised.value)


def test_providers_take_keys_from_their_variables_and_urls_from_their_kind(
    backup_kind: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BACKUP_API_KEY", "backup-key-0123456789")
    config = config_of(
        CAPSOLVER_PROVIDERS=[
            {"name": "backup", "options": {"region": "eu"}, "fleet_concurrency": 4},
            {"name": "capsolver", "api_key": " cap-key ", "api_url": "http://127.0.0.1:9/"},
        ],
        CAPSOLVER_FAILOVER_COOLDOWN=5,
    )
    first, second = config.providers
    assert (first.name, first.api_key, first.api_url) == (
        "backup",
        ApiKey("backup-key-0123456789"),
        "https://backup.invalid",
    )
    assert (first.options, first.fleet_concurrency) == ({"region": "eu"}, 4)
    assert (second.api_key, second.api_url) == (ApiKey("cap-key"), "http://127.0.0.1:9")
    # The preferred service's key and URL are the crawl's (fleet fingerprint, messages).
    assert (config.api_key, config.api_url) == (first.api_key, first.api_url)
    assert config.failover_cooldown == 5.0
    assert "backup-key" not in repr(config)


def test_unset_providers_are_capsolver_alone_with_the_old_settings() -> None:
    config = config_of(CAPSOLVER_API_URL="http://127.0.0.1:8/")
    (only,) = config.providers
    assert (only.name, only.api_key, only.api_url) == ("capsolver", ApiKey(API_KEY), config.api_url)
    assert config.api_url == "http://127.0.0.1:8"


def test_provider_keys_are_masked_in_the_settings(backup_kind: None) -> None:
    settings = Settings(
        {"CAPSOLVER_PROVIDERS": [{"name": "backup", "api_key": "backup-key-0123456789"}]}
    )
    mask_api_key(settings)
    assert "backup-key" not in repr(settings.copy_to_dict())
    assert SolverSettings.from_settings(settings).providers[0].api_key == ApiKey(
        "backup-key-0123456789"
    )


def test_an_option_a_service_cannot_honour_is_named_once_at_start(
    backup_kind: None, caplog: pytest.LogCaptureFixture
) -> None:
    config = config_of(
        CAPSOLVER_PROVIDERS=providers("https://a.invalid", "https://b.invalid"),
        CAPSOLVER_MODULE="number",
    )
    crawler = get_crawler()
    assert crawler.stats is not None
    with caplog.at_level(logging.WARNING):
        readers.cloud_reader(config, crawler.stats, MemoryState(StateLimits()), lambda r: None)
    said = [r.getMessage() for r in caplog.records if "cannot honour" in r.getMessage()]
    assert said == [
        "backup cannot honour module (CAPSOLVER_* settings): its tasks are sent without them"
    ]


# Fleet mode: two crawl processes, one Redis

FAILOVER_RUNNER = Path(__file__).with_name("failover_crawl.py")


@pytest.mark.asyncio_reactor
def test_one_process_noticing_an_outage_moves_the_whole_fleet(
    mocks: Callable[..., Mock], image_site: str, redis_url: str, tmp_path: Path
) -> None:
    preferred, backup = mocks("preferred"), mocks("backup")
    preferred.configure(faults=[{"fault": "http", "status": 503}])
    settings = solver_settings(
        None,
        CAPSOLVER_PROVIDERS=providers(preferred.url, backup.url),
        CAPSOLVER_REDIS_URL=redis_url,
        CAPSOLVER_FLEET=f"failover-{uuid.uuid4().hex[:8]}",
        CAPSOLVER_FAILOVER_COOLDOWN=600,
        CAPSOLVER_MAX_RETRIES=0,
        CAPSOLVER_CHECK_BALANCE=False,
    )
    first_urls, second_urls = images(image_site, "xa"), images(image_site, "xb")
    first = start_crawl(tmp_path, "first", settings, first_urls, FAILOVER_RUNNER).wait()
    asked_by_first = preferred.received()
    second = start_crawl(tmp_path, "second", settings, second_urls, FAILOVER_RUNNER).wait()

    for result, urls in ((first, first_urls), (second, second_urls)):
        assert result["finish_reason"] == "finished"
        assert result["errors"] == {} and set(result["texts"]) == set(urls)
    # The first process met the outage and opened the breaker in Redis; the second one
    # never asked the preferred service, and had no outage of its own to notice.
    assert asked_by_first >= 1
    assert preferred.received() == asked_by_first
    assert first["stats"]["capsolver/provider/capsolver/breaker_opened"] == 1
    assert "capsolver/provider/capsolver/task_count" not in second["stats"]
    assert "capsolver/provider/capsolver/breaker_opened" not in second["stats"]
    assert second["stats"]["capsolver/provider/backup/task_count"] == 10
    assert paid_twice(preferred, backup) == 0
