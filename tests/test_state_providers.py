"""The providers' part of the solving state (circuit breakers, per-provider caps), one suite
run against both implementations, as tests/test_state.py: in memory, and in a real Redis
(one server, TLS, a Cluster, Sentinel), where two states are two processes of one fleet."""

from __future__ import annotations

from test_state import Fleet, fleet, gather, on_reactor, sleep  # noqa: F401 (fixture)

PROBE_LEASE = 30.0


@on_reactor
async def test_an_outage_seen_by_one_process_opens_the_breaker_for_every_one(
    fleet: Fleet,  # noqa: F811
) -> None:
    async with fleet() as (a, b):
        assert await a.route_leave("capsolver", PROBE_LEASE) == "closed"
        assert await b.route_open_for("capsolver") is None
        assert await a.route_failed("capsolver", 60.0)
        assert 50.0 < await b.route_open_for("capsolver") <= 60.0
        # Opened once: the second report of the same outage is no new opening.
        assert not await b.route_failed("capsolver", 60.0)
        for state in (a, b):
            assert await state.route_leave("capsolver", PROBE_LEASE) == "open"
            # Each provider has a breaker of its own.
            assert await state.route_leave("backup", PROBE_LEASE) == "closed"


@on_reactor
async def test_after_the_cooldown_one_caller_of_the_fleet_probes(fleet: Fleet) -> None:  # noqa: F811
    async with fleet() as (a, b):
        await a.route_failed("capsolver", 0.2)
        await sleep(0.3)
        assert await b.route_open_for("capsolver") == 0.0  # half-open: nothing taken
        leaves = await gather(*(s.route_leave("capsolver", PROBE_LEASE) for s in (a, b, a, b)))
        assert sorted(leaves) == ["open", "open", "open", "probe"]
        # The probe answered: closed for everyone, and said once.
        assert await b.route_recovered("capsolver")
        assert not await a.route_recovered("capsolver")
        assert await a.route_leave("capsolver", PROBE_LEASE) == "closed"


@on_reactor
async def test_a_failed_probe_reopens_and_a_lost_probe_lapses(fleet: Fleet) -> None:  # noqa: F811
    async with fleet() as (a, b):
        # Half a second open, or leased: a busy machine's next call still falls within it.
        await a.route_failed("capsolver", 0.5)
        await sleep(0.6)
        assert await a.route_leave("capsolver", PROBE_LEASE) == "probe"
        assert not await a.route_failed("capsolver", 0.5)  # the probe failed: open again
        assert await b.route_leave("capsolver", PROBE_LEASE) == "open"
        await sleep(0.6)
        # A probe whose process died: another one probes once its lease is over.
        assert await b.route_leave("capsolver", 0.5) == "probe"
        assert await a.route_leave("capsolver", PROBE_LEASE) == "open"
        await sleep(0.6)
        assert await a.route_leave("capsolver", PROBE_LEASE) == "probe"


@on_reactor
async def test_a_provider_cap_holds_for_the_fleet(fleet: Fleet) -> None:  # noqa: F811
    async with fleet() as (a, b):
        first = await a.provider_permit("backup", 2)
        second = await b.provider_permit("backup", 2)
        assert first is not None and second is not None
        assert await a.provider_permit("backup", 2) is None
        assert await b.provider_permit("backup", 2) is None
        # Another provider's cap is its own.
        other = await b.provider_permit("capsolver", 1)
        assert other is not None
        await a.end_provider_call("backup", first)
        again = await b.provider_permit("backup", 2)
        assert again is not None
        for state, provider, permit in ((b, "backup", second), (b, "backup", again)):
            await state.end_provider_call(provider, permit)
        await b.end_provider_call("capsolver", other)
