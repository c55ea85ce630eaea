"""Fast tests of the solving core's pieces, without a crawl: the retry policy and its runner,
the checked options of a solve, the local confidence gate (with any engine behind it) and the
account's stops."""

from __future__ import annotations

import random
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest
from scrapy import Spider
from scrapy.crawler import Crawler
from scrapy.statscollectors import MemoryStatsCollector
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from test_state import on_reactor
from twisted.internet.task import deferLater

from scrapy_capsolver_ocr import CaptchaAccountError, CaptchaBudgetError, CaptchaOptionsError
from scrapy_capsolver_ocr.api.capsolver import error_for_code
from scrapy_capsolver_ocr.engines.base import CaptchaImage
from scrapy_capsolver_ocr.engines.cloud.account import Account, AccountLimits
from scrapy_capsolver_ocr.engines.cloud.retry import Retrier, RetryPolicy
from scrapy_capsolver_ocr.engines.local.formats import ExpectedFormat
from scrapy_capsolver_ocr.engines.local.gate import ConfidenceGate, Reading
from scrapy_capsolver_ocr.engines.local.reader import LocalOptions, LocalReader
from scrapy_capsolver_ocr.errors import CaptchaApiError, CaptchaFleetError
from scrapy_capsolver_ocr.reactor import installed_reactor
from scrapy_capsolver_ocr.solving.options import SolveOptions, check_attempt, checked_options
from scrapy_capsolver_ocr.state.base import MemoryState, StateLimits

T = TypeVar("T")


def finished(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine that never waits (its sleeps return at once)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coroutine.close()
    raise AssertionError("the coroutine waited")


def stats() -> MemoryStatsCollector:
    return MemoryStatsCollector(Crawler(Spider))


class Calls:
    """An operation that fails with each of ``errors`` in turn, then answers ``"ok"``."""

    def __init__(self, *errors: CaptchaApiError) -> None:
        self.errors = list(errors)
        self.made = 0

    async def __call__(self) -> str:
        self.made += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


def retrier(policy: RetryPolicy, collector: MemoryStatsCollector, slept: list[float]) -> Retrier:
    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    return Retrier(policy, collector, sleep)


# The retry policy


def test_backoff_doubles_up_to_its_ceiling_and_is_half_random() -> None:
    policy = RetryPolicy(max_retries=5, backoff_base=1.0, backoff_max=5.0)
    assert [policy.ceiling(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    rng = random.Random(7)
    delays = [policy.delay(3, rng) for _ in range(200)]
    assert all(2.0 <= delay <= 4.0 for delay in delays)
    assert max(delays) - min(delays) > 1.0  # spread, not one fixed wait


def test_an_error_with_a_limit_of_its_own_gets_no_more_retries_than_that() -> None:
    policy = RetryPolicy(max_retries=3)
    assert policy.allowed(error_for_code("ERROR_SERVICE_UNAVALIABLE")) == 3
    assert policy.allowed(error_for_code("ERROR_BAD_REQUEST")) == 1
    assert policy.allowed(error_for_code("ERROR_INVALID_IMAGE")) == 0
    assert RetryPolicy(max_retries=0).allowed(error_for_code("ERROR_BAD_REQUEST")) == 0


def test_transient_errors_are_retried_and_counted_in_stats() -> None:
    collector, slept = stats(), []
    calls = Calls(error_for_code("ERROR_SERVICE_UNAVALIABLE"), error_for_code("ERROR_RATE_LIMIT"))
    run = retrier(RetryPolicy(max_retries=3, backoff_base=0.5), collector, slept)
    assert finished(run.api_call(calls, stopped=lambda: False)) == "ok"
    assert calls.made == 3 and len(slept) == 2
    assert collector.get_value("capsolver/retries") == 2
    assert collector.get_value("capsolver/retries/ERROR_RATE_LIMIT") == 1
    assert collector.get_value("capsolver/error/ERROR_SERVICE_UNAVALIABLE") == 1


def test_the_last_error_is_raised_once_the_retries_are_spent() -> None:
    collector, slept = stats(), []
    calls = Calls(*[error_for_code("ERROR_BAD_REQUEST") for _ in range(3)])
    with pytest.raises(CaptchaApiError) as raised:
        finished(retrier(RetryPolicy(), collector, slept).api_call(calls, stopped=lambda: False))
    assert raised.value.error_code == "ERROR_BAD_REQUEST"
    assert calls.made == 2  # the table allows one retry
    assert collector.get_value("capsolver/error/ERROR_BAD_REQUEST") == 2


def test_account_errors_are_never_retried() -> None:
    collector, slept = stats(), []
    calls = Calls(error_for_code("ERROR_KEY_DENIED_ACCESS", status=401))
    with pytest.raises(CaptchaAccountError):
        finished(retrier(RetryPolicy(), collector, slept).api_call(calls, stopped=lambda: False))
    assert calls.made == 1 and slept == []
    assert collector.get_value("capsolver/retries") is None


def test_a_block_is_tried_again_without_a_retry_until_solving_stopped() -> None:
    collector, slept = stats(), []
    block = "ERROR_KEY_TEMP_BLOCKED"
    calls = Calls(error_for_code(block, status=401))
    run = retrier(RetryPolicy(max_retries=0), collector, slept)
    assert finished(run.api_call(calls, stopped=lambda: False)) == "ok"
    assert calls.made == 2 and collector.get_value("capsolver/retries") is None
    calls = Calls(error_for_code(block, status=401))
    with pytest.raises(CaptchaAccountError):
        finished(run.api_call(calls, stopped=lambda: True))
    assert calls.made == 1 and collector.get_value(f"capsolver/error/{block}") == 2


def test_an_unreachable_state_is_retried_then_raised() -> None:
    collector, slept = stats(), []
    down = CaptchaFleetError("Redis is down", "FLEET_UNREACHABLE", retry_limit=None)
    run = retrier(RetryPolicy(max_retries=2), collector, slept)
    assert finished(run.state_call(Calls(down))) == "ok"
    with pytest.raises(CaptchaFleetError):
        finished(run.state_call(Calls(down, down, down)))
    assert collector.get_value("capsolver/retries/FLEET_UNREACHABLE") == 3


# The options of a solve


def test_keyword_options_are_checked_once_into_solve_options() -> None:
    options = checked_options(
        module=" number ", score=0.9, website_url="https://example.com/login", local=None
    )
    assert options == SolveOptions(
        module="number", score=0.9, website_url="https://example.com/login"
    )
    assert checked_options() == SolveOptions()
    assert checked_options(selector="text=Captcha >> img", length=4).length == 4


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"module": ""}, "module"),
        ({"score": 0.2}, "score"),
        ({"website_url": "ftp://example.com"}, "website_url"),
        ({"local": "yes"}, "local"),
        ({"length": 0}, "length"),
        ({"charset": ""}, "charset"),
    ],
)
def test_a_bad_keyword_option_is_an_options_error_naming_it(
    values: dict[str, Any], named: str
) -> None:
    with pytest.raises(CaptchaOptionsError, match=named):
        checked_options(**values)


@pytest.mark.parametrize("attempt", [0, -1, True, 1.5, "2"])
def test_an_attempt_is_a_whole_number_from_one(attempt: Any) -> None:
    with pytest.raises(CaptchaOptionsError, match="attempt"):
        check_attempt(attempt)
    assert check_attempt(3) == 3


def test_the_page_url_is_the_website_url_only_when_none_was_given() -> None:
    given = SolveOptions(website_url="https://a.example/")
    assert given.with_page_url("https://b.example/") is given
    assert SolveOptions().with_page_url(None) == SolveOptions()
    assert SolveOptions().with_page_url("https://b.example/").website_url == "https://b.example/"
    with pytest.raises(CaptchaOptionsError, match="website_url"):
        SolveOptions().with_page_url("android-app://com.example")


# The confidence gate


def test_the_gate_passes_a_sure_reading_of_an_expected_length() -> None:
    gate = ConfidenceGate(0.7)
    four = ExpectedFormat(frozenset([4]), None)
    assert gate.refuses_unread(four) is None
    assert gate.refuses(Reading("4821", 0.9), four) is None
    assert gate.refuses(Reading("482", 0.99), four) == "read 3 characters, expected [4]"
    assert gate.refuses(Reading("4821", 0.5), four) == "confidence 0.500 < 0.7"
    assert gate.refuses(Reading("", 0.0), ExpectedFormat(None, None)) is not None


def test_the_gate_waits_for_a_site_s_length_unless_it_is_the_only_reader() -> None:
    unknown = ExpectedFormat(None, None)
    assert "not known yet" in str(ConfidenceGate(0.7).refuses_unread(unknown))
    only = ConfidenceGate(0.7, only_reader=True)
    assert only.refuses_unread(unknown) is None
    assert only.refuses(Reading("48", 0.01), ExpectedFormat(frozenset([4]), None)) is None


# The account's stops


@on_reactor
async def test_without_a_key_the_first_paid_call_closes_the_crawl() -> None:
    reasons: list[str] = []
    state = MemoryState(StateLimits())
    account = Account(AccountLimits(has_key=False), state, stats(), reasons.append, None)
    for _ in range(2):
        with pytest.raises(CaptchaAccountError, match="No CapSolver API key"):
            async with account.paid_call():
                raise AssertionError("no call without a key")
    assert reasons == ["capsolver_bad_key"] and account.stopped and account.calls_made == 0


@on_reactor
async def test_the_budget_stops_paying_and_says_which_setting() -> None:
    reasons: list[str] = []
    state = MemoryState(StateLimits(max_tasks=1))
    limits = AccountLimits(concurrency=2, max_tasks=1)
    account = Account(limits, state, stats(), reasons.append, installed_reactor())
    async with account.paid_call():
        assert account.calls_in_flight == 1
    assert account.calls_in_flight == 0
    with pytest.raises(CaptchaBudgetError, match=r"CAPSOLVER_MAX_TASKS \(1\)"):
        async with account.paid_call():
            raise AssertionError("over the budget")
    assert reasons == ["capsolver_max_tasks"] and account.calls_made == 1


@on_reactor
async def test_a_call_asking_to_go_first_is_served_before_the_queue() -> None:
    # A probe of a service that was out must not wait behind every task queued meanwhile.
    account = Account(
        AccountLimits(concurrency=1),
        MemoryState(StateLimits()),
        stats(),
        print,
        installed_reactor(),
    )
    served: list[str] = []

    async def call(name: str, first: bool = False) -> None:
        async with account.paid_call(first=first):
            served.append(name)

    async with account.paid_call():
        queued = [deferred_from_coro(call(f"queued {n}")) for n in range(3)]
        probe = deferred_from_coro(call("probe", first=True))
        for _ in range(5):  # a few reactor turns: every call is queued for the slot
            await maybe_deferred_to_future(deferLater(installed_reactor(), 0, lambda: None))
    for waiting in [*queued, probe]:
        await maybe_deferred_to_future(waiting)
    assert served == ["probe", "queued 0", "queued 1", "queued 2"]


class FixedEngine:
    """Another engine on this machine (as a learnt model would be): reads what it is told."""

    def __init__(self, reading: Reading) -> None:
        self.reading = reading
        self.asked: list[str | None] = []

    def read(self, image: bytes, chars: str | None = None) -> Reading:
        self.asked.append(chars)
        return self.reading


@pytest.mark.parametrize(
    ("reading", "used"),
    [(Reading("4821", 0.9), True), (Reading("4821", 0.5), False), (Reading("48", 0.99), False)],
)
@on_reactor
async def test_any_local_engine_reads_behind_the_same_gate(reading: Reading, used: bool) -> None:
    collector = stats()
    engine = FixedEngine(reading)
    options = LocalOptions(workers=1, min_confidence=0.7, length=4, charset="0123456789")
    reader = LocalReader(options, collector, installed_reactor(), engine=engine)
    captcha = CaptchaImage(b"png", "ab" * 32, "https://example.com/c.png", local=True)
    try:
        solution = await reader.read(captcha)
        assert await reader.read(CaptchaImage(b"png", "cd" * 32, "elsewhere")) is None
    finally:
        await reader.close()
    assert engine.asked == ["0123456789"]  # the image not marked local is not read
    if used:
        assert solution is not None and (solution.text, solution.solver) == ("4821", "local")
        assert collector.get_value("capsolver/local/solved") == 1
    else:
        assert solution is None and collector.get_value("capsolver/local/declined") == 1
