"""Real crawls solving through Anti-Captcha's, CapMonster Cloud's and 2Captcha's dialects:
the bundled OCR server on 127.0.0.1 answers each under its prefix (tests/servers/
embedded_ocr_server.py reads the answers the test sites embed), and each crawl names its
service as a user does: the one entry of CAPSOLVER_PROVIDERS."""

from __future__ import annotations

import logging
import pprint
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
import treq
from captcha_spiders import ITEMS, PageLoginSpider
from conftest import API_KEY, SERVERS
from crawling import RecordingSpider, crawl, solver_settings, stat
from ocr_server_helpers import server_env
from scrapy.crawler import Crawler
from servers.process import running_server

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaNoSlotError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from scrapy_capsolver_ocr.errors import CLOSE_BAD_KEY
from scrapy_capsolver_ocr.server.app import LOCAL_BALANCE

DIALECTS = ("anticaptcha", "capmonster", "2captcha")
NAMES = {"anticaptcha": "Anti-Captcha", "capmonster": "CapMonster Cloud", "2captcha": "2Captcha"}
#: Anti-Captcha charges for an unsolvable image: it is not sent again; the others once more.
UNSOLVABLE_TASKS = {"anticaptcha": 1, "capmonster": 2, "2captcha": 2}


def recorded(crawler: Crawler) -> Any:
    """The crawl's RecordingSpider."""
    assert isinstance(crawler.spider, RecordingSpider)
    return crawler.spider


def stats_of(crawler: Crawler) -> dict[str, Any]:
    assert crawler.stats is not None
    return crawler.stats.get_stats()


@pytest.fixture(scope="module")
def ocr_url() -> Iterator[str]:
    argv = [str(SERVERS / "embedded_ocr_server.py"), "--require-key", API_KEY]
    with running_server(argv, env=server_env()) as url:
        yield url


def through_entry(name: str, url: str, **extra: Any) -> dict[str, Any]:
    """A crawl's settings naming service ``name`` at ``url`` as its one
    ``CAPSOLVER_PROVIDERS`` entry, as a user configures it; ``CAPSOLVER_API_KEY`` in
    ``extra`` is the entry's key (default: the tests' key)."""
    key = extra.pop("CAPSOLVER_API_KEY", API_KEY)
    options = extra.pop("options", None) or {}
    entry = {"name": name, "api_key": key, "api_url": url, "options": options}
    return solver_settings(None, CAPSOLVER_PROVIDERS=[entry], CAPSOLVER_POLL_INTERVAL=0.01, **extra)


class Through:
    """A crawl's settings through the bundled server's dialect ``name``."""

    def __init__(self, url: str) -> None:
        self._url = url

    def settings(self, name: str, options: dict[str, Any] | None = None, **extra: Any) -> Any:
        return through_entry(name, f"{self._url}/{name}", options=options, **extra)


@pytest.fixture
def through(ocr_url: str) -> Through:
    return Through(ocr_url)


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest_twisted.ensureDeferred
async def test_a_crawl_solves_through_each_dialect(
    through: Through, image_site: str, dialect: str
) -> None:
    solved, unreadable = f"{image_site}/captcha/ab12.png", f"{image_site}/captcha/blurred.png"
    crawler = await crawl(RecordingSpider, through.settings(dialect), urls=[solved, unreadable])
    spider: Any = crawler.spider

    assert spider.texts == {solved: "ab12"}
    assert dict(spider.ended) == {solved: 1, unreadable: 1}
    # The service's integer id, beyond 32 bits, kept exact.
    assert int(spider.solutions[solved].task_id) > 2**32
    error = spider.errors[unreadable]
    assert type(error) is CaptchaTaskError
    assert error.error_code == "ERROR_CAPTCHA_UNSOLVABLE"
    assert str(error).startswith(f"{NAMES[dialect]} answered ERROR_CAPTCHA_UNSOLVABLE")
    tasks = 1 + UNSOLVABLE_TASKS[dialect]
    assert stat(crawler, "capsolver/task_count") == tasks
    assert stat(crawler, "capsolver/retries") == tasks - 2
    # Every answer came through getTaskResult: at least one poll per task.
    assert stat(crawler, "capsolver/polls") >= tasks
    assert stat(crawler, "capsolver/balance_start") == LOCAL_BALANCE


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest_twisted.ensureDeferred
async def test_each_dialect_takes_its_own_options_from_the_entry(
    through: Through, image_site: str, dialect: str
) -> None:
    url = f"{image_site}/captcha/ab12.png"
    settings = through.settings(dialect, {"numeric": 1})
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider
    # numeric 1 (digits only) reached the service: its reader read the digits only.
    assert spider.texts == {url: "12"}


@pytest.mark.parametrize("dialect", DIALECTS)
@pytest_twisted.ensureDeferred
async def test_wrong_answers_are_reported_in_each_dialect(
    through: Through, rejecting_demo_site: str, dialect: str
) -> None:
    settings = through.settings(dialect)
    crawler = await crawl(PageLoginSpider, settings, site=rejecting_demo_site)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert (spider.errors, spider.items) == ({}, {None: ITEMS})
    # Both refused answers reported; the service knew their integer ids.
    assert stat(crawler, "capsolver/feedback_sent") == 2
    assert stat(crawler, "capsolver/task_count") == 3


@pytest_twisted.ensureDeferred
async def test_capmonster_gets_the_score_as_its_recognizing_threshold(
    through: Through, image_site: str
) -> None:
    # The stand-in engine is 85 % sure of every reading.
    sure, unsure = f"{image_site}/captcha/ab12.png?seed=1", f"{image_site}/captcha/ab12.png?seed=2"
    settings = through.settings("capmonster")
    crawler = await crawl(
        RecordingSpider,
        settings,
        urls=[sure],
        meta={"solve_image": {"score": 0.8, "module": "universal"}},
    )
    assert recorded(crawler).texts == {sure: "ab12"}
    crawler = await crawl(
        RecordingSpider, settings, urls=[unsure], meta={"solve_image": {"score": 0.9}}
    )
    error = recorded(crawler).errors[unsure]
    assert (type(error), error.error_code) == (CaptchaTaskError, "ERROR_CAPTCHA_UNSOLVABLE")
    assert stat(crawler, "capsolver/task_count") == 2


@pytest_twisted.ensureDeferred
async def test_an_image_too_big_for_one_service_is_refused_there_only(
    through: Through, image_site: str
) -> None:
    # About 60 kB: over CapMonster's 50 KB, within Anti-Captcha's 500,000 bytes.
    url = f"{image_site}/noise/7.png?size=60000"
    crawler = await crawl(RecordingSpider, through.settings("capmonster"), urls=[url])
    error = recorded(crawler).errors[url]
    assert (type(error), error.error_code) == (CaptchaTaskError, "ERROR_TOO_BIG_CAPTCHA_FILESIZE")
    assert stat(crawler, "capsolver/task_count") == 1
    crawler = await crawl(RecordingSpider, through.settings("anticaptcha"), urls=[url])
    assert recorded(crawler).texts == {url: "n7"}


@pytest.mark.parametrize(
    ("dialect", "variable"),
    [
        ("anticaptcha", "ANTICAPTCHA_API_KEY"),
        ("capmonster", "CAPMONSTER_API_KEY"),
        ("2captcha", "TWOCAPTCHA_API_KEY"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_refused_key_closes_the_crawl_naming_the_variable_and_never_the_key(
    through: Through,
    image_site: str,
    caplog: pytest.LogCaptureFixture,
    dialect: str,
    variable: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong_key = "WRONG-0123456789abcdef0123456789SECRET"
    url = f"{image_site}/captcha/ab12.png"
    settings = through.settings(dialect, CAPSOLVER_API_KEY=wrong_key)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider
    assert stat(crawler, "finish_reason") == CLOSE_BAD_KEY
    assert spider.texts == {}
    assert "answered ERROR_KEY_DOES_NOT_EXIST" in caplog.text
    assert f"check {variable}" in caplog.text
    errors = list(spider.errors.values())
    assert all(isinstance(error, CaptchaAccountError) for error in errors)
    shown = caplog.text + pprint.pformat(stats_of(crawler)) + repr(errors)
    assert "SECRET" not in shown


# What the bundled server never answers, from a scripted server of the same dialect


async def scripted_crawl(
    name: str,
    url: str,
    *,
    create_errors: str = "",
    poll_errors: str = "",
    **extra: Any,
) -> tuple[Crawler, list[str]]:
    """A crawl of ``url`` through provider ``name`` against tests/servers/scripted_dialect.py
    answering those errors first; returns the crawler and the methods the server was
    called with, in order."""
    argv = [str(SERVERS / "scripted_dialect.py"), "--key", API_KEY]
    argv += ["--create-errors", create_errors, "--poll-errors", poll_errors]
    with running_server(argv) as server:
        settings = through_entry(name, server, **extra)
        crawler = await crawl(RecordingSpider, settings, urls=[url])
        calls = await treq.get(f"{server}/_calls", timeout=10)
        methods: list[str] = await calls.json()
    return crawler, methods


@pytest_twisted.ensureDeferred
async def test_no_slot_is_retried_with_backoff_then_solved(
    image_site: str,
) -> None:
    url = f"{image_site}/captcha/ab12.png"
    no_slot_twice = "ERROR_NO_SLOT_AVAILABLE,ERROR_NO_SLOT_AVAILABLE"
    crawler, calls = await scripted_crawl(
        "anticaptcha", url, create_errors=no_slot_twice, CAPSOLVER_MAX_RETRIES=3
    )
    assert recorded(crawler).texts == {url: "ab12"}
    assert calls.count("createTask") == 3
    assert stat(crawler, "capsolver/retries/ERROR_NO_SLOT_AVAILABLE") == 2


@pytest_twisted.ensureDeferred
async def test_no_slot_through_every_retry_reaches_the_errback_as_no_slot(
    image_site: str,
) -> None:
    url = f"{image_site}/captcha/ab12.png"
    no_slot = ",".join(["ERROR_NO_SLOT_AVAILABLE"] * 3)
    crawler, calls = await scripted_crawl(
        "2captcha", url, create_errors=no_slot, CAPSOLVER_MAX_RETRIES=1
    )
    error = recorded(crawler).errors[url]
    assert type(error) is CaptchaNoSlotError
    assert isinstance(error, CaptchaTransientError)
    assert str(error).startswith("2Captcha answered ERROR_NO_SLOT_AVAILABLE (scripted): ")
    assert calls.count("createTask") == 2
    assert stat(crawler, "finish_reason") == "finished"


@pytest_twisted.ensureDeferred
async def test_capmonster_asking_to_wait_is_polled_again_not_created_again(
    image_site: str,
) -> None:
    url = f"{image_site}/captcha/ab12.png"
    crawler, calls = await scripted_crawl(
        "capmonster", url, poll_errors="CAPTCHA_NOT_READY,ERROR_TOO_MUCH_REQUESTS"
    )
    assert recorded(crawler).texts == {url: "ab12"}
    assert calls.count("createTask") == 1
    assert calls.count("getTaskResult") == 3 == stat(crawler, "capsolver/polls")
