"""Answers a broken or hostile server or proxy may send: every one ends in a public
``CaptchaSolveError`` subclass, none quotes the key, none is typed into a form whole."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import pytest_twisted
from conftest import API_KEY, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings, stat

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaSolveError,
    CaptchaTaskError,
    CaptchaTransientError,
    get_solver,
)


def public_class(error: BaseException) -> bool:
    return isinstance(error, CaptchaSolveError) and not type(error).__name__.startswith("_")


@pytest_twisted.ensureDeferred
async def test_an_echoing_gateway_never_puts_the_key_in_a_message(
    capsolver: CapSolverMock, image_site: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    capsolver.configure(
        faults=[
            {"fault": "echo", "status": 502},
            {"fault": "echo", "status": 400, "method": "feedbackTask"},
        ]
    )
    url = f"{image_site}/captcha/echoed.png"

    async def report(spider: Any, response: Any) -> None:
        await get_solver(spider.crawler).report_wrong(response.meta["captcha_solution"])

    settings = solver_settings(capsolver, CAPSOLVER_MAX_RETRIES=1)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider
    error = spider.errors[url]

    assert isinstance(error, CaptchaTransientError)
    assert error.error_code == "HTTP_502"
    assert API_KEY not in str(error)
    assert "not a JSON object" in str(error)
    # The whole crawl's log, DEBUG included, never shows it either.
    assert all(API_KEY not in record.getMessage() for record in caplog.records)

    capsolver.configure(faults=[{"fault": "echo", "status": 400, "method": "feedbackTask"}])
    caplog.clear()
    crawler = await crawl(RecordingSpider, settings, urls=[url], on_response=report)
    warnings = [r.getMessage() for r in caplog.records if "Could not report" in r.getMessage()]
    assert len(warnings) == 1
    assert "HTTP 400" in warnings[0]
    assert all(API_KEY not in record.getMessage() for record in caplog.records)
    assert stat(crawler, "capsolver/feedback_failed") == 1


@pytest_twisted.ensureDeferred
async def test_an_error_description_quoting_the_key_is_scrubbed(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(
        faults=[
            {
                "fault": "error",
                "code": "ERROR_INVALID_TASK_DATA",
                "description": f"bad request from {API_KEY}",
            }
        ]
    )
    url = f"{image_site}/captcha/described.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    error: Any = crawler.spider.errors[url]  # type: ignore[union-attr]

    assert isinstance(error, CaptchaTaskError)
    assert API_KEY not in str(error)
    assert API_KEY not in error.description
    assert "...CRET" in error.description


@pytest.mark.parametrize(
    ("rule", "code", "error_class"),
    [
        ({"fault": "nested"}, "NOT_JSON", CaptchaTransientError),
        ({"fault": "long_text"}, "SOLUTION_TOO_LONG", CaptchaTaskError),
        (
            {"fault": "error", "code": "ERROR_CAPTCHA_UNSOLVABLE"},
            "ERROR_CAPTCHA_UNSOLVABLE",
            CaptchaTaskError,
        ),
        (
            {"fault": "error", "code": "ERROR_PARSE_IMAGE_FAIL"},
            "ERROR_PARSE_IMAGE_FAIL",
            CaptchaTaskError,
        ),
        (
            {"fault": "error", "code": "ERROR_UNKNOWN_QUESTION"},
            "ERROR_UNKNOWN_QUESTION",
            CaptchaTaskError,
        ),
        ({"fault": "error", "code": "ERROR_PROXY_BANNED"}, "ERROR_PROXY_BANNED", CaptchaTaskError),
        (
            {"fault": "error", "code": "ERROR_TASKID_INVALID"},
            "ERROR_TASKID_INVALID",
            CaptchaTaskError,
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else None,
)
@pytest_twisted.ensureDeferred
async def test_hostile_or_refused_answers_end_in_a_public_class(
    capsolver: CapSolverMock,
    image_site: str,
    rule: dict[str, Any],
    code: str,
    error_class: type[CaptchaSolveError],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    capsolver.configure(faults=[rule])
    url = f"{image_site}/captcha/hostile.png"
    settings = solver_settings(capsolver, CAPSOLVER_MAX_RETRIES=1)
    crawler = await crawl(RecordingSpider, settings, urls=[url])
    spider: Any = crawler.spider

    error = spider.errors[url]
    assert type(error) is error_class
    assert public_class(error)
    assert error.error_code == code  # type: ignore[attr-defined]
    assert spider.ended == {url: 1}
    assert stat(crawler, f"capsolver/failed/{error_class.__name__}") == 1
    # No log line carries a megabyte of answer.
    assert max(len(record.getMessage()) for record in caplog.records) < 5000


@pytest_twisted.ensureDeferred
async def test_a_confidence_too_large_for_a_float_is_left_out(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "huge_confidence"}])
    url = f"{image_site}/captcha/confident.png"
    crawler = await crawl(RecordingSpider, solver_settings(capsolver), urls=[url])
    spider: Any = crawler.spider

    assert spider.texts == {url: "confident"}
    assert spider.solutions[url].confidence is None


@pytest_twisted.ensureDeferred
async def test_http_401_with_a_known_code_is_classified_by_the_code(
    capsolver: CapSolverMock, image_site: str
) -> None:
    capsolver.configure(faults=[{"fault": "error", "code": "ERROR_ZERO_BALANCE", "status": 401}])
    urls = [f"{image_site}/captcha/broke{i}.png" for i in range(3)]
    settings = solver_settings(capsolver, CAPSOLVER_CONCURRENCY=1, CAPSOLVER_CHECK_BALANCE=False)
    crawler = await crawl(RecordingSpider, settings, urls=urls)
    spider: Any = crawler.spider

    assert stat(crawler, "finish_reason") == "capsolver_zero_balance"
    errors = list(spider.errors.values())
    assert errors and all(type(e) is CaptchaAccountError for e in errors)
    assert {e.close_reason for e in errors} == {"capsolver_zero_balance"}


def test_the_command_line_never_prints_an_echoed_key(capsolver: CapSolverMock) -> None:
    from test_cli import assert_one_line_error, png, run_cli

    capsolver.configure(faults=[{"fault": "echo", "status": 502, "method": "*"}])
    for command in (["solve", "-", "--retries", "0"], ["balance"]):
        result = run_cli(*command, "--api-url", capsolver.url, stdin=png("ab12", embed=True))
        message = assert_one_line_error(result, command[0])
        assert "HTTP 502" in message
        assert API_KEY not in result.stderr + result.stdout
