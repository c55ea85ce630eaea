"""Bad ``CAPSOLVER_*`` values stop the crawl at start with a ValueError that names the
setting, the value and what is allowed, before any request or API call."""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from conftest import API_KEY, CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings
from scrapy.utils.test import get_crawler

from scrapy_capsolver_ocr import CaptchaSolverMiddleware
from scrapy_capsolver_ocr.settings import SolverSettings

SECONDS = "a finite number of seconds > 0"
URL = "an http:// or https:// URL"

# (setting, value, how the message shows the value, what the message says is allowed)
BAD_SETTINGS: list[tuple[str, Any, str, str]] = [
    ("CAPSOLVER_SCORE", 0.5, "0.5", "a number from 0.8 to 1.0"),
    ("CAPSOLVER_SCORE", 1.5, "1.5", "a number from 0.8 to 1.0"),
    ("CAPSOLVER_SCORE", "high", "'high'", "a number from 0.8 to 1.0"),
    ("CAPSOLVER_SCORE", True, "True", "a number from 0.8 to 1.0"),
    ("CAPSOLVER_TIMEOUT", -5, "-5.0", SECONDS),
    ("CAPSOLVER_TIMEOUT", 0, "0.0", SECONDS),
    ("CAPSOLVER_TIMEOUT", "soon", "'soon'", SECONDS),
    ("CAPSOLVER_TIMEOUT", float("nan"), "nan", SECONDS),
    ("CAPSOLVER_TIMEOUT", "inf", "inf", SECONDS),
    ("CAPSOLVER_BLOCK_PAUSE", float("inf"), "inf", SECONDS),
    ("CAPSOLVER_BACKOFF_BASE", -1, "-1.0", SECONDS),
    ("CAPSOLVER_BLOCK_WINDOW", -1, "-1.0", "a finite number of seconds >= 0"),
    ("CAPSOLVER_LOGSTATS_INTERVAL", -60, "-60.0", "a finite number of seconds >= 0"),
    ("CAPSOLVER_CONCURRENCY", 0, "0", "a whole number >= 1"),
    ("CAPSOLVER_CONCURRENCY", "0", "0", "a whole number >= 1"),
    ("CAPSOLVER_CONCURRENCY", 2.5, "2.5", "a whole number >= 1"),
    ("CAPSOLVER_MAX_RETRIES", -1, "-1", "a whole number >= 0"),
    ("CAPSOLVER_MAX_RETRIES", "three", "'three'", "a whole number >= 0"),
    ("CAPSOLVER_MAX_TASKS", -10, "-10", "a whole number >= 0"),
    ("CAPSOLVER_MAX_IMAGE_SIZE", 0, "0", "a whole number >= 1"),
    ("CAPSOLVER_CACHE_SIZE", -1, "-1", "a whole number >= 0"),
    ("CAPSOLVER_MAX_ATTEMPTS", 0, "0", "a whole number >= 1"),
    ("CAPSOLVER_API_URL", "ftp://api.capsolver.com", "'ftp://api.capsolver.com'", URL),
    ("CAPSOLVER_API_URL", "api.capsolver.com", "'api.capsolver.com'", URL),
    ("CAPSOLVER_API_URL", "https://", "'https://'", URL),
    ("CAPSOLVER_API_URL", 443, "443", URL),
    (
        "CAPSOLVER_API_URL",
        "https://api.capsolver.com/?lang=en",
        "'https://api.capsolver.com/?lang=en'",
        "a base URL without ?query or #fragment",
    ),
    (
        "CAPSOLVER_API_URL",
        "http://api.capsolver.com",
        "'http://api.capsolver.com'",
        "CAPSOLVER_ALLOW_HTTP = True",
    ),
    ("CAPSOLVER_MODULE", 7, "7", "a non-empty string"),
    ("CAPSOLVER_APP_ID", "   ", "'   '", "a non-empty string"),
    ("CAPSOLVER_ENABLED", "perhaps", "'perhaps'", "True or False"),
    ("CAPSOLVER_CLOSE_ON_FATAL", "sometimes", "'sometimes'", "True or False"),
    ("CAPSOLVER_URL_PATTERNS", ["/captcha/(", "ok"], "'/captcha/('", "regular expressions"),
    ("CAPSOLVER_URL_PATTERNS", 5, "5", "a list of regular expressions"),
    ("CAPSOLVER_API_KEY", "   ", "'   '", "a CapSolver key (this one is blank)"),
    ("CAPSOLVER_LOCAL_OCR", "maybe", "'maybe'", "True or False"),
    ("CAPSOLVER_LOCAL_MIN_CONFIDENCE", 1.5, "1.5", "a number from 0 to 1"),
    ("CAPSOLVER_LOCAL_MIN_CONFIDENCE", -0.1, "-0.1", "a number from 0 to 1"),
    ("CAPSOLVER_LOCAL_MIN_CONFIDENCE", "sure", "'sure'", "a number from 0 to 1"),
    ("CAPSOLVER_LOCAL_MIN_CONFIDENCE", float("nan"), "nan", "a number from 0 to 1"),
    ("CAPSOLVER_LOCAL_LENGTH", 0, "0", "a whole number of characters >= 1"),
    ("CAPSOLVER_LOCAL_LENGTH", 4.5, "4.5", "a whole number of characters >= 1"),
    ("CAPSOLVER_LOCAL_LENGTH", "four", "'four'", "a whole number of characters >= 1"),
    ("CAPSOLVER_LOCAL_CHARSET", "   ", "'   '", "a non-empty string of the characters"),
    ("CAPSOLVER_LOCAL_CHARSET", 123, "123", "a non-empty string of the characters"),
    ("CAPSOLVER_LOCAL_WORKERS", 0, "0", "a whole number >= 1"),
]


def case_id(case: tuple[str, Any, str, str]) -> str:
    return f"{case[0]}={case[1]!r}"


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=case_id)
def test_bad_setting_names_setting_value_and_what_is_allowed(
    case: tuple[str, Any, str, str],
) -> None:
    name, value, shown, allowed = case
    crawler = get_crawler(settings_dict={"CAPSOLVER_API_KEY": API_KEY, name: value})
    with pytest.raises(ValueError) as raised:
        CaptchaSolverMiddleware.from_crawler(crawler)
    message = str(raised.value)
    assert message.startswith(f"{name}={shown} is not valid: expected ")
    assert allowed in message


@pytest.mark.parametrize("case", BAD_SETTINGS, ids=case_id)
@pytest_twisted.ensureDeferred
async def test_bad_setting_stops_the_crawl_at_start(
    capsolver: CapSolverMock, image_site: str, case: tuple[str, Any, str, str]
) -> None:
    name, value, _, _ = case
    settings = solver_settings(capsolver, **{name: value})
    with pytest.raises(ValueError, match=f"^{name}="):
        await crawl(RecordingSpider, settings, urls=[f"{image_site}/captcha/set1.png"])
    assert capsolver.calls(None) == []


def test_empty_optional_setting_is_unset() -> None:
    config = SolverSettings.from_settings(
        get_crawler(settings_dict={"CAPSOLVER_MODULE": ""}).settings
    )
    assert config.module is None


@pytest.mark.parametrize(
    ("value", "type_name"), [(12345, "int"), (b"CAP-bytes-key", "bytes"), (["CAP-1"], "list")]
)
def test_key_of_the_wrong_type_is_refused_without_showing_it(value: Any, type_name: str) -> None:
    crawler = get_crawler(settings_dict={"CAPSOLVER_API_KEY": value})
    with pytest.raises(ValueError) as raised:
        CaptchaSolverMiddleware.from_crawler(crawler)
    assert str(raised.value) == f"CAPSOLVER_API_KEY must be a string, not {type_name}"


@pytest.mark.parametrize(
    ("url", "allow_http", "accepted"),
    [
        ("http://api.capsolver.com", False, False),
        ("http://10.1.2.3:8080", False, False),
        ("http://[2001:db8::1]:8080", False, False),
        ("http://api.capsolver.com", True, True),
        ("http://127.0.0.1:8080", False, True),
        ("http://127.9.9.9:8080", False, True),
        ("http://localhost:8080", False, True),
        ("http://[::1]:8080", False, True),
        ("https://api.capsolver.com", False, True),
        ("  https://api.capsolver.com/  ", False, True),
    ],
)
def test_plain_http_only_to_loopback_unless_allowed(
    url: str, allow_http: bool, accepted: bool
) -> None:
    settings = {"CAPSOLVER_API_URL": url, "CAPSOLVER_ALLOW_HTTP": allow_http}
    crawler = get_crawler(settings_dict=settings)
    if accepted:
        config = SolverSettings.from_settings(crawler.settings)
        assert config.api_url == url.strip().rstrip("/")
        return
    with pytest.raises(ValueError, match="CAPSOLVER_ALLOW_HTTP = True") as raised:
        SolverSettings.from_settings(crawler.settings)
    assert str(raised.value).startswith(f"CAPSOLVER_API_URL={url!r} is not valid")


@pytest_twisted.ensureDeferred
async def test_plain_http_to_a_remote_host_stops_the_crawl_before_the_key_is_sent(
    image_site: str,
) -> None:
    # A documentation address (TEST-NET-1): the crawl must stop before trying to reach it.
    settings = solver_settings(None, CAPSOLVER_API_URL="http://192.0.2.10:8080")
    with pytest.raises(ValueError, match="CAPSOLVER_ALLOW_HTTP"):
        await crawl(RecordingSpider, settings, urls=[f"{image_site}/captcha/http1.png"])
