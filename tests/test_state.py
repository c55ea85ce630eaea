"""The solving state's interface, one suite run against both implementations: in memory
(one process) and in a real Redis (fleet mode): one server, over TLS, a Redis Cluster of
three masters, and a master found through Sentinel.

Two "processes" are two states: for memory, the same instance twice (a process is its own
fleet); for Redis, two :class:`RedisState` instances of one fleet, each with its own
connections, as two crawl processes would have.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import pytest_twisted
from conftest import API_KEY
from scrapy.utils.defer import deferred_from_coro, maybe_deferred_to_future
from twisted.internet.defer import DeferredList
from twisted.internet.task import deferLater

from scrapy_capsolver_ocr import CaptchaCrawlClosingError, CaptchaFleetError, CaptchaTaskError
from scrapy_capsolver_ocr.errors import CLOSE_BLOCKED, CLOSE_MAX_TASKS, CaptchaBlockedError
from scrapy_capsolver_ocr.settings import ApiKey
from scrapy_capsolver_ocr.solution import CaptchaSolution
from scrapy_capsolver_ocr.state.base import CallTicket, MemoryState, Pause, StateLimits, Stop
from scrapy_capsolver_ocr.state.redis_connection import RedisTarget

SHA = "a" * 64


def answer(text: str, sha256: str = SHA) -> CaptchaSolution:
    return CaptchaSolution(text=text, task_id=f"task-{text}", image_sha256=sha256)


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor

    await maybe_deferred_to_future(deferLater(reactor, seconds, lambda: None))


async def gather(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` side by side; their results (or exceptions) in order."""
    deferreds = [deferred_from_coro(call) for call in calls]
    results = await maybe_deferred_to_future(DeferredList(deferreds, consumeErrors=True))
    return [value if ok else value.value for ok, value in results]


Fleet = Callable[..., Any]


def on_reactor(test: Callable[..., Awaitable[None]]) -> Any:
    """Runs an async test the way Scrapy runs a coroutine: as an asyncio task under the
    asyncio reactor (where the state's Deferreds are awaited as futures), else on Twisted."""

    @functools.wraps(test)
    async def run(*args: Any, **kwargs: Any) -> None:
        await deferred_from_coro(test(*args, **kwargs))

    return pytest_twisted.ensureDeferred(run)


@asynccontextmanager
async def redis_states(
    redis_url: RedisTarget | str,
    limits: StateLimits,
    *,
    opened: int,
    unopened: int = 0,
    **options: Any,
) -> AsyncIterator[list[Any]]:
    """States of one new fleet (and account) in Redis: first ``unopened`` ones, which renew
    nothing, as a process killed after it took a claim or a permit; then ``opened`` ones
    (``options`` go to them). Every one is closed at the end."""
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    name = f"test-{uuid.uuid4().hex[:8]}"
    key = ApiKey(API_KEY + name)
    states = [RedisState(redis_url, name, key, limits) for _ in range(unopened)]
    states += [RedisState(redis_url, name, key, limits, **options) for _ in range(opened)]
    try:
        for state in states[unopened:]:
            await state.open()
        yield states
    finally:
        for state in states:
            await state.close()


def redis_target(request: pytest.FixtureRequest, kind: str) -> RedisTarget:
    """Where the Redis of ``kind`` is, from the session's servers."""
    if kind == "redis-cluster":
        return RedisTarget(request.getfixturevalue("redis_cluster").url, cluster=True)
    if kind == "redis-sentinel":
        sentinel = request.getfixturevalue("redis_sentinel")
        return RedisTarget(sentinel.url, sentinel.sentinels)
    if kind == "rediss":
        server, ca = request.getfixturevalue("redis_tls")
        return RedisTarget(f"{server.url}?ssl_ca_certs={ca}")
    return RedisTarget(request.getfixturevalue("redis_url"))


REDIS_KINDS = ["redis", "rediss", "redis-cluster", "redis-sentinel"]


@pytest.fixture(
    params=[
        "memory",
        *(pytest.param(kind, marks=pytest.mark.asyncio_reactor) for kind in REDIS_KINDS),
    ]
)
def fleet(request: pytest.FixtureRequest) -> Fleet:
    """``async with fleet(**limits) as (a, b):`` two opened states of one new fleet."""
    kind = request.param
    redis_url = redis_target(request, kind) if kind != "memory" else ""

    @asynccontextmanager
    async def make(count: int = 2, **limits: Any) -> AsyncIterator[list[Any]]:
        settings = StateLimits(**limits)
        if kind != "memory":
            async with redis_states(redis_url, settings, opened=count) as states:
                yield states
            return
        state = MemoryState(settings)
        await state.open()
        try:
            yield [state] * count
        finally:
            await state.close()

    make.kind = kind  # type: ignore[attr-defined]
    return make


# Answers


@on_reactor
async def test_a_published_answer_is_cached_for_every_process(fleet: Fleet) -> None:
    async with fleet() as (a, b):
        key = f"{SHA}:"
        assert await a.cached(key) is None
        assert await a.claim(key)
        await a.publish(key, answer("x7k2"))
        for state in (a, b):
            cached = await state.cached(key)
            assert (cached.text, cached.task_id, cached.image_sha256) == ("x7k2", "task-x7k2", SHA)
        # Another module reads the same image differently: its own answer.
        assert await b.cached(f"{SHA}:number") is None


@on_reactor
async def test_one_claimant_per_image_and_the_others_wait_for_its_answer(fleet: Fleet) -> None:
    async with fleet() as (a, b):
        key = f"{SHA}:"
        contenders = (a, b, a, b)
        claims = await gather(*(state.claim(key) for state in contenders))
        assert claims.count(True) == 1
        # Whichever call reached the store first won: the reactor decides the order.
        claimant = contenders[claims.index(True)]
        waiting = [deferred_from_coro(state.wait(key)) for state in (a, b, b)]
        await sleep(0.05)
        assert not any(w.called for w in waiting)
        await claimant.publish(key, answer("w8"))
        texts = [(await maybe_deferred_to_future(w)).text for w in waiting]
        assert texts == ["w8", "w8", "w8"]
        # Published: nobody claims it again; a late waiter gets the answer at once.
        assert not await b.claim(key)
        assert (await b.wait(key)).text == "w8"


@on_reactor
async def test_an_abandoned_image_fails_its_waiters_with_the_same_public_error(
    fleet: Fleet,
) -> None:
    async with fleet() as (a, b):
        key = f"{SHA}:"
        assert await a.claim(key)
        waiting = deferred_from_coro(b.wait(key))
        await sleep(0.05)
        await a.abandon(key, CaptchaTaskError("CapSolver could not read it.", "ERROR_CAPTCHA"))
        with pytest.raises(CaptchaTaskError, match="could not read it") as raised:
            await maybe_deferred_to_future(waiting)
        assert raised.value.error_code == "ERROR_CAPTCHA"
        # The failure is not an answer: the image can be claimed and paid for again.
        assert await a.cached(key) is None
        assert await b.claim(key)


@on_reactor
async def test_an_account_error_reaches_waiters_with_its_close_reason(fleet: Fleet) -> None:
    async with fleet() as (a, b):
        key = f"{SHA}:"
        assert await a.claim(key)
        waiting = deferred_from_coro(b.wait(key))
        await sleep(0.05)
        blocked = CaptchaBlockedError("Blocked.", "ERROR_IP_BANNED", close_reason=CLOSE_BLOCKED)
        await a.abandon(key, blocked)
        with pytest.raises(CaptchaBlockedError) as raised:
            await maybe_deferred_to_future(waiting)
        assert (raised.value.error_code, raised.value.close_reason) == (
            "ERROR_IP_BANNED",
            CLOSE_BLOCKED,
        )


@on_reactor
async def test_answers_expire_after_the_cache_ttl(fleet: Fleet) -> None:
    async with fleet(cache_ttl=1.0) as (a, b):
        key = f"{SHA}:"
        assert await a.claim(key)
        await a.publish(key, answer("ttl"))
        assert (await b.cached(key)).text == "ttl"
        await sleep(1.15)
        assert await a.cached(key) is None
        assert await b.claim(key)


@on_reactor
async def test_the_cache_keeps_the_most_recently_used_answers(fleet: Fleet) -> None:
    async with fleet(cache_size=2) as (a, b):
        keys = [f"{c * 64}:" for c in "bcd"]
        for key in keys[:2]:
            assert await a.claim(key)
            await a.publish(key, answer(key[0], key[:64]))
        assert await b.cached(keys[0]) is not None  # used: now the newest
        assert await a.claim(keys[2])
        await a.publish(keys[2], answer("d", keys[2][:64]))
        assert [await b.cached(key) is not None for key in keys] == [True, False, True]
        assert (await a.figures()).cached_answers == 2


@on_reactor
async def test_no_cache_stores_no_answer_but_waiters_still_get_theirs(fleet: Fleet) -> None:
    async with fleet(cache_size=0) as (a, b):
        key = f"{SHA}:"
        assert await a.claim(key)
        waiting = deferred_from_coro(b.wait(key))
        await sleep(0.05)
        await a.publish(key, answer("nc"))
        assert (await maybe_deferred_to_future(waiting)).text == "nc"
        assert await b.cached(key) is None


@on_reactor
async def test_forget_drops_every_module_of_an_image(fleet: Fleet) -> None:
    async with fleet() as (a, b):
        other = "f" * 64
        for key in (f"{SHA}:", f"{SHA}:number", f"{other}:"):
            assert await a.claim(key)
            await a.publish(key, answer("t", key[:64]))
        await b.forget(SHA)
        assert await a.cached(f"{SHA}:") is None
        assert await a.cached(f"{SHA}:number") is None
        assert await a.cached(f"{other}:") is not None
        assert (await b.figures()).cached_answers == 1


# The budget


@on_reactor
async def test_the_budget_is_never_exceeded_by_one_under_races(fleet: Fleet) -> None:
    async with fleet(max_tasks=5) as (a, b):
        verdicts = await gather(*(state.begin_call() for state in [a, b] * 8))
        tickets = [v for v in verdicts if isinstance(v, CallTicket)]
        assert len(tickets) == 5
        assert all(v == Stop(CLOSE_MAX_TASKS) for v in verdicts if v not in tickets)
        figures = await a.figures()
        assert (figures.tasks_used, figures.max_tasks, figures.calls_in_flight) == (5, 5, 5)
        for ticket in tickets:
            await b.end_call(ticket)
        assert (await a.figures()).calls_in_flight == 0
        # Calls that ended still count: the budget is calls made, not calls in flight.
        assert await a.begin_call() == Stop(CLOSE_MAX_TASKS)


@on_reactor
async def test_a_budget_period_starts_the_count_again(fleet: Fleet) -> None:
    async with fleet(max_tasks=2, budget_period=1.0) as (a, b):
        figures = await a.figures()
        assert figures.budget_resets_in is not None
        # Start right after a period began, so that two calls fall within one.
        await sleep(figures.budget_resets_in + 0.02)
        assert isinstance(await a.begin_call(), CallTicket)
        assert isinstance(await b.begin_call(), CallTicket)
        assert await a.begin_call() == Stop(CLOSE_MAX_TASKS)
        resets_in = (await b.figures()).budget_resets_in
        assert resets_in is not None and 0 < resets_in <= 1.0
        await sleep(resets_in + 0.05)
        assert isinstance(await b.begin_call(), CallTicket)
        assert (await a.figures()).tasks_used == 1


# The account's concurrency


@on_reactor
async def test_fleet_concurrency_caps_calls_in_flight_and_wakes_a_waiter(fleet: Fleet) -> None:
    async with fleet(fleet_concurrency=2) as (a, b):
        first, second = await gather(a.begin_call(), b.begin_call())
        assert isinstance(first, CallTicket) and isinstance(second, CallTicket)
        third = deferred_from_coro(b.begin_call())
        await sleep(0.3)
        assert not third.called
        from twisted.internet import reactor

        started = reactor.seconds()
        await a.end_call(first)
        ticket = await maybe_deferred_to_future(third)
        assert isinstance(ticket, CallTicket)
        # Woken by the permit given back, not by a look after RECHECK seconds.
        assert reactor.seconds() - started < 1.0
        assert (await a.figures()).calls_in_flight == 2


# Blocks


@on_reactor
async def test_a_block_pauses_everyone_and_a_second_one_stops_everyone(fleet: Fleet) -> None:
    async with fleet(block_pause=1.0, block_window=60) as (a, b):
        early = await a.begin_call()
        late = await b.begin_call()
        assert isinstance(early, CallTicket) and isinstance(late, CallTicket)
        pause = await a.blocked(early)
        assert isinstance(pause, Pause) and 0.7 < pause.seconds <= 1.0
        # The other call was sent before the pause began: its block is the same one.
        assert await b.blocked(late) is None
        assert await b.blocked(None) is None  # getBalance during the pause: seen late too
        paused = await b.begin_call()
        assert isinstance(paused, Pause) and 0 < paused.seconds <= 1.0
        assert (await a.figures()).paused_for > 0
        await sleep(paused.seconds + 0.05)
        ticket = await b.begin_call()
        assert isinstance(ticket, CallTicket)
        assert await b.blocked(ticket) == Stop(CLOSE_BLOCKED)
        assert await a.stop_reason() == CLOSE_BLOCKED
        assert await a.begin_call() == Stop(CLOSE_BLOCKED)
        assert (await b.figures()).stopped == CLOSE_BLOCKED


@on_reactor
async def test_blocks_further_apart_than_the_window_only_pause(fleet: Fleet) -> None:
    async with fleet(block_pause=0.1, block_window=0.2) as (a, b):
        assert isinstance(await a.blocked(None), Pause)
        await sleep(0.35)
        assert isinstance(await b.blocked(None), Pause)
        assert await a.stop_reason() is None


# Fleet mode only: processes that die, and a Redis that is not there


@pytest.mark.asyncio_reactor
@on_reactor
async def test_a_waiter_takes_over_when_the_claimant_stops_renewing(redis_url: str) -> None:
    limits = StateLimits(lease=0.5)
    states = redis_states(redis_url, limits, unopened=1, opened=1, recheck=0.2)
    async with states as (dead, alive):
        key = f"{SHA}:"
        assert await dead.claim(key)
        assert not await alive.claim(key)
        assert await alive.wait(key) is None  # the lease lapsed: claim it again
        assert await alive.claim(key)
        await alive.publish(key, answer("mine"))
        # The dead claimant's late answer does not end the new claim's waiters' wait wrongly.
        assert (await alive.cached(key)).text == "mine"


@pytest.mark.asyncio_reactor
@on_reactor
async def test_a_live_process_keeps_its_claims_and_permits_past_the_lease(
    redis_url: str,
) -> None:
    limits = StateLimits(fleet_concurrency=1, lease=0.6)
    async with redis_states(redis_url, limits, opened=2) as (a, b):
        key = f"{SHA}:"
        assert await a.claim(key)
        ticket = await a.begin_call()
        assert isinstance(ticket, CallTicket)
        await sleep(1.5)  # well past the lease: renewed meanwhile, every lease / 3
        assert not await b.claim(key)
        assert (await b.figures()).calls_in_flight == 1
        waiting = deferred_from_coro(b.begin_call())
        await sleep(0.3)
        assert not waiting.called
        await a.end_call(ticket)
        assert isinstance(await maybe_deferred_to_future(waiting), CallTicket)


@pytest.mark.asyncio_reactor
@on_reactor
async def test_a_permit_of_a_process_that_stopped_renewing_returns_after_the_lease(
    redis_url: str,
) -> None:
    limits = StateLimits(fleet_concurrency=1, lease=1.2)
    async with redis_states(redis_url, limits, unopened=1, opened=1) as (dead, alive):
        assert isinstance(await dead.begin_call(), CallTicket)
        waiting = deferred_from_coro(alive.begin_call())
        await sleep(0.3)
        assert not waiting.called
        assert isinstance(await maybe_deferred_to_future(waiting), CallTicket)


@pytest.mark.asyncio_reactor
@on_reactor
async def test_a_closing_claimant_lets_waiters_elsewhere_take_the_image(redis_url: str) -> None:
    async with redis_states(redis_url, StateLimits(), opened=2) as (a, b):
        key = f"{SHA}:"
        assert await a.claim(key)
        waiting = deferred_from_coro(b.wait(key))
        own_waiter = deferred_from_coro(a.wait(key))
        await sleep(0.05)
        await a.close()
        # This crawl's own waiters fail with it; the other crawl's take the image over.
        with pytest.raises(CaptchaCrawlClosingError):
            await maybe_deferred_to_future(own_waiter)
        assert await maybe_deferred_to_future(waiting) is None
        assert await b.claim(key)


@pytest.mark.asyncio_reactor
@on_reactor
async def test_unreachable_redis_fails_closed_and_recovers_without_a_restart(
    own_redis: Any,
) -> None:
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    url = own_redis.unix_url.replace("unix://", "unix://:hunter2@")
    state = RedisState(url, "recovering", ApiKey(API_KEY), StateLimits(max_tasks=3))
    try:
        with pytest.raises(CaptchaFleetError) as raised:
            await state.open()
        message = str(raised.value)
        assert "CAPSOLVER_REDIS_URL=unix://:***@" in message
        assert "hunter2" not in message and API_KEY not in message
        assert str(own_redis.socket) in message  # what was tried
        with pytest.raises(CaptchaFleetError):
            await state.begin_call()
        own_redis.password = "hunter2"
        own_redis.start()
        assert isinstance(await state.begin_call(), CallTicket)
        # Lost mid-crawl: no leave to pay until it is back.
        own_redis.kill()
        with pytest.raises(CaptchaFleetError):
            await state.begin_call()
        own_redis.start()
        assert isinstance(await state.begin_call(), CallTicket)
    finally:
        await state.close()


def test_the_fingerprint_names_the_account_without_the_key() -> None:
    from scrapy_capsolver_ocr.state.redis_state import account_fingerprint

    first = account_fingerprint(ApiKey(API_KEY))
    assert first == account_fingerprint(ApiKey(API_KEY))
    assert first != account_fingerprint(ApiKey(API_KEY + "x"))
    assert API_KEY not in first and API_KEY[-8:] not in first
