"""Learning in a real crawl: accepted answers become labels (refused ones never), the learnt
reader comes first in the chain, a model trained in a child process during the crawl then
answers locally, a newer model version is loaded without a restart, a killed training
leaves the crawl going, and bad settings stop the crawl at start."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from captcha_spiders import PageLoginSpider
from conftest import API_KEY, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.utils.test import get_crawler

from scrapy_capsolver_ocr import CaptchaSolverMiddleware
from scrapy_capsolver_ocr.engines.learnt.labels import CLOUD, LabelFiles
from scrapy_capsolver_ocr.settings import SolverSettings


def learn_settings(capsolver: CapSolverMock, learn_dir: Path, **overrides: Any) -> dict[str, Any]:
    return solver_settings(
        capsolver, CAPSOLVER_LEARN=True, CAPSOLVER_LEARN_DIR=str(learn_dir), **overrides
    )


def reader_names(settings: dict[str, Any]) -> list[str]:
    crawler = get_crawler(settings_dict={"CAPSOLVER_API_KEY": API_KEY, **settings})
    middleware = CaptchaSolverMiddleware.from_crawler(crawler)
    return [reader.name for reader in middleware.solver.readers]


# The chain


@pytest_twisted.ensureDeferred
async def test_the_learnt_reader_comes_first_in_the_chain(tmp_path: Path) -> None:
    where = {"CAPSOLVER_LEARN_DIR": str(tmp_path)}
    assert reader_names({}) == ["capsolver"]
    assert reader_names({"CAPSOLVER_LEARN": True, **where}) == ["learnt", "capsolver"]
    assert reader_names({"CAPSOLVER_LEARN": True, "CAPSOLVER_LOCAL_OCR": True, **where}) == [
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
