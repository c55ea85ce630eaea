"""Local-first solving (CAPSOLVER_LOCAL_OCR) in real crawls of the demo site.

The local engine really reads the demo site's captchas; the CapSolver mock answers every
image right (from the answer the site embeds in it). Which images the engine is sure of
varies with the random captchas, so the tests check how the two readers share the work
(every solve counted once, paid calls only for what the local reader declined) rather than
which captcha went where, except where the setup decides it.
"""

from __future__ import annotations

import itertools
import json
import logging
import subprocess
import sys
from collections.abc import AsyncIterator, Hashable, Iterator
from typing import Any

import pytest
import pytest_twisted
import scrapy
from captcha_spiders import ImageLoginSpider, PageLoginSpider
from conftest import API_KEY, DEMO_SITE, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat
from scrapy.crawler import Crawler
from scrapy.http import Response
from servers.png_text import embedded_answer
from servers.process import running_server

from scrapy_capsolver_ocr import CaptchaOptionsError, CaptchaSolution, get_solver
from scrapy_capsolver_ocr.engines.local.formats import LEARN_AFTER

DIGITS = "0123456789"
#: The demo digit captchas' format, given so that the first captcha can be read locally.
DIGIT_FORMAT = {"CAPSOLVER_LOCAL_LENGTH": 4, "CAPSOLVER_LOCAL_CHARSET": DIGITS}


@pytest.fixture(scope="module")
def digits_site() -> Iterator[str]:
    with running_server([DEMO_SITE, "--port", "0", "--embed-answers", "--digits"]) as url:
        yield url


@pytest.fixture(scope="module")
def rejecting_digits_site() -> Iterator[str]:
    argv = [DEMO_SITE, "--port", "0", "--embed-answers", "--digits", "--reject-first", "2"]
    with running_server(argv) as url:
        yield url


def local_settings(capsolver: CapSolverMock | None, **overrides: Any) -> dict[str, Any]:
    return solver_settings(capsolver, CAPSOLVER_LOCAL_OCR=True, **overrides)


def all_solutions(spider: Any) -> list[CaptchaSolution]:
    return [solution for solutions in spider.solutions.values() for solution in solutions]


def assert_shared_between_readers(
    crawler: Crawler, capsolver: CapSolverMock, solutions: list[CaptchaSolution]
) -> None:
    """Every solve answered by exactly one reader: local answers free, the rest paid."""
    local = [s for s in solutions if s.solver == "local"]
    paid = [s for s in solutions if s.solver == "capsolver"]
    assert len(local) + len(paid) == len(solutions)
    for solution in local:
        assert solution.task_id == ""
        assert solution.confidence is not None and 0.0 <= solution.confidence <= 1.0
    assert all(solution.task_id for solution in paid)
    assert stat(crawler, "capsolver/solved") == len(solutions)
    assert stat(crawler, "capsolver/local/solved") == len(local)
    assert stat(crawler, "capsolver/task_count") == len(paid) == len(capsolver.calls())


@pytest_twisted.ensureDeferred
async def test_page_mode_answers_locally_when_sure_and_pays_for_the_rest(
    capsolver: CapSolverMock, digits_site: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr.integration.progress")
    jars = tuple(range(8))
    settings = local_settings(capsolver, **DIGIT_FORMAT)
    crawler = await crawl(PageLoginSpider, settings, site=digits_site, jars=jars)
    spider: Any = crawler.spider

    assert spider.errors == {}
    assert spider.landed == {jar: "/items" for jar in jars}
    solutions = all_solutions(spider)
    assert_shared_between_readers(crawler, capsolver, solutions)
    # The engine reads about 9 in 10 of these digit captchas surely.
    local = stat(crawler, "capsolver/local/solved")
    assert local >= 1
    # A local answer the site refused was not reported (there is no task), and its
    # session's next captcha was paid for.
    assert stat(crawler, "capsolver/local/rejected") == stat(crawler, "capsolver/rejected")
    assert capsolver.calls("feedbackTask") == []
    for solved in spider.solutions.values():
        for before, after in itertools.pairwise(solved):
            assert before.solver == "local" and after.solver == "capsolver"
    # Every local read was either used or declined.
    first_attempts = len(jars)
    assert local + stat(crawler, "capsolver/local/declined") == first_attempts
    totals = [r.getMessage() for r in caplog.records if "Captchas solved in this crawl" in r.msg]
    assert totals == [
        f"Captchas solved in this crawl: {len(solutions)}, {local} of them read locally for "
        f"free ({100 * local / len(solutions):.0f} %); 0 failed; "
        f"{len(solutions) - local} paid API tasks"
    ]


@pytest_twisted.ensureDeferred
async def test_image_requests_take_the_format_from_their_options(
    capsolver: CapSolverMock, digits_site: str
) -> None:
    jars = tuple(range(6))
    options = {"length": 4, "charset": DIGITS}
    crawler = await crawl(
        ImageLoginSpider,
        local_settings(capsolver),
        site=digits_site,
        jars=jars,
        solve_image=options,
    )
    spider: Any = crawler.spider

    assert spider.landed == {jar: "/items" for jar in jars}
    assert_shared_between_readers(crawler, capsolver, all_solutions(spider))
    assert stat(crawler, "capsolver/local/solved") >= 1


class SolverSpider(scrapy.Spider):
    """Fetches captcha images itself and solves them with ``get_solver().solve()``."""

    name = "solver_spider"

    def __init__(self, url: str, count: int, options: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.url = url
        self.count = count
        self.options = options
        self.results: list[tuple[str, CaptchaSolution]] = []

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for jar in range(self.count):
            yield scrapy.Request(self.url, meta={"cookiejar": jar}, dont_filter=True)

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        solution = await get_solver(self.crawler).solve(
            response.body, website_url=response.url, source=response.url, **self.options
        )
        self.results.append((embedded_answer(response.body) or "", solution))
        return
        yield


@pytest_twisted.ensureDeferred
async def test_solver_solve_reads_locally_first(capsolver: CapSolverMock, digits_site: str) -> None:
    options = {"length": 4, "charset": DIGITS}
    crawler = await crawl(
        SolverSpider,
        local_settings(capsolver),
        url=f"{digits_site}/captcha.png",
        count=10,
        options=options,
    )
    spider: Any = crawler.spider

    assert len(spider.results) == 10
    assert_shared_between_readers(crawler, capsolver, [s for _, s in spider.results])
    local = [(answer, s) for answer, s in spider.results if s.solver == "local"]
    assert local
    # Sure answers are right nearly always (368 of 372 in a seeded sample): two wrong ones
    # of ten happen once in a few hundred runs, three far less; the mock's are always right.
    right = sum(s.text == answer for answer, s in local)
    assert right >= len(local) - 2
    assert all(s.text == answer for answer, s in spider.results if s.solver == "capsolver")


@pytest_twisted.ensureDeferred
async def test_without_a_key_every_answer_is_local(
    capsolver: CapSolverMock, demo_site: str, caplog: Any
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr")
    jars = tuple(range(4))
    # Noisy captchas, no format given: the engine reads about 2 in 3 of them right, so
    # some sessions need several captchas.
    settings = local_settings(capsolver, CAPSOLVER_MAX_ATTEMPTS=12)
    del settings["CAPSOLVER_API_KEY"]
    crawler = await crawl(PageLoginSpider, settings, site=demo_site, jars=jars)
    spider: Any = crawler.spider

    assert spider.errors == {}
    assert spider.landed == {jar: "/items" for jar in jars}
    solutions = all_solutions(spider)
    assert {solution.solver for solution in solutions} == {"local"}
    assert stat(crawler, "capsolver/local/solved") == stat(crawler, "capsolver/solved")
    assert stat(crawler, "capsolver/local/declined") == 0
    assert stat(crawler, "capsolver/local/rejected") == len(solutions) - len(jars)
    assert stat(crawler, "capsolver/task_count") == 0
    assert capsolver.calls(None) == []
    assert any("local OCR engine only" in record.getMessage() for record in caplog.records)


@pytest_twisted.ensureDeferred
async def test_local_false_always_pays(capsolver: CapSolverMock, digits_site: str) -> None:
    jars = tuple(range(4))
    settings = local_settings(capsolver, **DIGIT_FORMAT)
    crawler = await crawl(
        PageLoginSpider, settings, site=digits_site, jars=jars, options={"local": False}
    )
    spider: Any = crawler.spider

    assert spider.landed == {jar: "/items" for jar in jars}
    assert {s.solver for s in all_solutions(spider)} == {"capsolver"}
    assert stat(crawler, "capsolver/local/solved") == 0
    assert stat(crawler, "capsolver/local/declined") == 0
    assert len(capsolver.calls()) == len(jars)


@pytest_twisted.ensureDeferred
async def test_a_rejected_local_answer_is_not_reported_and_the_next_captcha_is_paid(
    capsolver: CapSolverMock, rejecting_digits_site: str
) -> None:
    # The site refuses the first two answers of each session, right or not. Any 4-digit
    # reading passes a gate at 0, so the first answer of a session is local.
    jars = tuple(range(3))
    settings = local_settings(capsolver, CAPSOLVER_LOCAL_MIN_CONFIDENCE=0, **DIGIT_FORMAT)
    crawler = await crawl(PageLoginSpider, settings, site=rejecting_digits_site, jars=jars)
    spider: Any = crawler.spider

    assert spider.landed == {jar: "/items" for jar in jars}
    local = stat(crawler, "capsolver/local/solved")
    assert local >= 1
    for solved in spider.solutions.values():
        # A local first answer (refused), then paid ones (the first refused, then accepted).
        assert [s.solver for s in solved][1:] == ["capsolver", "capsolver"]
    assert stat(crawler, "capsolver/local/rejected") == local
    # Only the refused paid answers were reported, each with its own task.
    paid_refused = 2 * len(jars) - local
    feedback = capsolver.calls("feedbackTask")
    assert len(feedback) == paid_refused == stat(crawler, "capsolver/feedback_sent")
    paid_tasks = {s.task_id for s in all_solutions(spider) if s.solver == "capsolver"}
    assert {call["body"]["taskId"] for call in feedback} <= paid_tasks
    assert len(capsolver.calls()) == 3 * len(jars) - local


class OneAfterAnotherSpider(PageLoginSpider):
    """Logs in with one session after another: each login teaches the next one."""

    name = "one_after_another"

    async def start(self) -> AsyncIterator[scrapy.Request]:
        yield self.login_page(self.jars[0])

    def logged_in(self, response: Response) -> Any:
        super().logged_in(response)
        jar: Hashable = response.meta.get("cookiejar")
        following = self.jars.index(jar) + 1
        if following < len(self.jars):
            yield self.login_page(self.jars[following])


@pytest_twisted.ensureDeferred
async def test_the_format_is_learnt_from_answers_the_site_accepted(
    capsolver: CapSolverMock, digits_site: str
) -> None:
    # No length or characters given: the first logins are paid, and teach the format.
    # After the first 3, the characters seen so far are few: later logins widen them.
    jars = tuple(range(LEARN_AFTER + 9))
    crawler = await crawl(
        OneAfterAnotherSpider, local_settings(capsolver), site=digits_site, jars=jars
    )
    spider: Any = crawler.spider

    assert spider.landed == {jar: "/items" for jar in jars}
    firsts = [spider.solutions[jar][0] for jar in jars]
    assert [s.solver for s in firsts[:LEARN_AFTER]] == ["capsolver"] * LEARN_AFTER
    assert any(s.solver == "local" for s in firsts[LEARN_AFTER:])
    # Learnt: digits only, 4 of them.
    assert all(len(s.text) == 4 and s.text.isdigit() for s in firsts if s.solver == "local")
    assert stat(crawler, "capsolver/local/declined") >= LEARN_AFTER
    assert_shared_between_readers(crawler, capsolver, all_solutions(spider))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"length": 0}, "meta['solve_image']['length']=0 is not valid"),
        ({"length": True}, "meta['solve_image']['length']=True is not valid"),
        ({"charset": ""}, "meta['solve_image']['charset']='' is not valid"),
        ({"local": "no"}, "meta['solve_image']['local']='no' is not valid: expected True or"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_local_options_fail_before_any_download(
    capsolver: CapSolverMock, image_site: str, options: dict[str, Any], message: str
) -> None:
    url = f"{image_site}/captcha/opts.png"
    crawler = await crawl(
        RecordingSpider, local_settings(capsolver), urls=[url], meta={"solve_image": options}
    )
    spider: Any = crawler.spider
    assert isinstance(spider.errors[url], CaptchaOptionsError)
    assert message in str(spider.errors[url])
    assert capsolver.calls() == []


@pytest_twisted.ensureDeferred
async def test_local_true_needs_the_setting(capsolver: CapSolverMock, image_site: str) -> None:
    url = f"{image_site}/captcha/needlocal.png"
    crawler = await crawl(
        RecordingSpider,
        solver_settings(capsolver),
        urls=[url],
        meta={"solve_image": {"local": True}},
    )
    spider: Any = crawler.spider
    assert isinstance(spider.errors[url], CaptchaOptionsError)
    assert "CAPSOLVER_LOCAL_OCR = True" in str(spider.errors[url])
    assert capsolver.calls() == []


# Runs in a fresh interpreter where importing ddddocr fails, as if it were not installed.
WITHOUT_DDDDOCR = """
import json, sys
sys.modules["ddddocr"] = None

import scrapy
from scrapy.crawler import CrawlerProcess

api_url, image_url, key, local = sys.argv[1:]
outcome = {}

class Spider(scrapy.Spider):
    name = "no_engine"

    async def start(self):
        yield scrapy.Request(image_url, meta={"solve_image": True}, callback=self.solved)

    def solved(self, response):
        outcome["text"] = response.meta["captcha_text"]

process = CrawlerProcess({
    "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
    "CAPSOLVER_API_URL": api_url,
    "CAPSOLVER_API_KEY": key,
    "CAPSOLVER_LOCAL_OCR": local == "on",
    "LOG_LEVEL": "WARNING",
    "TELNETCONSOLE_ENABLED": False,
})
crawling = process.crawl(Spider)
crawling.addErrback(lambda f: outcome.update(error=[f.type.__name__, str(f.value)]))
process.start()
outcome["loaded"] = sorted(
    name for name in ("numpy", "onnxruntime", "ddddocr") if sys.modules.get(name) is not None
)
print(json.dumps(outcome))
"""


def run_without_ddddocr(capsolver: CapSolverMock, image_url: str, local: str) -> dict[str, Any]:
    run = subprocess.run(
        [sys.executable, "-c", WITHOUT_DDDDOCR, capsolver.url, image_url, API_KEY, local],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    outcome: dict[str, Any] = json.loads(run.stdout.splitlines()[-1])
    return outcome


def test_local_ocr_without_ddddocr_fails_at_start_naming_the_extra(
    capsolver: CapSolverMock, image_site: str
) -> None:
    outcome = run_without_ddddocr(capsolver, f"{image_site}/captcha/noengine.png", "on")
    name, message = outcome["error"]
    assert name == "OcrUnavailableError"
    assert "CAPSOLVER_LOCAL_OCR = True needs ddddocr" in message
    assert 'pip install "scrapy-capsolver-ocr[ocr]"' in message
    assert "text" not in outcome
    assert capsolver.calls(None) == []


def test_without_ddddocr_the_plugin_still_solves_through_capsolver(
    capsolver: CapSolverMock, image_site: str
) -> None:
    outcome = run_without_ddddocr(capsolver, f"{image_site}/captcha/paid.png", "off")
    assert outcome == {"text": "paid", "loaded": []}
