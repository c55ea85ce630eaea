"""Learning in a real crawl: accepted answers become labels (refused ones never), the learnt
reader comes first in the chain, a model trained in a child process during the crawl then
answers locally, a newer model version is loaded without a restart, a killed training
leaves the crawl going, and bad settings stop the crawl at start."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import redis
from captcha_spiders import PageLoginSpider
from conftest import API_KEY, DEMO_SITE, CapSolverMock, closed_port_url
from crawling import RecordingSpider, crawl, solver_settings, stat
from labelled_captchas import fixed_captchas
from learning_spiders import LearningLoginSpider
from scrapy.crawler import CrawlerRunner
from scrapy.statscollectors import StatsCollector
from scrapy.utils.defer import deferred_from_coro
from scrapy.utils.test import get_crawler
from servers.process import running_server
from twisted.internet.threads import deferToThread

from scrapy_capsolver_ocr import CaptchaSolution, CaptchaSolverMiddleware
from scrapy_capsolver_ocr.cli.learn_status import add_arguments
from scrapy_capsolver_ocr.engines.base import CaptchaImage
from scrapy_capsolver_ocr.engines.learnt.inputs import HEIGHT
from scrapy_capsolver_ocr.engines.learnt.labels import (
    CLOUD,
    DiskLabelStore,
    LabelFiles,
    LearnKeys,
    RedisLabelStore,
    site_key,
)
from scrapy_capsolver_ocr.engines.learnt.metadata import ModelInfo
from scrapy_capsolver_ocr.engines.learnt.network import initial_parameters
from scrapy_capsolver_ocr.engines.learnt.onnx_file import onnx_bytes
from scrapy_capsolver_ocr.engines.learnt.reader import LearntReader
from scrapy_capsolver_ocr.engines.learnt.shelf import DiskShelf, ModelFiles, RedisShelf
from scrapy_capsolver_ocr.engines.learnt.trainer import TrainingFailed, TrainingJob, TrainingProcess
from scrapy_capsolver_ocr.engines.local.workers import send_frame
from scrapy_capsolver_ocr.settings import SolverSettings
from scrapy_capsolver_ocr.state.redis_connection import RedisTarget, close_client


def learn_settings(capsolver: CapSolverMock, learn_dir: Path, **overrides: Any) -> dict[str, Any]:
    return solver_settings(
        capsolver, CAPSOLVER_LEARN=True, CAPSOLVER_LEARN_DIR=str(learn_dir), **overrides
    )


async def reader_names(settings: dict[str, Any]) -> list[str]:
    crawler = get_crawler(settings_dict={"CAPSOLVER_API_KEY": API_KEY, **settings})
    middleware = CaptchaSolverMiddleware.from_crawler(crawler)
    await deferred_from_coro(middleware.solver.close())
    return [reader.name for reader in middleware.solver.readers]


# The chain


@pytest_twisted.ensureDeferred
async def test_the_learnt_reader_comes_first_in_the_chain(tmp_path: Path) -> None:
    where = {"CAPSOLVER_LEARN_DIR": str(tmp_path)}
    assert await reader_names({}) == ["capsolver"]
    assert await reader_names({"CAPSOLVER_LEARN": True, **where}) == ["learnt", "capsolver"]
    learning_and_local = {"CAPSOLVER_LEARN": True, "CAPSOLVER_LOCAL_OCR": True, **where}
    assert await reader_names(learning_and_local) == [
        "learnt",
        "local",
        "capsolver",
    ]


# Bad settings

BAD_LEARN_SETTINGS: list[tuple[str, Any, str]] = [
    ("CAPSOLVER_LEARN", "sometimes", "True or False"),
    ("CAPSOLVER_LEARN_MIN_LABELS", 5, "a whole number >= 10"),
    ("CAPSOLVER_LEARN_MIN_LABELS", "many", "a whole number >= 10"),
    ("CAPSOLVER_LEARN_MIN_LABELS", 100.5, "a whole number >= 10"),
    ("CAPSOLVER_LEARN_MAX_BYTES", 1000, "a whole number >= 1000000"),
    ("CAPSOLVER_LEARN_MAX_BYTES", True, "a whole number >= 1000000"),
    ("CAPSOLVER_LEARN_DIR", "  ", "a non-empty string"),
    ("CAPSOLVER_LEARN_DIR", 42, "a non-empty string"),
]


@pytest.mark.parametrize("case", BAD_LEARN_SETTINGS, ids=lambda case: f"{case[0]}={case[1]!r}")
def test_a_bad_learn_setting_is_named(case: tuple[str, Any, str]) -> None:
    name, value, allowed = case
    crawler = get_crawler(settings_dict={"CAPSOLVER_API_KEY": API_KEY, name: value})
    with pytest.raises(ValueError, match=f"^{name}=") as raised:
        SolverSettings.from_settings(crawler.settings)
    assert allowed in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_a_bad_learn_setting_stops_the_crawl_at_start(
    capsolver: CapSolverMock, image_site: str, tmp_path: Path
) -> None:
    settings = learn_settings(capsolver, tmp_path, CAPSOLVER_LEARN_MIN_LABELS=0)
    with pytest.raises(ValueError, match=r"^CAPSOLVER_LEARN_MIN_LABELS="):
        await crawl(RecordingSpider, settings, urls=[f"{image_site}/captcha/learn1.png"])
    assert capsolver.calls(None) == []


def test_the_learn_settings_defaults(tmp_path: Path) -> None:
    config = SolverSettings.from_settings(get_crawler().settings)
    assert (config.learn, config.learn_min_labels, config.learn_dir) == (False, 1000, None)
    assert config.learn_max_bytes == 100_000_000
    given = get_crawler(settings_dict={"CAPSOLVER_LEARN_DIR": tmp_path}).settings
    assert SolverSettings.from_settings(given).learn_dir == str(tmp_path)


# Labels from a crawl


@pytest_twisted.ensureDeferred
async def test_accepted_answers_become_labels_and_refused_ones_never(
    capsolver: CapSolverMock, rejecting_demo_site: str, tmp_path: Path
) -> None:
    jars = tuple(range(4))
    crawler = await crawl(
        PageLoginSpider,
        learn_settings(capsolver, tmp_path),
        site=rejecting_demo_site,
        jars=jars,
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert spider.errors == {}
    assert set(spider.landed) == set(jars)
    # Each session: two answers refused, the third accepted; only the third is a label.
    accepted = sorted(spider.solved[jar][-1][1] for jar in jars)
    refused = {text for jar in jars for attempt, text in spider.solved[jar] if attempt < 3}
    stored = LabelFiles(tmp_path / "labels", 100_000_000)
    (site,) = stored.sites()
    labels = stored.labels(site.site)
    assert sorted(label.text for label in labels) == accepted
    assert not refused & {label.text for label in labels}
    assert {label.source for label in labels} == {CLOUD}
    assert all(label.image.startswith(b"\x89PNG") for label in labels)
    assert site.site == rejecting_demo_site
    assert stat(crawler, "capsolver/learn/labels_stored") == len(jars)
    assert stat(crawler, "capsolver/rejected") == 2 * len(jars)
    assert stat(crawler, "capsolver/learn/local_answers") == 0


@pytest_twisted.ensureDeferred
async def test_a_learn_dir_that_cannot_be_written_stops_learning_not_the_crawl(
    capsolver: CapSolverMock, demo_site: str, tmp_path: Path, caplog: Any
) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"in the way of the learn directory")
    jars = tuple(range(3))
    crawler = await crawl(
        PageLoginSpider, learn_settings(capsolver, blocked), site=demo_site, jars=jars
    )
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert set(spider.landed) == set(jars)
    assert stat(crawler, "capsolver/learn/labels_stored") == 0
    # The first failure stops learning: the answers accepted after it are not even kept.
    assert 1 <= stat(crawler, "capsolver/learn/labels_skipped") <= len(jars)
    stops = [r for r in caplog.records if "Learning stops for this crawl" in r.getMessage()]
    assert len(stops) == 1
    assert stat(crawler, "finish_reason") == "finished"


# A model trained during the crawl, in a child process


@pytest.fixture(scope="module")
def digits_site() -> Iterator[str]:
    """The demo site drawing 4 digits: a style a small model learns from a hundred labels."""
    argv = [DEMO_SITE, "--port", "0", "--embed-answers", "--style", "digits"]
    with running_server(argv) as url:
        yield url


def publish_copy(shelf: ModelFiles, site: str, model: Path, version: int) -> None:
    copy = model.with_name(f"copy-{version}")
    shutil.copyfile(model, copy)
    assert shelf.publish(site, copy, version)


async def answered_image(reader: LearntReader, labels: list[Any], site: str) -> CaptchaImage:
    """A captcha of ``site`` among ``labels`` that ``reader``'s model answers."""
    for label in labels:
        image = CaptchaImage(
            body=label.image,
            sha256=hashlib.sha256(label.image).hexdigest(),
            source=f"{site}/captcha.png",
            website_url=site,
            local=True,
        )
        if await deferred_from_coro(reader.read(image)) is not None:
            return image
    raise AssertionError("the model answers none of its own labels")


def status_lines(capsys: Any, *argv: str) -> tuple[int, str, str]:
    """``learn status ARGV``, parsed as the command line parses it."""
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(argv)
    code = args.run(args)
    out, err = capsys.readouterr()
    return code, out, err


@pytest_twisted.ensureDeferred
async def test_a_model_trained_during_the_crawl_answers_its_captchas_locally(
    capsolver: CapSolverMock, digits_site: str, tmp_path: Path, capsys: Any
) -> None:
    from twisted.internet import reactor

    # Another process on the same learn directory, started before any model existed.
    other_stats = StatsCollector(get_crawler())
    other = LearntReader(
        DiskLabelStore(tmp_path / "labels", 100_000_000, reactor),
        DiskShelf(tmp_path / "models", reactor),
        other_stats,
        reactor,
        min_labels=10_000,
        workdir=tmp_path / "training",
    )
    try:
        await deferred_from_coro(other.reload())
        assert other.models == {}

        crawler = await crawl(
            LearningLoginSpider,
            learn_settings(capsolver, tmp_path, CAPSOLVER_LEARN_MIN_LABELS=100),
            site=digits_site,
            sessions=2,
            max_logins=600,
            learnt=12,
            pause=2.0,
        )
        spider = crawler.spider
        assert isinstance(spider, LearningLoginSpider)
        assert spider.errors == {}
        assert stat(crawler, "finish_reason") == "finished"
        assert stat(crawler, "capsolver/learn/models_trained") >= 1
        assert stat(crawler, "capsolver/learn/trainings_failed") == 0
        # Floors far below what it reaches (about 90 % of learnt answers accepted).
        learnt = stat(crawler, "capsolver/learn/local_answers")
        assert learnt >= 12
        assert stat(crawler, "capsolver/learn/refused") <= learnt // 2
        assert spider.answered_by.count("learnt") >= 5
        labels = LabelFiles(tmp_path / "labels", 100_000_000).labels(digits_site)
        assert len(labels) >= 100
        assert {label.source for label in labels} == {"cloud", "local"}
        assert stat(crawler, "capsolver/learn/labels_stored") == len(labels)

        # The other process loads the model without a restart, then a newer version of it.
        await deferred_from_coro(other.reload())
        trained = other.models[digits_site].version
        assert trained == stat(crawler, "capsolver/learn/models_trained")
        shelf = ModelFiles(tmp_path / "models")
        published = shelf.fetch(digits_site, trained)
        assert published is not None
        first = tmp_path / "trained.model"  # kept: the shelf keeps the newest two versions
        shutil.copyfile(published, first)
        publish_copy(shelf, digits_site, first, trained + 1)
        await deferred_from_coro(other.reload())
        assert other.models[digits_site].version == trained + 1

        # Its answers refused too often, it steps aside: the next reader reads.
        image = await answered_image(other, labels, digits_site)
        for number in range(4):
            solution = CaptchaSolution("0000", "", f"refused{number}", solver="learnt")
            other.answered(image, solution)
            await deferred_from_coro(other.rejected(solution))
        assert other.models[digits_site].aside
        assert other_stats.get_value("capsolver/learn/refused") == 4
        assert other_stats.get_value("capsolver/learn/models_set_aside") == 1
        assert await deferred_from_coro(other.read(image)) is None

        # A corrupt version is refused; the one read with stays, aside.
        broken = tmp_path / "broken.model"
        broken.write_bytes(b"not a model")
        assert shelf.publish(digits_site, broken, trained + 2)
        await deferred_from_coro(other.reload())
        assert other.models[digits_site].version == trained + 1
        assert other_stats.get_value("capsolver/learn/bad_models") == 1
        assert await deferred_from_coro(other.read(image)) is None

        # A newer model takes its place and reads again.
        publish_copy(shelf, digits_site, first, trained + 3)
        await deferred_from_coro(other.reload())
        assert not other.models[digits_site].aside
        assert await deferred_from_coro(other.read(image)) is not None
    finally:
        await other.close()

    code, out, _ = status_lines(capsys, "--learn-dir", str(tmp_path))
    assert code == 0
    assert digits_site in out
    assert f"labels stored:     {len(labels)} " in out
    assert f"model:             v{trained + 3}" in out
    assert "held-out accuracy: " in out and "coverage: " in out


def test_learn_status_without_a_learn_directory(tmp_path: Path, capsys: Any) -> None:
    code, out, err = status_lines(capsys, "--learn-dir", str(tmp_path / "missing"))
    assert (code, out) == (1, "")
    assert "no learn directory at" in err


def killing_the_training(spider: LearningLoginSpider) -> None:
    training = spider.learnt_reader().trainer.training
    if training is not None and training.pid is not None and not spider.noted:
        spider.noted.append(training.pid)
        os.kill(training.pid, signal.SIGKILL)
        spider.max_logins = spider.started + 5  # the crawl goes on a little, then ends


@pytest_twisted.ensureDeferred
async def test_a_killed_training_is_counted_and_the_crawl_goes_on(
    capsolver: CapSolverMock, digits_site: str, tmp_path: Path, caplog: Any
) -> None:
    spider_kwargs = {"sessions": 2, "max_logins": 500, "learnt": 1000, "pause": 0.2}
    crawler = CrawlerRunner(
        learn_settings(capsolver, tmp_path, CAPSOLVER_LEARN_MIN_LABELS=20)
    ).create_crawler(LearningLoginSpider)
    await crawler.crawl(site=digits_site, on_login=killing_the_training, **spider_kwargs)
    spider = crawler.spider
    assert isinstance(spider, LearningLoginSpider)
    assert len(spider.noted) == 1
    assert spider.errors == {}
    assert len(spider.landed) == spider.started < 500
    assert stat(crawler, "finish_reason") == "finished"
    assert stat(crawler, "capsolver/learn/trainings_failed") == 1
    assert stat(crawler, "capsolver/learn/models_trained") == 0
    failed = [r for r in caplog.records if "failed: the training process" in r.getMessage()]
    assert len(failed) == 1 and failed[0].levelname == "ERROR"
    assert f"{spider.noted[0]} exited (code -9)" in failed[0].getMessage()
    assert not list((tmp_path / "training").glob("*"))


def stopping_at_the_training(spider: LearningLoginSpider) -> None:
    training = spider.learnt_reader().trainer.training
    if training is not None:
        spider.max_logins = spider.started  # no new login: the crawl ends while it trains
        spider.noted.append(training)


@pytest_twisted.ensureDeferred
async def test_a_training_still_running_at_the_end_of_the_crawl_is_stopped(
    capsolver: CapSolverMock, digits_site: str, tmp_path: Path, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr")
    crawler = await crawl(
        LearningLoginSpider,
        learn_settings(capsolver, tmp_path, CAPSOLVER_LEARN_MIN_LABELS=20),
        site=digits_site,
        sessions=2,
        max_logins=200,
        learnt=1000,
        on_login=stopping_at_the_training,
    )
    spider = crawler.spider
    assert isinstance(spider, LearningLoginSpider)
    assert spider.errors == {}
    assert spider.noted
    process = spider.noted[0].process
    assert process is not None and process.poll() is not None  # ended, and collected
    assert stat(crawler, "finish_reason") == "finished"
    assert stat(crawler, "capsolver/learn/trainings_failed") == 0
    assert stat(crawler, "capsolver/learn/models_trained") == 0
    assert any("Stopped the training" in r.getMessage() for r in caplog.records)
    assert ModelFiles(tmp_path / "models").published() == {}


# A fleet


@pytest.mark.asyncio_reactor
@pytest_twisted.ensureDeferred
async def test_a_fleet_keeps_its_labels_in_redis(
    capsolver: CapSolverMock, demo_site: str, tmp_path: Path, redis_url: str, capsys: Any
) -> None:
    fleet = f"test-{uuid.uuid4().hex[:8]}"
    settings = learn_settings(
        capsolver, tmp_path, CAPSOLVER_REDIS_URL=redis_url, CAPSOLVER_FLEET=fleet
    )
    jars = tuple(range(3))
    crawler = await crawl(PageLoginSpider, settings, site=demo_site, jars=jars)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert set(spider.landed) == set(jars)
    assert stat(crawler, "capsolver/learn/labels_stored") == 3
    assert not (tmp_path / "labels").exists()  # on the fleet's Redis, not on this disk
    client = redis.Redis.from_url(redis_url)
    try:
        keys = LearnKeys(f"capsolver:fleet:{fleet}:")
        assert client.hlen(keys.bodies) == 3
        assert client.hget(keys.sites, site_key(demo_site)) == demo_site.encode()
    finally:
        client.close()
    # `learn status` runs its own asyncio loop: in a thread, beside the crawl's.
    code, out, err = await deferToThread(
        status_lines, capsys, "--redis-url", redis_url, "--fleet", fleet
    )
    assert code == 0, err
    assert f"Fleet {fleet}" in out and demo_site in out
    assert "labels stored:     3 " in out
    assert "model:             none yet" in out


@pytest_twisted.ensureDeferred
async def test_learn_status_names_a_redis_it_cannot_reach(capsys: Any) -> None:
    # In a thread: the command runs an asyncio loop of its own.
    code, out, err = await deferToThread(
        status_lines, capsys, "--redis-url", "redis://:secret@127.0.0.1:1/0", "--fleet", "f"
    )
    assert (code, out) == (1, "")
    assert err.startswith("learn status: Redis at redis://:***@127.0.0.1:1/0")
    assert "secret" not in err


# What fails around the crawl


def test_a_training_that_fails_reports_why() -> None:
    job = TrainingJob(
        site="http://127.0.0.1:1",
        labels=[(b"png", "12", "cloud")] * 3,
        output="/nonexistent/m",
        previous=None,
    )
    training = TrainingProcess(job)
    with pytest.raises(TrainingFailed, match="the training process failed: ValueError: "):
        training.run()
    assert training.process is not None and training.process.returncode == 0


@pytest.mark.asyncio_reactor
@pytest_twisted.ensureDeferred
async def test_a_fleet_redis_that_is_away_costs_labels_not_the_crawl(
    tmp_path: Path, caplog: Any
) -> None:
    from twisted.internet import reactor

    target = RedisTarget(closed_port_url().replace("http://", "redis://"), retries=0)
    client = target.client()
    keys = LearnKeys("capsolver:fleet:away:")
    stats = StatsCollector(get_crawler())
    reader = LearntReader(
        RedisLabelStore(client, keys, 1_000_000),
        RedisShelf(client, keys, tmp_path, reactor),
        stats,
        reactor,
        min_labels=10,
        workdir=tmp_path,
    )
    try:
        for _ in range(2):
            await deferred_from_coro(reader.reload())
        looks = [r for r in caplog.records if "Could not look for newer" in r.getMessage()]
        assert [r.levelname for r in looks] == ["WARNING"]  # once, not every few seconds

        site = "http://127.0.0.1:8001"
        image = CaptchaImage(body=b"\x89PNG image", sha256="a" * 64, source=f"{site}/c.png")
        solution = CaptchaSolution("42", "task", "a" * 64)
        reader.answered(image, solution)
        reader.accepted(solution)
    finally:
        await deferred_from_coro(reader.close())  # waits for the label's write to fail
        await deferred_from_coro(close_client(client))
    assert stats.get_value("capsolver/learn/labels_skipped") == 1
    assert stats.get_value("capsolver/learn/labels_stored") is None
    assert any("A label could not be stored" in r.getMessage() for r in caplog.records)


def model_file(path: Path, site: str, version: int) -> Path:
    """A learnt model file that loads and reads (untrained: its figures are made up)."""
    info = ModelInfo(version, site, "0123456789", 0.5, 0.8, 0.6, 0.98, 100, HEIGHT)
    path.write_bytes(onnx_bytes(initial_parameters(11, version), info))
    return path


@pytest.mark.asyncio_reactor
@pytest_twisted.ensureDeferred
async def test_every_process_of_a_fleet_loads_a_newer_model_without_a_restart(
    redis_url: str, tmp_path: Path, capsys: Any
) -> None:
    from twisted.internet import reactor

    site = "http://127.0.0.1:8001"
    fleet = f"test-{uuid.uuid4().hex[:8]}"
    keys = LearnKeys(f"capsolver:fleet:{fleet}:")
    client = RedisTarget(redis_url).client()
    trainer = RedisShelf(client, keys, tmp_path / "trainer", reactor)
    reader = LearntReader(
        RedisLabelStore(client, keys, 1_000_000),
        RedisShelf(client, keys, tmp_path / "reader", reactor),
        StatsCollector(get_crawler()),
        reactor,
        min_labels=10,
        workdir=tmp_path / "training",
    )
    try:
        await deferred_from_coro(reader.reload())
        assert reader.models == {}
        for version in (1, 2):
            model = model_file(tmp_path / f"trained{version}.onnx", site, version)
            assert await deferred_from_coro(trainer.publish(site, model, version))
            await deferred_from_coro(reader.reload())
            assert reader.models[site].version == version
        fetched = sorted(path.name for path in (tmp_path / "reader").rglob("*.onnx"))
        assert fetched == ["model-v1.onnx", "model-v2.onnx"]
    finally:
        await deferred_from_coro(reader.close())
        await deferred_from_coro(trainer.close())
        await deferred_from_coro(close_client(client))

    code, out, err = await deferToThread(
        status_lines, capsys, "--redis-url", redis_url, "--fleet", fleet
    )
    assert code == 0, err
    assert "model:             v2" in out
    assert "held-out accuracy: 80.0 %" in out
    assert "coverage:          60.0 % answered locally" in out


def test_a_training_ends_when_the_crawl_process_is_gone(tmp_path: Path) -> None:
    labels = [(image, answer, "cloud") for answer, image in fixed_captchas("digits", 200, seed=3)]
    job = TrainingJob("http://127.0.0.1:1", labels, str(tmp_path / "model.onnx"), None)
    child = subprocess.Popen(
        [sys.executable, "-m", "scrapy_capsolver_ocr.engines.learnt.trainer"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert child.stdin is not None and child.stdout is not None
    send_frame(child.stdin, dataclasses.asdict(job))  # returns once the child has read it all
    child.stdin.close()  # what the crawl's process dying does to the pipe
    assert child.wait(timeout=600) == 0
    # Gone without training to the end: no answer, no model.
    assert child.stdout.read() == b""
    child.stdout.close()
    assert not (tmp_path / "model.onnx").exists()
