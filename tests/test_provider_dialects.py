"""Anti-Captcha, CapMonster Cloud and 2Captcha (API v2) behind the provider seam, piece by
piece: their task bodies and options, ids, answers, balance and report calls, and every
error code of their tables mapped onto the plugin's classes (docs/providers.md)."""

from __future__ import annotations

import json
from typing import Any

import pytest

import scrapy_capsolver_ocr
from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaNoSlotError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from scrapy_capsolver_ocr.api import anticaptcha, capmonster, twocaptcha
from scrapy_capsolver_ocr.api.capsolver import CapSolver
from scrapy_capsolver_ocr.api.polled_service import PolledService
from scrapy_capsolver_ocr.api.provider import TaskOptions
from scrapy_capsolver_ocr.api.registry import PROVIDER_KINDS
from scrapy_capsolver_ocr.errors import CLOSE_BAD_KEY, CLOSE_BLOCKED, CLOSE_ZERO_BALANCE
from scrapy_capsolver_ocr.solution import CaptchaSolution

POLLED = ("anticaptcha", "capmonster", "2captcha")
#: 2Captcha's ids exceed 2**32 (its docs' example); this one exceeds 2**64 too.
HUGE_ID = 2**64 + 74372499131


def build(name: str, **options: Any) -> PolledService:
    provider = PROVIDER_KINDS[name].build(options, "CAPSOLVER-APP-ID")
    assert isinstance(provider, PolledService)
    return provider


# The registry


def test_the_registry_names_each_service_its_url_and_key_variable() -> None:
    assert {
        name: (kind.default_url, kind.key_variable) for name, kind in PROVIDER_KINDS.items()
    } == {
        "capsolver": ("https://api.capsolver.com", "CAPSOLVER_API_KEY"),
        "anticaptcha": ("https://api.anti-captcha.com", "ANTICAPTCHA_API_KEY"),
        "capmonster": ("https://api.capmonster.cloud", "CAPMONSTER_API_KEY"),
        "2captcha": ("https://api.2captcha.com", "TWOCAPTCHA_API_KEY"),
    }
    names = {name: PROVIDER_KINDS[name].build({}, None).name for name in PROVIDER_KINDS}
    assert names == {
        "capsolver": "CapSolver",
        "anticaptcha": "Anti-Captcha",
        "capmonster": "CapMonster Cloud",
        "2captcha": "2Captcha",
    }
    assert isinstance(PROVIDER_KINDS["capsolver"].build({}, "APP"), CapSolver)


def test_no_slot_is_a_public_transient_error() -> None:
    assert issubclass(CaptchaNoSlotError, CaptchaTransientError)
    assert "CaptchaNoSlotError" in scrapy_capsolver_ocr.__all__
    assert scrapy_capsolver_ocr.CaptchaNoSlotError is CaptchaNoSlotError


# Task bodies


def test_a_bare_task_is_the_same_for_all_three() -> None:
    for name in POLLED:
        assert build(name).task_payload(b"img", TaskOptions()) == {
            "task": {"type": "ImageToTextTask", "body": "aW1n"}
        }


def test_anticaptcha_sends_its_options_in_the_task_and_the_page_as_websiteurl() -> None:
    options = {
        "phrase": True,
        "case": True,
        "numeric": 2,
        "math": False,
        "minLength": 4,
        "maxLength": 6,
        "comment": "enter red text",
        "languagePool": "rn",
    }
    payload = build("anticaptcha", **options).task_payload(
        b"img", TaskOptions(module="common", score=0.9, website_url="https://site/login")
    )
    assert payload == {
        "task": {
            "type": "ImageToTextTask",
            "body": "aW1n",
            **options,
            "websiteURL": "https://site/login",
        }
    }


def test_capmonster_maps_its_own_module_names_and_the_score_as_a_threshold() -> None:
    provider = build("capmonster", case=True, numeric=1, math=False)
    payload = provider.task_payload(
        b"img", TaskOptions(module="yandex", score=0.85, website_url="https://site/")
    )
    assert payload == {
        "task": {
            "type": "ImageToTextTask",
            "body": "aW1n",
            "case": True,
            "numeric": 1,
            "math": False,
            "capMonsterModule": "yandex",
            "recognizingThreshold": 85,
        }
    }
    # CapSolver's module names are not CapMonster's: the entry's own module is sent instead.
    default = build("capmonster", capMonsterModule="universal")
    task = default.task_payload(b"img", TaskOptions(module="number"))["task"]
    assert task["capMonsterModule"] == "universal"
    assert default.unsupported(TaskOptions(module="number")) == ["module"]
    assert default.unsupported(TaskOptions(module="yandex", score=0.8)) == []
    # captcha_math computes the expression itself: math is not sent as true with it.
    with_math = build("capmonster", math=True)
    task = with_math.task_payload(b"img", TaskOptions(module="captcha_math"))["task"]
    assert (task["capMonsterModule"], task["math"]) == ("captcha_math", False)


def test_twocaptcha_sends_the_language_beside_the_task_and_nothing_for_the_plugin_options() -> None:
    options = {
        "phrase": False,
        "case": True,
        "numeric": 4,
        "math": True,
        "minLength": 0,
        "maxLength": 8,
        "comment": "type the red letters",
        "imgInstructions": "aW5zdHJ1Y3Rpb25z",
    }
    provider = build("2captcha", **options, languagePool="en")
    payload = provider.task_payload(
        b"img", TaskOptions(module="common", score=0.9, website_url="https://site/")
    )
    assert payload == {
        "task": {"type": "ImageToTextTask", "body": "aW1n", **options},
        "languagePool": "en",
    }


@pytest.mark.parametrize(
    ("name", "options", "unsupported"),
    [
        ("anticaptcha", TaskOptions(module="common", score=0.9), ["module", "score"]),
        ("anticaptcha", TaskOptions(score=0.9, website_url="https://a/"), ["score"]),
        ("2captcha", TaskOptions(module="number"), ["module"]),
        ("2captcha", TaskOptions(website_url="https://a/"), []),
        ("capmonster", TaskOptions(module="queueit", score=0.9), ["module"]),
        ("capmonster", TaskOptions(module="sat", score=0.9, website_url="https://a/"), []),
        ("capsolver", TaskOptions(module="queueit", score=0.9, website_url="https://a/"), []),
    ],
)
def test_each_service_names_the_plugin_options_it_cannot_honour(
    name: str, options: TaskOptions, unsupported: list[str]
) -> None:
    assert PROVIDER_KINDS[name].build({}, None).unsupported(options) == unsupported


# Options refused at start


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("anticaptcha", {"module": "x"}, "Anti-Captcha has no image-task option 'module'"),
        ("anticaptcha", {"numeric": 3}, "Anti-Captcha option 'numeric' must be one of 0, 1, 2"),
        ("anticaptcha", {"numeric": True}, "Anti-Captcha option 'numeric' must be an integer"),
        ("anticaptcha", {"case": 1}, "Anti-Captcha option 'case' must be true or false"),
        ("anticaptcha", {"comment": 5}, "Anti-Captcha option 'comment' must be a string"),
        ("anticaptcha", {"languagePool": "de"}, "option 'languagePool' must be one of 'en'"),
        ("anticaptcha", {"minLength": -1}, "option 'minLength' must be at least 0"),
        ("anticaptcha", {"maxLength": 2.5}, "option 'maxLength' must be an integer"),
        ("2captcha", {"minLength": 6, "maxLength": 4}, "the minimum is over the maximum"),
        ("2captcha", {"numeric": 5}, "2Captcha option 'numeric' must be one of 0, 1, 2, 3, 4"),
        ("2captcha", {"recognizingThreshold": 90}, "2Captcha has no image-task option"),
        ("capmonster", {"phrase": True}, "CapMonster Cloud has no image-task option 'phrase'"),
        ("capmonster", {"numeric": 2}, "CapMonster Cloud option 'numeric' must be one of 0, 1"),
        ("capmonster", {"capMonsterModule": "common"}, "option 'capMonsterModule' must be one"),
        ("capmonster", {"CapMonsterModule": "yandex"}, "no image-task option 'CapMonsterModule'"),
        (
            "capmonster",
            {"math": True, "capMonsterModule": "captcha_math"},
            "CapMonster asks not to send both",
        ),
        ("capsolver", {"case": True}, "CapSolver takes no options here"),
    ],
)
def test_bad_options_are_refused_naming_the_option_and_the_service(
    name: str, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        PROVIDER_KINDS[name].build(options, None)


def test_the_refusal_lists_the_options_the_service_takes() -> None:
    with pytest.raises(ValueError) as caught:
        build("capmonster", Case=True)
    assert str(caught.value).endswith("the options it takes: capMonsterModule, case, math, numeric")


# Ids, answers, balance and report


@pytest.mark.parametrize("name", POLLED)
def test_integer_ids_are_kept_exact_and_sent_back_as_json_integers(name: str) -> None:
    provider = build(name)
    created = json.loads(json.dumps({"errorId": 0, "taskId": HUGE_ID}))
    task_id = provider.task_id(created)
    assert task_id == str(HUGE_ID)
    body = json.dumps(provider.result_payload(task_id))
    assert body == f'{{"taskId": {HUGE_ID}}}'
    _method, report = provider.wrong_answer(task_id, "Wrong captcha")
    assert json.dumps(report) == body
    # Only integer ids are the services' own.
    for broken in (True, None, "74372499131", 1.5, -1, 10**200):
        assert provider.task_id({"taskId": broken}) == ""


@pytest.mark.parametrize("name", POLLED)
def test_answers_wait_for_getTaskResult_until_ready(name: str) -> None:
    provider = build(name)
    assert provider.pending({"errorId": 0, "taskId": 7654321})
    assert provider.pending({"errorId": 0, "status": "processing"})
    ready = {"errorId": 0, "status": "ready", "solution": {"text": " deditur "}, "taskId": "7"}
    assert not provider.pending(ready)
    assert provider.solution(ready, "sha") == CaptchaSolution("deditur", "7", "sha")
    with pytest.raises(CaptchaTransientError) as caught:
        provider.solution({"errorId": 0, "status": "ready", "solution": "x"}, "sha")
    assert caught.value.error_code == "MALFORMED_ANSWER"
    assert str(caught.value).startswith(f"{provider.name} answered MALFORMED_ANSWER")
    with pytest.raises(CaptchaTaskError, match="EMPTY_SOLUTION"):
        provider.solution({"status": "ready", "solution": {"text": " "}}, "sha")


@pytest.mark.parametrize("name", POLLED)
def test_balance_is_read_from_getbalance(name: str) -> None:
    provider = build(name)
    assert provider.balance_call() == ("getBalance", {})
    assert provider.balance_from({"errorId": 0, "balance": 345.678}) == 345.678
    assert provider.balance_from({"errorId": 0, "balance": 3, "captchaCredits": 10}) == 3.0
    for broken in ("12.5", None, float("nan"), True):
        with pytest.raises(CaptchaTransientError, match="getBalance answered without a finite"):
            provider.balance_from({"errorId": 0, "balance": broken})


def test_each_service_reports_a_wrong_answer_its_way() -> None:
    assert build("anticaptcha").wrong_answer("7654321", "Wrong captcha") == (
        "reportIncorrectImageCaptcha",
        {"taskId": 7654321},
    )
    assert build("capmonster").wrong_answer("407533072", "") == (
        "reportIncorrectImageCaptcha",
        {"taskId": 407533072},
    )
    assert build("2captcha").wrong_answer("74372499131", "Wrong captcha") == (
        "reportIncorrect",
        {"taskId": 74372499131},
    )


def test_the_repr_shows_the_options_and_never_a_key() -> None:
    assert repr(build("2captcha", numeric=1)) == "TwoCaptcha(options={'numeric': 1})"


# Every error code of every table

BAD_KEY = (CaptchaAccountError, 0, CLOSE_BAD_KEY)
NO_MONEY = (CaptchaAccountError, 0, CLOSE_ZERO_BALANCE)
NO_SLOT = (CaptchaNoSlotError, None, "")
BANNED = (CaptchaBlockedError, 0, CLOSE_BLOCKED)
REFUSED = (CaptchaTaskError, 0, "")
WAIT = (CaptchaTransientError, None, "")
ONCE = (CaptchaTaskError, 1, "")
OWN_CHECKS = {
    "MALFORMED_ANSWER": WAIT,
    "EMPTY_SOLUTION": ONCE,
    "SOLUTION_TOO_LONG": REFUSED,
    "TASK_NOT_READY": REFUSED,
}
SHARED = {
    "ERROR_KEY_DOES_NOT_EXIST": BAD_KEY,
    "ERROR_IP_NOT_ALLOWED": BAD_KEY,
    "ERROR_ZERO_BALANCE": NO_MONEY,
    "ERROR_NO_SLOT_AVAILABLE": NO_SLOT,
    "ERROR_ZERO_CAPTCHA_FILESIZE": REFUSED,
    "ERROR_TOO_BIG_CAPTCHA_FILESIZE": REFUSED,
    "ERROR_NO_SUCH_METHOD": REFUSED,
    "ERROR_NO_SUCH_CAPCHA_ID": REFUSED,
    "ERROR_IP_BLOCKED": BANNED,
}
EXPECTED: dict[str, dict[str, tuple[type[Exception], int | None, str]]] = {
    "anticaptcha": {
        **SHARED,
        # Charged by Anti-Captcha: never paid a second time.
        "ERROR_CAPTCHA_UNSOLVABLE": REFUSED,
        "ERROR_BAD_DUPLICATES": REFUSED,
        "ERROR_IMAGE_TYPE_NOT_SUPPORTED": REFUSED,
        **OWN_CHECKS,
    },
    "capmonster": {
        **SHARED,
        "ERROR_CAPTCHA_UNSOLVABLE": ONCE,
        "ERROR_TASK_NOT_SUPPORTED": REFUSED,
        "ERROR_TASK_ABSENT": REFUSED,
        "ERROR_DOMAIN_NOT_ALLOWED": REFUSED,
        "ERROR_IP_BANNED": BANNED,
        "WRONG_CAPTCHA_ID": REFUSED,
        "ERROR_TOO_MUCH_REQUESTS": WAIT,
        "CAPTCHA_NOT_READY": WAIT,
        **OWN_CHECKS,
    },
    "2captcha": {
        **SHARED,
        "ERROR_CAPTCHA_UNSOLVABLE": ONCE,
        "ERROR_BAD_DUPLICATES": ONCE,
        "ERROR_IMAGE_TYPE_NOT_SUPPORTED": REFUSED,
        "ERROR_TASK_ABSENT": REFUSED,
        "ERROR_TASK_NOT_SUPPORTED": REFUSED,
        "ERROR_REPORT_NOT_RECORDED": REFUSED,
        **OWN_CHECKS,
    },
}
TABLES = {
    "anticaptcha": anticaptcha.ERRORS,
    "capmonster": capmonster.ERRORS,
    "2captcha": twocaptcha.ERRORS,
}


@pytest.mark.parametrize("name", POLLED)
def test_every_documented_code_has_a_rule(name: str) -> None:
    assert set(TABLES[name].rules) == set(EXPECTED[name])
    assert build(name).errors is TABLES[name]


@pytest.mark.parametrize(
    ("name", "code"), [(name, code) for name in POLLED for code in EXPECTED[name]]
)
def test_every_code_maps_onto_its_class_retries_and_close_reason(name: str, code: str) -> None:
    exception, retries, close_reason = EXPECTED[name][code]
    table = TABLES[name]
    error = table.error_for(code, "said by the service")
    assert type(error) is exception
    assert error.retry_limit == retries
    assert getattr(error, "close_reason", "") == close_reason
    assert (error.error_code, error.description) == (code, "said by the service")
    assert str(error).startswith(f"{table.service} answered {code} (said by the service): ")


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("anticaptcha", "ANTICAPTCHA_API_KEY"),
        ("capmonster", "CAPMONSTER_API_KEY"),
        ("2captcha", "TWOCAPTCHA_API_KEY"),
    ],
)
def test_a_refused_key_names_the_service_key_variable(name: str, variable: str) -> None:
    table = TABLES[name]
    assert f"check {variable}" in str(table.error_for("ERROR_KEY_DOES_NOT_EXIST"))
    # HTTP 401 without a code the table knows is a refused key too.
    refused = table.error_for("", "", 401)
    assert isinstance(refused, CaptchaAccountError)
    assert refused.close_reason == CLOSE_BAD_KEY and refused.error_code == "HTTP_401"


@pytest.mark.parametrize("name", POLLED)
def test_an_undocumented_code_fails_that_task_only(name: str) -> None:
    error = TABLES[name].error_for("ERROR_NEVER_DOCUMENTED")
    assert type(error) is CaptchaTaskError and error.retry_limit == 0


def test_the_unsolvable_messages_say_who_charges_for_it() -> None:
    charged = str(anticaptcha.ERRORS.error_for("ERROR_CAPTCHA_UNSOLVABLE"))
    assert "Anti-Captcha charges for it: not tried again" in charged
    assert "charges" not in str(twocaptcha.ERRORS.error_for("ERROR_CAPTCHA_UNSOLVABLE"))
