"""The provider seam: CapSolver's pieces on their own, and a crawl through a service that is
not CapSolver (a real server on 127.0.0.1 speaking a dialect of its own)."""

from __future__ import annotations

import base64
import json
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from captcha_spiders import ITEMS, PageLoginSpider
from conftest import API_KEY, SERVERS, closed_port_url
from crawling import RecordingSpider, crawl, solver_settings, stat
from servers.process import running_server

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from scrapy_capsolver_ocr.api.capsolver import ERRORS, CapSolver
from scrapy_capsolver_ocr.api.errors import ErrorRule, ErrorTable
from scrapy_capsolver_ocr.api.image_task import checked_solution, task_id_text
from scrapy_capsolver_ocr.api.provider import ApiCall, Provider, TaskOptions
from scrapy_capsolver_ocr.errors import CLOSE_BAD_KEY
from scrapy_capsolver_ocr.integration import readers
from scrapy_capsolver_ocr.solution import CaptchaSolution

# CapSolver's pieces


def test_capsolver_task_body_spells_the_plugin_options_its_way() -> None:
    bare = CapSolver().task_payload(b"img", TaskOptions())
    assert bare == {"task": {"type": "ImageToTextTask", "body": "aW1n"}}
    options = TaskOptions(module="number", score=0.85, website_url="https://site/")
    full = CapSolver(app_id="APP").task_payload(b"img", options)
    assert full == {
        "task": {
            "type": "ImageToTextTask",
            "body": "aW1n",
            "module": "number",
            "score": 0.85,
            "websiteURL": "https://site/",
        },
        "appId": "APP",
    }


def test_capsolver_answers_are_pending_until_ready_and_polled_by_their_string_id() -> None:
    provider = CapSolver()
    assert provider.pending({"errorId": 0, "status": "idle", "taskId": "t"})
    assert provider.pending({"errorId": 0, "status": "processing", "taskId": "t"})
    # createTask usually answers the image task at once.
    assert not provider.pending({"errorId": 0, "status": "ready", "solution": {"text": "a"}})
    assert provider.task_id({"taskId": "37223a89"}) == "37223a89"
    assert provider.task_id({"taskId": 7654321}) == "7654321"
    for broken in (True, None, 1.5, ["t"], "t" * 129):
        assert provider.task_id({"taskId": broken}) == ""
    assert provider.result_payload("37223a89") == {"taskId": "37223a89"}


def test_capsolver_solution_balance_and_report_are_read_its_way() -> None:
    provider = CapSolver(app_id="APP")
    ready = {"errorId": 0, "status": "ready", "taskId": "t1", "solution": {"text": " x1 "}}
    assert provider.solution(ready, "sha") == CaptchaSolution("x1", "t1", "sha")
    with pytest.raises(CaptchaTransientError) as caught:
        provider.solution({"errorId": 0, "status": "ready", "solution": "x1"}, "sha")
    assert caught.value.error_code == "MALFORMED_ANSWER"
    assert provider.balance_call() == ("getBalance", {})
    assert provider.balance_from({"errorId": 0, "balance": 12.5, "packages": []}) == 12.5
    with pytest.raises(CaptchaTransientError, match="getBalance answered without a finite"):
        provider.balance_from({"errorId": 0, "balance": "12.5"})
    assert provider.wrong_answer("t1", "Wrong captcha") == (
        "feedbackTask",
        {
            "taskId": "t1",
            "result": {"invalid": True, "code": 1001, "message": "Wrong captcha"},
            "appId": "APP",
        },
    )
    assert CapSolver().wrong_answer("t1", "") == (
        "feedbackTask",
        {"taskId": "t1", "result": {"invalid": True, "code": 1001}},
    )


@pytest.mark.parametrize(
    ("code", "status", "exception", "retries"),
    [
        ("ERROR_RATE_LIMIT", 200, CaptchaTransientError, None),
        ("ERROR_CAPTCHA_UNSOLVABLE", 200, CaptchaTaskError, 1),
        ("ERROR_INVALID_IMAGE", 400, CaptchaTaskError, 0),
        ("ERROR_IP_BANNED", 200, CaptchaBlockedError, 0),
        ("ERROR_ZERO_BALANCE", 200, CaptchaAccountError, 0),
        ("ERROR_NEVER_DOCUMENTED", 400, CaptchaTaskError, 0),
        ("ERROR_NEVER_DOCUMENTED", 401, CaptchaAccountError, 0),
        ("TASK_NOT_READY", 200, CaptchaTaskError, 0),
    ],
)
def test_capsolver_error_codes_map_onto_the_plugin_classes(
    code: str, status: int, exception: type[Exception], retries: int | None
) -> None:
    error = ERRORS.error_for(code, "details", status)
    assert type(error) is exception
    assert error.retry_limit == retries
    assert str(error).startswith(f"CapSolver answered {code} (details): ")


def test_each_service_names_itself_in_its_errors_and_shares_the_answer_checks() -> None:
    refused = ErrorRule(CaptchaTaskError, 0, "refused")
    table = ErrorTable("Elsewhere", {}, unknown=refused, refused_key=refused)
    assert str(table.error_for("ANY")) == "Elsewhere answered ANY: refused."
    assert str(table.malformed("getFunds", "nothing")).startswith(
        "Elsewhere answered MALFORMED_ANSWER (getFunds answered nothing)"
    )
    assert (
        set(ERRORS.rules)
        >= set(table.rules)
        == {
            "MALFORMED_ANSWER",
            "EMPTY_SOLUTION",
            "SOLUTION_TOO_LONG",
            "TASK_NOT_READY",
        }
    )
    with pytest.raises(CaptchaTaskError) as caught:
        checked_solution(table, "  ", task_id="1", image_sha256="sha")
    assert str(caught.value).startswith("Elsewhere answered EMPTY_SOLUTION")


# A service that is not CapSolver, behind the same seam

_WHO_ARE_YOU = ErrorRule(CaptchaAccountError, 0, "the key was refused", CLOSE_BAD_KEY)
_OTHER_ERRORS = ErrorTable(
    "OtherService",
    {
        "WHO_ARE_YOU": _WHO_ARE_YOU,
        "CANNOT_READ": ErrorRule(CaptchaTaskError, 1, "this image could not be read"),
    },
    unknown=ErrorRule(CaptchaTaskError, 0, "the task was refused"),
    refused_key=_WHO_ARE_YOU,
)


class OtherService:
    """tests/servers/other_provider.py's dialect: its own task fields, integer task ids,
    answers only through polling, its own statuses, balance call and report."""

    name = "OtherService"
    errors = _OTHER_ERRORS

    def task_payload(self, image: bytes, options: TaskOptions) -> dict[str, Any]:
        task: dict[str, Any] = {"type": "ImageText", "png64": base64.b64encode(image).decode()}
        if options.score is not None:
            task["minConfidence"] = round(options.score * 100)
        return {"task": task}

    def pending(self, answer: dict[str, Any]) -> bool:
        return answer.get("status") != "done"

    def task_id(self, answer: dict[str, Any]) -> str:
        return task_id_text(answer.get("taskId"))

    def result_payload(self, task_id: str) -> dict[str, Any]:
        return {"taskId": int(task_id)}

    def solution(self, answer: dict[str, Any], image_sha256: str) -> CaptchaSolution:
        solution = answer.get("solution")
        text = solution.get("value") if isinstance(solution, dict) else None
        return checked_solution(
            self.errors, text, task_id=self.task_id(answer), image_sha256=image_sha256
        )

    def balance_call(self) -> ApiCall:
        return "getFunds", {}

    def balance_from(self, answer: dict[str, Any]) -> float:
        return float(answer["funds"])

    def wrong_answer(self, task_id: str, message: str) -> ApiCall:
        return "reportIncorrect", {"taskId": int(task_id)}

    def unsupported(self, options: TaskOptions) -> list[str]:
        return ["module"] if options.module is not None else []


def _other_service() -> Provider:
    return OtherService()


class OtherServiceCalls:
    def __init__(self, url: str) -> None:
        self.url = url

    def calls(self, method: str) -> list[dict[str, Any]]:
        with urllib.request.urlopen(f"{self.url}/_calls", timeout=10) as answer:
            return [c["body"] for c in json.loads(answer.read()) if c["method"] == method]


@pytest.fixture
def other_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[OtherServiceCalls]:
    """The other service running, and the crawl's settings made into it instead of
    CapSolver."""
    with running_server([str(SERVERS / "other_provider.py"), "--key", API_KEY]) as url:
        monkeypatch.setattr(readers, "provider_for", lambda config: _other_service())
        yield OtherServiceCalls(url)


def _settings(other: OtherServiceCalls) -> dict[str, Any]:
    return solver_settings(None, CAPSOLVER_API_URL=other.url, CAPSOLVER_POLL_INTERVAL=0.01)


@pytest_twisted.ensureDeferred
async def test_a_crawl_solves_through_a_service_that_is_not_capsolver(
    other_service: OtherServiceCalls, image_site: str
) -> None:
    solved, unreadable = f"{image_site}/captcha/ab12.png", f"{image_site}/captcha/blurred.png"
    crawler = await crawl(
        RecordingSpider,
        _settings(other_service),
        urls=[solved, unreadable],
        meta={"solve_image": {"score": 0.9}},
    )
    spider: Any = crawler.spider

    assert spider.texts == {solved: "ab12"}
    assert spider.solutions[solved].task_id.isdigit()
    error = spider.errors[unreadable]
    assert isinstance(error, CaptchaTaskError)
    assert error.error_code == "CANNOT_READ"
    assert "OtherService answered CANNOT_READ" in str(error)
    # The service's own task fields; the unreadable image tried twice, as its rule says.
    tasks = other_service.calls("createTask")
    assert len(tasks) == 3 == stat(crawler, "capsolver/task_count")
    assert stat(crawler, "capsolver/retries") == 1 == stat(crawler, "capsolver/retries/CANNOT_READ")
    assert all(set(t["task"]) == {"type", "png64", "minConfidence"} for t in tasks)
    assert {t["task"]["minConfidence"] for t in tasks} == {90}
    # Every answer came through polling, with the integer ids the service gave.
    polls = other_service.calls("getTaskResult")
    assert len(polls) == 6 == stat(crawler, "capsolver/polls")
    assert all(isinstance(p["taskId"], int) for p in polls)
    assert other_service.calls("getFunds") == [{}, {}]
    assert stat(crawler, "capsolver/balance_start") == 2.5
    assert stat(crawler, "capsolver/spent") == 0


@pytest_twisted.ensureDeferred
async def test_wrong_answers_are_reported_to_that_service_its_way(
    other_service: OtherServiceCalls, rejecting_demo_site: str
) -> None:
    crawler = await crawl(PageLoginSpider, _settings(other_service), site=rejecting_demo_site)
    spider = crawler.spider
    assert isinstance(spider, PageLoginSpider)
    assert (spider.errors, spider.items) == ({}, {None: ITEMS})
    reports = other_service.calls("reportIncorrect")
    created = other_service.calls("createTask")
    assert len(reports) == 2 and len(created) == 3
    assert all(isinstance(r["taskId"], int) for r in reports)
    assert len({r["taskId"] for r in reports}) == 2
    assert stat(crawler, "capsolver/feedback_sent") == 2


# A missing key names the service's own variable


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("capsolver", "No CapSolver API key: set the CAPSOLVER_API_KEY setting or environment"),
        (
            "anticaptcha",
            "No Anti-Captcha API key: give its CAPSOLVER_PROVIDERS entry ('anticaptcha') an "
            "api_key or set the ANTICAPTCHA_API_KEY environment variable.",
        ),
        ("capmonster", "No CapMonster Cloud API key: give its CAPSOLVER_PROVIDERS entry "),
        ("2captcha", "or set the TWOCAPTCHA_API_KEY environment variable."),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_call_without_a_key_names_where_that_services_key_goes(
    name: str, says: str
) -> None:
    from scrapy_capsolver_ocr.api.client import ApiClient
    from scrapy_capsolver_ocr.api.registry import PROVIDER_KINDS

    errors = PROVIDER_KINDS[name].build({}, None).errors
    # Refused before any connection: nothing listens at this URL.
    client = ApiClient(errors, closed_port_url(), None, 1.0, 1)
    with pytest.raises(CaptchaAccountError) as raised:
        await client.call("getBalance", {})
    assert says in str(raised.value)
    assert (raised.value.error_code, raised.value.close_reason) == ("MISSING_KEY", CLOSE_BAD_KEY)
    # Only the service's own variable is named.
    others = [k.key_variable for k in PROVIDER_KINDS.values() if k.name != name]
    assert not any(variable in str(raised.value) for variable in others)
