"""Fast tests of pure pieces, in Scrapy's own style: the error table, image headers, form
editing, the meta parser, answers' parsing and the settings object, without a crawl."""

from __future__ import annotations

import io
import json
import pickle
import re
import struct
from typing import Any

import pytest
from PIL import Image
from scrapy import Request
from scrapy.http import FormRequest, JsonRequest
from scrapy.utils.test import get_crawler

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaImageError,
    CaptchaInjectionError,
    CaptchaOptionsError,
    CaptchaSolution,
    CaptchaSolverMiddleware,
    CaptchaTaskError,
    CaptchaTransientError,
)
from scrapy_capsolver_ocr.api.capsolver import (
    ERROR_TABLE,
    error_for_code,
    rule_for,
    solution_from,
    task_payload,
)
from scrapy_capsolver_ocr.api.errors import answer_number
from scrapy_capsolver_ocr.api.image_task import MAX_SOLUTION_LENGTH
from scrapy_capsolver_ocr.checks import redact_url
from scrapy_capsolver_ocr.images import check_image, declared_size, image_type
from scrapy_capsolver_ocr.integration.addon import Addon
from scrapy_capsolver_ocr.integration.injection import BoundAnswer, with_answer
from scrapy_capsolver_ocr.integration.request_meta import parse_meta
from scrapy_capsolver_ocr.settings import SolverSettings
from scrapy_capsolver_ocr.state.fleet import state_limits

# The error table


@pytest.mark.parametrize(
    ("code", "status", "exception", "retries", "close_reason"),
    [
        ("ERROR_SERVICE_UNAVALIABLE", 200, CaptchaTransientError, None, None),
        ("ERROR_RATE_LIMIT", 429, CaptchaTransientError, None, None),
        ("ERROR_CAPTCHA_UNSOLVABLE", 200, CaptchaTaskError, 1, None),
        ("ERROR_BAD_REQUEST", 400, CaptchaTaskError, 1, None),
        ("ERROR_INVALID_IMAGE", 400, CaptchaTaskError, 0, None),
        ("ERROR_PARSE_IMAGE_FAIL", 400, CaptchaTaskError, 0, None),
        ("ERROR_UNKNOWN_QUESTION", 400, CaptchaTaskError, 0, None),
        ("ERROR_PROXY_BANNED", 400, CaptchaTaskError, 0, None),
        ("ERROR_TASKID_INVALID", 400, CaptchaTaskError, 0, None),
        ("ERROR_SOMETHING_NEW", 400, CaptchaTaskError, 0, None),
        ("ERROR_KEY_DENIED_ACCESS", 401, CaptchaAccountError, 0, "capsolver_bad_key"),
        ("ERROR_ZERO_BALANCE", 401, CaptchaAccountError, 0, "capsolver_zero_balance"),
        ("ERROR_SETTLEMENT_FAILED", 400, CaptchaAccountError, 0, "capsolver_zero_balance"),
        ("ERROR_KEY_TEMP_BLOCKED", 401, CaptchaBlockedError, 0, "capsolver_blocked"),
        ("ERROR_IP_BANNED", 400, CaptchaBlockedError, 0, "capsolver_blocked"),
        ("", 401, CaptchaAccountError, 0, "capsolver_bad_key"),
        ("ERROR_SOMETHING_NEW", 401, CaptchaAccountError, 0, "capsolver_bad_key"),
    ],
)
def test_each_code_maps_to_one_public_class_and_retry_limit(
    code: str,
    status: int,
    exception: type[Exception],
    retries: int | None,
    close_reason: str | None,
) -> None:
    error = error_for_code(code, "said the server", status)
    assert type(error) is exception
    assert error.retry_limit == retries
    assert error.error_code == (code or f"HTTP_{status}")
    assert getattr(error, "close_reason", None) == close_reason
    assert "said the server" in str(error)


def test_every_rule_names_a_public_class() -> None:
    for code, rule in ERROR_TABLE.items():
        assert not rule.exception.__name__.startswith("_"), code
        assert rule.meaning and not rule.meaning.endswith("."), code
    assert rule_for("ANYTHING") is rule_for("ERROR_INVALID_TASK_DATA")


# Answers


def test_answers_are_read_with_their_limits() -> None:
    def answer(**solution: Any) -> dict[str, Any]:
        return {"errorId": 0, "status": "ready", "taskId": "t1", "solution": solution}

    solved = solution_from(answer(text=" ab12 ", confidence=0.9), "sha")
    assert solved == CaptchaSolution("ab12", "t1", "sha", confidence=0.9)
    assert solution_from(answer(text="x", confidence=10**400), "sha").confidence is None
    assert solution_from(answer(text="x", confidence=True), "sha").confidence is None
    assert solution_from(answer(text="x", confidence=float("nan")), "sha").confidence is None
    for broken, code in [
        (answer(text=""), "EMPTY_SOLUTION"),
        (answer(text="a" * (MAX_SOLUTION_LENGTH + 1)), "SOLUTION_TOO_LONG"),
        ({"errorId": 0, "status": "ready"}, "MALFORMED_ANSWER"),
        (answer(text=5), "MALFORMED_ANSWER"),
    ]:
        with pytest.raises((CaptchaTaskError, CaptchaTransientError)) as caught:
            solution_from(broken, "sha")
        assert caught.value.error_code == code  # type: ignore[union-attr]
    assert solution_from({**answer(text="x"), "taskId": "t" * 500}, "sha").task_id == ""


def test_number_fields_of_answers_are_finite_floats_or_nothing() -> None:
    assert answer_number(2) == 2.0
    assert answer_number(0.25) == 0.25
    for broken in (True, "1", None, [1], float("nan"), float("inf"), -float("inf"), 10**400):
        assert answer_number(broken) is None


def test_task_payload_leaves_optional_fields_out() -> None:
    bare = task_payload(b"\x89PNG", module=None, score=None, website_url=None, app_id=None)
    assert bare == {"task": {"type": "ImageToTextTask", "body": "iVBORw=="}}
    full = task_payload(b"x", module="number", score=0.9, website_url="https://a/", app_id="A")
    assert full == {
        "task": {
            "type": "ImageToTextTask",
            "body": "eA==",
            "module": "number",
            "score": 0.9,
            "websiteURL": "https://a/",
        },
        "appId": "A",
    }


# Image headers


def encoded(fmt: str, size: tuple[int, int], **options: Any) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, "white").save(out, fmt, **options)
    return out.getvalue()


@pytest.mark.parametrize(
    ("fmt", "options"),
    [
        ("PNG", {}),
        ("GIF", {}),
        ("BMP", {}),
        ("JPEG", {}),
        ("JPEG", {"progressive": True}),
        ("WEBP", {"lossless": True}),
        ("WEBP", {"quality": 80}),
        ("WEBP", {"exif": b"Exif\x00\x00x"}),
    ],
)
def test_declared_size_is_read_from_each_format_header(fmt: str, options: dict[str, Any]) -> None:
    body = encoded(fmt, (321, 77), **options)
    kind = image_type(body)
    assert kind is not None
    assert declared_size(kind, body) == (321, 77)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny valid-looking PNG whose header declares ``width`` x ``height`` pixels."""
    body = encoded("PNG", (1, 1))
    return body[:16] + struct.pack(">II", width, height) + body[24:]


def test_an_image_bomb_is_refused_by_its_header() -> None:
    bomb = png_declaring(50_000, 50_000)
    assert len(bomb) < 300
    with pytest.raises(
        CaptchaImageError, match="50000x50000 pixels, over CAPSOLVER_MAX_IMAGE_PIXELS"
    ):
        check_image(bomb, 1_048_576, "bomb.png", max_pixels=1_000_000)
    assert check_image(png_declaring(1000, 1000), 1_048_576, "ok.png", max_pixels=1_000_000)
    with pytest.raises(CaptchaImageError, match="0x10 pixels"):
        check_image(png_declaring(0, 10), 1_048_576, "empty.png", max_pixels=1_000_000)


# Form editing


def test_the_answer_replaces_one_field_and_keeps_the_others_as_they_were() -> None:
    form = FormRequest("http://s/login", formdata={"b": "1", "captcha": "", "a": "é"})
    edited = with_answer(form, "captcha", "x y&z")
    assert edited.body == b"b=1&captcha=x+y%26z&a=%C3%A9"
    assert edited.dont_filter
    added = with_answer(FormRequest("http://s/l", formdata={"a": "1"}), "captcha", "ab")
    assert added.body == b"a=1&captcha=ab"
    query = with_answer(Request("http://s/l?x=1&captcha=old&captcha=dup"), "captcha", "new")
    assert query.url == "http://s/l?x=1&captcha=new"
    payload = with_answer(JsonRequest("http://s/l", data={"u": 1}), "captcha", "ab")
    assert json.loads(payload.body) == {"u": 1, "captcha": "ab"}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (Request("http://s/l", method="POST", body=b"raw"), "of no declared type"),
        (
            Request(
                "http://s/l",
                method="POST",
                body=b"[1]",
                headers={"Content-Type": "application/json"},
            ),
            "is a list, not an object",
        ),
        (
            Request(
                "http://s/l",
                method="POST",
                body=b"[" * 100_000,
                headers={"Content-Type": "application/json"},
            ),
            "does not parse",
        ),
    ],
)
def test_a_body_that_cannot_take_the_answer_is_refused(request_: Request, message: str) -> None:
    with pytest.raises(CaptchaInjectionError, match=message):
        with_answer(request_, "captcha", "ab")


def test_a_bound_answer_survives_pickling() -> None:
    solution = CaptchaSolution("ab12", "t1", "sha")
    origin = Request("http://s/captcha.png", meta={"solve_image": True}).to_dict()
    bound = BoundAnswer("ab12", solution, 2, origin, in_body=True)
    assert pickle.loads(pickle.dumps(bound)) == bound


# Meta


def test_meta_is_parsed_into_one_typed_object() -> None:
    solution = CaptchaSolution("ab", "t", "sha")
    parsed = parse_meta(
        {
            "solve_image": {"module": "number"},
            "captcha_field": "captcha",
            "captcha_retry_if": "Wrong",
            "captcha_solution": solution,
            "captcha_attempt": 2,
            "cookiejar": "s1",
        }
    )
    assert parsed.solve is not None and parsed.solve.module == "number"
    assert parsed.field == "captcha"
    assert isinstance(parsed.retry_if, re.Pattern)
    assert parsed.chosen is solution
    assert (parsed.attempt, parsed.session, parsed.opted_out) == (2, "s1", False)
    bare = parse_meta({"solve_image": False, "captcha_solution": object()})
    assert bare.opted_out and bare.solve is None and bare.chosen is None


@pytest.mark.parametrize(
    "meta",
    [
        {"solve_image": "yes"},
        {"captcha_attempt": True},
        {"captcha_attempt": 0},
        {"captcha_field": ""},
        {"captcha_retry_if": 3, "captcha_field": "c"},
        {"captcha_retry_if": re.compile(b"x"), "captcha_field": "c"},
    ],
)
def test_a_wrong_meta_value_is_an_options_error(meta: dict[str, Any]) -> None:
    with pytest.raises(CaptchaOptionsError):
        parse_meta(meta)


# Settings and the add-on


def test_settings_are_read_once_with_their_defaults() -> None:
    crawler = get_crawler(settings_dict={"CAPSOLVER_API_KEY": "k" * 32})
    config = SolverSettings.from_settings(crawler.settings)
    assert (config.concurrency, config.max_image_pixels, config.poll_interval) == (
        16,
        1_000_000,
        1.0,
    )
    assert config.redis_url is None and config.add_request_slots
    assert state_limits(config).lease == config.timeout + 10


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("CAPSOLVER_MAX_IMAGE_PIXELS", 0),
        ("CAPSOLVER_POLL_INTERVAL", 0),
        ("CAPSOLVER_CACHE_TTL", -1),
        ("CAPSOLVER_BUDGET_PERIOD", "daily"),
        ("CAPSOLVER_FLEET_CONCURRENCY", -2),
        ("CAPSOLVER_REDIS_URL", "http://localhost:6379"),
        ("CAPSOLVER_ADD_REQUEST_SLOTS", "maybe"),
    ],
)
def test_a_bad_new_setting_is_named_at_start(name: str, value: Any) -> None:
    crawler = get_crawler(settings_dict={name: value})
    with pytest.raises(ValueError, match=name):
        CaptchaSolverMiddleware.from_crawler(crawler)


def test_a_redis_password_never_shows_in_a_message() -> None:
    assert redact_url("redis://user:s3cret@host:6379/0") == "redis://user:***@host:6379/0"
    crawler = get_crawler(settings_dict={"CAPSOLVER_REDIS_URL": "http://:s3cret@host"})
    with pytest.raises(ValueError) as caught:
        CaptchaSolverMiddleware.from_crawler(crawler)
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({}, 16 + 16),
        ({"CONCURRENT_REQUESTS": 8, "CAPSOLVER_CONCURRENCY": 4}, 12),
        ({"CAPSOLVER_ADD_REQUEST_SLOTS": False}, 16),
        ({"CAPSOLVER_ENABLED": False}, 16),
        ({"CAPSOLVER_CONCURRENCY": "many"}, 16),
    ],
)
def test_the_addon_gives_solves_request_slots(settings: dict[str, Any], expected: int) -> None:
    crawler = get_crawler(settings_dict={"ADDONS": {Addon: 500}, **settings})
    assert crawler.settings.getint("CONCURRENT_REQUESTS") == expected
