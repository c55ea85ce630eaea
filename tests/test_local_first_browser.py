"""Local-first solving on scrapy-playwright pages, in a real headless Chromium: the element
screenshot goes through the same routing as any image."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from conftest import CapSolverMock
from crawling import stat
from scrapy.http import Response
from test_playwright import (  # noqa: F401 - browser_site and chromium are fixtures
    LIVE_PAGE,
    LoginSpider,
    browser_site,
    chromium,
    crawl_logins,
    submit,
)

from scrapy_capsolver_ocr import CaptchaSolution, solve_page_captcha

pytestmark = pytest.mark.playwright

#: The browser site's captchas: 5 characters of these.
BROWSER_FORMAT = {"length": 5, "charset": "abcdefghjkmnpqrstuvwxyz23456789"}


async def record_and_submit(spider: LoginSpider, response: Response, page: Any) -> list[str]:
    solutions: dict[str, CaptchaSolution] = spider.__dict__.setdefault("solutions", {})
    solutions[response.meta["label"]] = response.meta["captcha_solution"]
    return await submit(spider, response, page)


def visits(
    solve_image: dict[str, Any], count: int, live: bool = True, kind: str = "img"
) -> list[Any]:
    meta = {**LIVE_PAGE} if live else {"playwright": True}
    return [
        (f"{kind}-{n}", f"/login/{kind}", {**meta, "solve_image": solve_image})
        for n in range(count)
    ]


@pytest_twisted.ensureDeferred
async def test_browser_captchas_are_read_locally_first(
    capsolver: CapSolverMock, request: pytest.FixtureRequest
) -> None:
    browser, site = request.getfixturevalue("chromium"), request.getfixturevalue("browser_site")
    solve = {"selector": "#captcha", "fill": "#captcha-input", **BROWSER_FORMAT}
    crawler, spider = await crawl_logins(
        capsolver,
        browser,
        site,
        # The noisy captchas are read in 5 characters about 4 times in 10, the clear ones always.
        visits(solve, 4) + visits(solve, 2, kind="clear"),
        flow=record_and_submit,
        settings={"CAPSOLVER_LOCAL_OCR": True, "CAPSOLVER_LOCAL_MIN_CONFIDENCE": 0},
    )

    solutions: dict[str, CaptchaSolution] = spider.solutions  # type: ignore[attr-defined]
    assert len(solutions) == 6 and spider.errors == {}
    local = [label for label, s in solutions.items() if s.solver == "local"]
    paid = [label for label, s in solutions.items() if s.solver == "capsolver"]
    assert sorted(local + paid) == sorted(solutions)
    # With the gate at 0, every 5-character reading is used; others go to CapSolver.
    assert {"clear-0", "clear-1"} <= set(local)
    assert spider.verdicts["clear-0"] == spider.verdicts["clear-1"] == ["accepted"]
    assert stat(crawler, "capsolver/local/solved") == len(local)
    assert len(capsolver.calls()) == len(paid) == stat(crawler, "capsolver/task_count")
    assert all(spider.verdicts[label] == ["accepted"] for label in paid)
    assert all(len(solutions[label].text) == 5 for label in local)


@pytest_twisted.ensureDeferred
async def test_browser_captchas_without_a_key_and_with_local_false(
    capsolver: CapSolverMock, request: pytest.FixtureRequest
) -> None:
    browser, site = request.getfixturevalue("chromium"), request.getfixturevalue("browser_site")
    # A page method captures the element when the spider does not keep the page.
    captured = {"selector": "#captcha", **BROWSER_FORMAT}
    crawler, spider = await crawl_logins(
        capsolver,
        browser,
        site,
        visits(captured, 2, live=False),
        settings={"CAPSOLVER_LOCAL_OCR": True, "CAPSOLVER_API_KEY": None},
    )
    assert len(spider.texts) == 2 and spider.errors == {}
    assert stat(crawler, "capsolver/local/solved") == 2
    assert capsolver.calls(None) == []

    crawler, spider = await crawl_logins(
        capsolver,
        browser,
        site,
        visits({**captured, "local": False}, 2, live=False),
        settings={"CAPSOLVER_LOCAL_OCR": True},
    )
    assert spider.verdicts == {"img-0": ["accepted"], "img-1": ["accepted"]}
    assert stat(crawler, "capsolver/local/solved") == 0
    assert len(capsolver.calls()) == 2


@pytest_twisted.ensureDeferred
async def test_a_fresh_captcha_solved_by_the_spider_as_attempt_2_is_paid(
    capsolver: CapSolverMock, request: pytest.FixtureRequest
) -> None:
    browser, site = request.getfixturevalue("chromium"), request.getfixturevalue("browser_site")

    async def solve_again(spider: LoginSpider, response: Response, page: Any) -> list[str]:
        await page.goto(response.url)  # a new captcha, as after a refused answer
        again = await solve_page_captcha(
            page, "#captcha", fill="#captcha-input", crawler=spider.crawler, attempt=2
        )
        spider.__dict__["again"] = again
        return await submit(spider, response, page)

    solve = {"selector": "#captcha", **BROWSER_FORMAT}
    crawler, spider = await crawl_logins(
        capsolver,
        browser,
        site,
        visits(solve, 1),
        flow=solve_again,
        settings={"CAPSOLVER_LOCAL_OCR": True, "CAPSOLVER_LOCAL_MIN_CONFIDENCE": 0},
    )
    again: CaptchaSolution = spider.__dict__["again"]
    assert again.solver == "capsolver" and again.task_id
    assert spider.verdicts == {"img-0": ["accepted"]}
    assert stat(crawler, "capsolver/task_count") >= 1
