"""How the plugin is switched on and off, and what it refuses at start."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.crawler import Crawler
from scrapy.exceptions import NotConfigured
from scrapy.http import Response

from scrapy_capsolver_ocr import CaptchaSolverMiddleware, get_solver


def test_reactorless_mode_is_refused_with_a_clear_error() -> None:
    crawler = Crawler(scrapy.Spider, {"TWISTED_REACTOR_ENABLED": False})
    with pytest.raises(ValueError, match="TWISTED_REACTOR_ENABLED=False is not supported"):
        CaptchaSolverMiddleware.from_crawler(crawler)


def test_a_disabled_plugin_refuses_nothing_at_start() -> None:
    crawler = Crawler(scrapy.Spider, {"CAPSOLVER_ENABLED": False, "TWISTED_REACTOR_ENABLED": False})
    with pytest.raises(NotConfigured):
        CaptchaSolverMiddleware.from_crawler(crawler)


def test_get_solver_before_the_crawl_started_says_so() -> None:
    crawler = Crawler(scrapy.Spider, {"ADDONS": {"scrapy_capsolver_ocr.Addon": 500}})
    with pytest.raises(RuntimeError, match="CaptchaSolverMiddleware is not enabled"):
        get_solver(crawler)


def test_disabled_by_setting() -> None:
    crawler = Crawler(scrapy.Spider, {"CAPSOLVER_ENABLED": False})
    with pytest.raises(NotConfigured, match="CAPSOLVER_ENABLED"):
        CaptchaSolverMiddleware.from_crawler(crawler)


@pytest_twisted.ensureDeferred
async def test_middleware_setting_without_addon(capsolver: CapSolverMock, image_site: str) -> None:
    settings = solver_settings(
        capsolver,
        ADDONS={},
        DOWNLOADER_MIDDLEWARES={"scrapy_capsolver_ocr.CaptchaSolverMiddleware": 543},
    )
    url = f"{image_site}/captcha/mw01.png"
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    assert crawler.spider.texts == {url: "mw01"}  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_get_solver_says_how_to_enable_the_plugin(image_site: str) -> None:
    messages: list[str] = []

    async def ask(spider: RecordingSpider, response: Response) -> None:
        try:
            get_solver(spider.crawler)
        except RuntimeError as exc:
            messages.append(str(exc))

    settings = solver_settings(None, ADDONS={})
    await crawl(RecordingSpider, settings, urls=[f"{image_site}/page/1"], meta={}, on_response=ask)
    assert messages
    assert "scrapy_capsolver_ocr.Addon" in messages[0]


@pytest_twisted.ensureDeferred
async def test_disabled_plugin_passes_responses_untouched(image_site: str) -> None:
    url = f"{image_site}/captcha/off1.png"
    settings = solver_settings(None, CAPSOLVER_ENABLED=False)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider
    assert spider.ended == {url: 1}
    assert spider.texts == {}
    assert stat(crawler, "capsolver/requested") == 0


@pytest_twisted.ensureDeferred
async def test_misspelt_setting_is_named_with_a_suggestion(
    capsolver: CapSolverMock, image_site: str, caplog: Any
) -> None:
    settings = solver_settings(capsolver, CAPSOLVER_TIMOUT=5, CAPSOLVER_COLOUR="blue")
    await crawl(RecordingSpider, settings, urls=[f"{image_site}/page/1"], meta={})
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "Unknown setting CAPSOLVER_TIMOUT is ignored (did you mean CAPSOLVER_TIMEOUT?)" in (
        warnings
    )
    assert "Unknown setting CAPSOLVER_COLOUR is ignored" in warnings
    assert not [w for w in warnings if "CAPSOLVER_TIMEOUT " in w or "CAPSOLVER_API_KEY" in w]
