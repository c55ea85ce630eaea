"""The circuit breakers and the failover policy on their own: which failures move a task to
the next service, when a service is tried again, and what they count; the time is a
Twisted ``Clock``."""

from __future__ import annotations

import logging
import pickle
from typing import Any

import pytest
import pytest_twisted
from scrapy.utils.test import get_crawler
from twisted.internet.task import Clock

from scrapy_capsolver_ocr import (
    CaptchaAccountError,
    CaptchaBudgetError,
    CaptchaNoSlotError,
    CaptchaTaskError,
    CaptchaTransientError,
)
from scrapy_capsolver_ocr.engines.cloud.account import Account, AccountLimits
from scrapy_capsolver_ocr.engines.cloud.breaker import Breakers
from scrapy_capsolver_ocr.engines.cloud.failover import Failover, FailoverPolicy, is_no_slot
from scrapy_capsolver_ocr.engines.cloud.routes import (
    Route,
    RouteOpened,
    Sending,
    connection_lost,
    maybe_created,
    refused_before_sending,
)
from scrapy_capsolver_ocr.errors import CLOSE_ZERO_BALANCE
from scrapy_capsolver_ocr.solution import CaptchaSolution
from scrapy_capsolver_ocr.state.base import MemoryState, StateLimits

REFUSED = CaptchaTransientError("refused", "CONNECTION_ConnectionRefusedError")
LOST = CaptchaTransientError("lost", "CONNECTION_ResponseNeverReceived")
RESET = CaptchaTransientError("reset", "CONNECTION_ResponseFailed")
TIMEOUT = CaptchaTransientError("slow", "TIMEOUT")
GATEWAY_TIMEOUT = CaptchaTransientError("gateway", "HTTP_504")
BUSY = CaptchaTransientError("busy", "HTTP_503")
NO_SLOT = CaptchaTransientError("no slot", "ERROR_NO_SLOT_AVAILABLE")
UNSOLVABLE = CaptchaTaskError("unsolvable", "ERROR_CAPTCHA_UNSOLVABLE")


def zero_balance() -> CaptchaAccountError:
    return CaptchaAccountError("no money", "ERROR_ZERO_BALANCE", close_reason=CLOSE_ZERO_BALANCE)


class Services:
    """Two routes, A preferred and B, behind a failover on a clock; ``outcomes`` says what
    each service does with the next task (an exception, or an answer); ``unreachable`` the
    services a balance call would find refusing connections (``checked``: those asked)."""

    def __init__(self, **policy: Any) -> None:
        self.clock = Clock()
        self.crawler = get_crawler()
        self.stats: Any = self.crawler.stats
        self.state = MemoryState(StateLimits(), reactor=self.clock)
        self.closed: list[str] = []
        self.account = Account(
            AccountLimits(), self.state, self.stats, self.closed.append, self.clock
        )
        self.routes = [Route(name, None, None, None) for name in ("a", "b")]  # type: ignore[arg-type]
        self.breakers = Breakers(self.state, self.stats, cooldown=60.0, probe_lease=30.0)
        self.failover = Failover(
            self.routes,
            self.account,
            self.breakers,
            self.state,
            self.stats,
            FailoverPolicy(**policy),
            self.clock,
            down=self.down,
        )
        self.unreachable: set[str] = set()
        self.checked: list[str] = []
        self.outcomes: dict[str, list[Exception | None]] = {"a": [], "b": []}
        self.asked: list[str] = []

    async def attempt(self, route: Route, sending: Sending) -> CaptchaSolution:
        self.asked.append(route.name)
        outcome = self.outcomes[route.name].pop(0) if self.outcomes[route.name] else None
        if outcome is not None:
            if maybe_created(outcome):
                sending.maybe_created = True
            if isinstance(outcome, CaptchaAccountError):
                await self.failover.account_error(route, outcome)
            if outcome is NO_SLOT:
                self.clock.advance(4)
            raise outcome
        return CaptchaSolution(f"by-{route.name}", "t", "sha")

    async def down(self, route: Route) -> bool:
        self.checked.append(route.name)
        return route.name in self.unreachable

    async def pay(self) -> CaptchaSolution:
        return await self.failover.pay(self.attempt)

    def stat(self, name: str) -> Any:
        return self.stats.get_value(name, 0)


@pytest_twisted.ensureDeferred
async def test_a_refused_connection_moves_on_and_the_breaker_keeps_tasks_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="scrapy_capsolver_ocr")
    services = Services()
    services.outcomes["a"] = [REFUSED]
    assert (await services.pay()).provider == "b"
    assert (await services.pay()).provider == "b"
    assert services.asked == ["a", "b", "b"]
    assert services.stat("capsolver/provider/a/failovers") == 1
    assert services.stat("capsolver/provider/a/breaker_opened") == 1
    # The cool-down is over: one task probes A, the others still go to B meanwhile.
    services.clock.advance(60)
    assert await services.state.route_leave("a", 30.0) == "probe"
    assert (await services.pay()).provider == "b"
    services.clock.advance(30)  # that probe's lease lapsed: the next task probes
    assert (await services.pay()).provider == "a"
    assert (await services.pay()).provider == "a"
    assert services.stat("capsolver/provider/a/breaker_closed") == 1
    said = [r.getMessage() for r in caplog.records]
    assert said.count("Captcha tasks are back on a") == 1
    assert sum("move off a for 60 s" in line for line in said) == 1


@pytest_twisted.ensureDeferred
async def test_a_failed_probe_opens_the_breaker_again() -> None:
    services = Services()
    services.outcomes["a"] = [BUSY, BUSY]
    await services.pay()
    services.clock.advance(60)
    assert (await services.pay()).provider == "b"  # the probe failed, B answered
    assert services.asked == ["a", "b", "a", "b"]
    assert await services.state.route_leave("a", 30.0) == "open"
    assert services.stat("capsolver/provider/a/breaker_opened") == 1
    assert services.stat("capsolver/provider/a/breaker_closed") == 0


@pytest_twisted.ensureDeferred
async def test_a_task_the_first_service_may_have_created_is_not_paid_again() -> None:
    services = Services()
    services.outcomes["a"] = [LOST]
    with pytest.raises(CaptchaTransientError):
        await services.pay()
    assert services.asked == ["a"]
    # It was asked whether it is still there, and it is: its answer may still be billed.
    assert services.checked == ["a"]
    assert services.stat("capsolver/provider/a/unanswered_moved") == 0
    # The service is out all the same: the next tasks go elsewhere.
    assert await services.state.route_leave("a", 30.0) == "open"
    assert (await services.pay()).provider == "b"


@pytest.mark.parametrize("lost", [LOST, RESET], ids=["never-received", "reset"])
@pytest_twisted.ensureDeferred
async def test_a_task_lost_with_a_service_that_went_down_moves_on_and_is_counted(
    lost: CaptchaTransientError,
) -> None:
    services = Services()
    services.unreachable = {"a"}
    services.outcomes["a"] = [lost]
    assert (await services.pay()).provider == "b"
    assert services.asked == ["a", "b"] and services.checked == ["a"]
    assert services.stat("capsolver/provider/a/unanswered_moved") == 1
    assert services.stat("capsolver/provider/a/failovers") == 1
    assert await services.state.route_leave("a", 30.0) == "open"


@pytest.mark.parametrize(
    ("policy", "failure"),
    [({"unanswered": False}, LOST), ({}, TIMEOUT), ({}, GATEWAY_TIMEOUT)],
    ids=["setting-off", "timeout", "504"],
)
@pytest_twisted.ensureDeferred
async def test_a_task_that_may_be_billed_is_never_sent_again(
    policy: dict[str, Any], failure: CaptchaTransientError
) -> None:
    services = Services(**policy)
    services.unreachable = {"a"}
    services.outcomes["a"] = [failure]
    with pytest.raises(CaptchaTransientError):
        await services.pay()
    # The setting off, or a slow service (a timeout says nothing of the task's fate): not
    # even a balance call to find out, however the service looks afterwards.
    assert services.asked == ["a"] and services.checked == []
    assert services.stat("capsolver/provider/a/unanswered_moved") == 0


@pytest_twisted.ensureDeferred
async def test_a_lost_task_on_the_last_service_is_not_checked() -> None:
    services = Services()
    services.unreachable = {"a", "b"}
    services.outcomes["a"] = [REFUSED]
    services.outcomes["b"] = [LOST]
    with pytest.raises(CaptchaTransientError):
        await services.pay()
    # Nowhere left to go: the error is the request's, as with one service.
    assert services.asked == ["a", "b"] and services.checked == []


@pytest.mark.parametrize(("answer_errors", "asked"), [(False, ["a"]), (True, ["a", "b"])])
@pytest_twisted.ensureDeferred
async def test_an_answer_error_moves_only_when_the_setting_says(
    answer_errors: bool, asked: list[str]
) -> None:
    services = Services(answer_errors=answer_errors)
    services.outcomes["a"] = [UNSOLVABLE]
    if answer_errors:
        assert (await services.pay()).provider == "b"
    else:
        with pytest.raises(CaptchaTaskError):
            await services.pay()
    assert services.asked == asked
    assert await services.state.route_leave("a", 30.0) == "closed"


@pytest_twisted.ensureDeferred
async def test_no_slot_is_waited_out_for_a_while_then_moves_on() -> None:
    services = Services(no_slot_after=10.0)
    services.outcomes["a"] = [NO_SLOT] * 5
    assert (await services.pay()).provider == "b"
    # Seen at 4, 8, 12 s: asked again while under 10 s, moved on at 16 s.
    assert services.asked == ["a", "a", "a", "a", "b"]


@pytest_twisted.ensureDeferred
async def test_the_crawl_closes_only_when_every_service_is_out() -> None:
    services = Services()
    services.outcomes["a"] = [zero_balance()]
    assert (await services.pay()).provider == "b"
    assert services.closed == [] and not services.account.stopped
    services.outcomes["b"] = [zero_balance()]
    services.clock.advance(60)  # A may be probed: still out
    services.outcomes["a"] = [zero_balance()]
    with pytest.raises(CaptchaAccountError):
        await services.pay()
    assert services.closed == [CLOSE_ZERO_BALANCE]
    assert services.account.stopped


@pytest_twisted.ensureDeferred
async def test_errors_that_are_not_the_services_are_the_requests() -> None:
    services = Services()
    services.outcomes["a"] = [CaptchaBudgetError("budget")]
    with pytest.raises(CaptchaBudgetError):
        await services.pay()
    assert services.asked == ["a"]
    assert await services.state.route_leave("a", 30.0) == "closed"


@pytest.mark.parametrize(
    ("code", "unsent", "created", "lost"),
    [
        ("CONNECTION_ConnectionRefusedError", True, False, False),
        ("CONNECTION_DNSLookupError", True, False, False),
        ("TLS_CERTIFICATE", True, False, False),
        ("CONNECTION_ResponseNeverReceived", False, True, True),
        ("CONNECTION_ResponseFailed", False, True, True),
        ("CONNECTION_ConnectionLost", False, True, True),
        ("CONNECTION_TimeoutError", False, True, False),
        ("TIMEOUT", False, True, False),
        ("HTTP_504", False, True, False),
        ("MALFORMED_ANSWER", False, True, False),
        ("HTTP_503", False, False, False),
        ("ERROR_SERVICE_UNAVAILABLE", False, False, False),
    ],
)
def test_which_failures_may_have_created_a_task(
    code: str, unsent: bool, created: bool, lost: bool
) -> None:
    error = CaptchaTransientError("x", code)
    assert (refused_before_sending(error), maybe_created(error)) == (unsent, created)
    assert connection_lost(error) == lost
    assert not maybe_created(CaptchaTaskError("x", code))
    assert not connection_lost(CaptchaTaskError("x", code))


def test_no_slot_is_known_by_its_code_or_class() -> None:
    assert is_no_slot(NO_SLOT)
    assert is_no_slot(CaptchaNoSlotError("x", "SOMETHING_ELSE"))
    assert not is_no_slot(BUSY)
    assert not is_no_slot(CaptchaTaskError("x", "ERROR_NO_SLOT_AVAILABLE"))


def test_a_solution_pickled_before_the_provider_field_loads() -> None:
    solution = CaptchaSolution("ab12", "t1", "sha", provider="backup")
    assert pickle.loads(pickle.dumps(solution)) == solution
    old = CaptchaSolution("ab12", "t1", "sha")
    object.__delattr__(old, "provider")  # as a queue written before the field existed
    loaded = pickle.loads(pickle.dumps(old))
    assert (loaded.text, loaded.provider) == ("ab12", "")


@pytest_twisted.ensureDeferred
async def test_a_task_whose_service_went_out_while_it_waited_goes_elsewhere() -> None:
    services = Services()
    services.outcomes["a"] = [REFUSED]
    await services.pay()
    a, b = services.routes
    # Its turn on A came after A went out: it goes to B without a call.
    with pytest.raises(RouteOpened):
        services.failover.still_wanted(a, Sending())
    # Unless it is A's probe, or may have been created on A already, or B is out too.
    services.failover.still_wanted(a, Sending(probe=True))
    services.failover.still_wanted(a, Sending(maybe_created=True))
    services.failover.still_wanted(a, Sending(tried=[b]))
    services.failover.still_wanted(b, Sending())
    services.clock.advance(60)  # the cool-down is over
    services.failover.still_wanted(a, Sending())
