"""Fleet mode's Redis through redis-py: what a URL means, TLS with the certificate verified, ACL
users, Redis Cluster (every key in one hash slot, the fleet commands), Sentinel (a failover
bridged), the settings that choose them, and the asyncio reactor it needs. The shared state
suite (test_state.py) runs against each kind of Redis too."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from conftest import API_KEY, TOPOLOGY_PASSWORD, CapSolverMock, run_command
from crawling import RecordingSpider, crawl, solver_settings, stat
from redis.asyncio.cluster import RedisCluster
from scrapy.settings import Settings
from scrapy.utils.reactor import is_asyncio_reactor_installed
from servers.redis_server import RedisServer
from servers.redis_topologies import RedisSentinelServers
from test_state import on_reactor, sleep

from scrapy_capsolver_ocr import CaptchaFleetError
from scrapy_capsolver_ocr.settings import ApiKey, SolverSettings
from scrapy_capsolver_ocr.state.base import CallTicket, StateLimits
from scrapy_capsolver_ocr.state.redis_connection import RedisTarget

SHA = "b" * 64


def fresh_fleet() -> str:
    return f"topo-{uuid.uuid4().hex[:8]}"


# What a URL means to redis-py (no server needed: nothing connects before the first command)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://h.example:7000/3", {"host": "h.example", "port": 7000, "db": 3}),
        ("redis://:p%40ss@h/0", {"host": "h", "port": 6379, "password": "p@ss", "db": 0}),
        ("redis://user:pw@h?db=2", {"username": "user", "password": "pw", "db": 2}),
        ("rediss://h:6380/1?ssl_ca_certs=/ca.pem", {"ssl_ca_certs": "/ca.pem", "db": 1}),
        ("unix:///run/redis.sock?db=4", {"path": "/run/redis.sock", "db": 4}),
        ("unix://:pw@/run/redis.sock", {"path": "/run/redis.sock", "password": "pw"}),
    ],
)
def test_redis_urls(url: str, expected: dict[str, Any]) -> None:
    target = RedisTarget(url)
    client = target.client()
    options = dict(client.connection_pool.connection_kwargs)
    if not url.startswith("unix"):
        options.setdefault("port", 6379)  # redis-py's Connection default
    assert {name: options.get(name) for name in expected} == expected
    assert options["socket_connect_timeout"] == target.connect_timeout
    assert options["socket_timeout"] == target.reply_timeout
    for shown in (target.safe_url, target.describe(), repr(client)):
        assert "pw" not in shown and "p%40ss" not in shown and "p@ss" not in shown
    assert ("SSL" in client.connection_pool.connection_class.__name__) == url.startswith("rediss")


def test_replies_are_parsed_by_hiredis() -> None:
    from redis.utils import HIREDIS_AVAILABLE

    assert HIREDIS_AVAILABLE  # the [redis] extra brings a hiredis redis-py uses


def test_a_database_that_is_no_number_is_refused_without_the_password() -> None:
    with pytest.raises(ValueError, match=r"redis://:\*\*\*@h/x'? is not valid") as raised:
        SolverSettings.from_settings(Settings({"CAPSOLVER_REDIS_URL": "redis://:secret@h/x"}))
    assert "secret" not in str(raised.value)


@pytest.mark.parametrize(
    ("settings", "named", "hint"),
    [
        ({"CAPSOLVER_REDIS_SENTINELS": ["127.0.0.1:26379"]}, "SENTINELS", "master name"),
        (
            {
                "CAPSOLVER_REDIS_URL": "redis://:pw@master:6379/0",
                "CAPSOLVER_REDIS_SENTINELS": "127.0.0.1:26379",
            },
            "SENTINELS",
            "without a port",
        ),
        (
            {"CAPSOLVER_REDIS_URL": "redis://m/0", "CAPSOLVER_REDIS_SENTINELS": ["h:port"]},
            "SENTINELS",
            "host:port",
        ),
        ({"CAPSOLVER_REDIS_CLUSTER": True}, "CLUSTER", "naming a node"),
        (
            {"CAPSOLVER_REDIS_URL": "unix:///r.sock", "CAPSOLVER_REDIS_CLUSTER": True},
            "CLUSTER",
            "naming a node",
        ),
        (
            {"CAPSOLVER_REDIS_URL": "redis://:pw@h:7000/2", "CAPSOLVER_REDIS_CLUSTER": True},
            "URL",
            "database 0",
        ),
        (
            {
                "CAPSOLVER_REDIS_URL": "redis://m/0",
                "CAPSOLVER_REDIS_SENTINELS": ["h:26379"],
                "CAPSOLVER_REDIS_CLUSTER": "True",
            },
            "CLUSTER",
            "False when",
        ),
    ],
)
def test_sentinel_and_cluster_settings_are_checked_once(
    settings: dict[str, Any], named: str, hint: str
) -> None:
    with pytest.raises(ValueError) as raised:
        SolverSettings.from_settings(Settings(settings))
    message = str(raised.value)
    assert message.startswith(f"CAPSOLVER_REDIS_{named}=")
    assert hint in message and ":pw@" not in message


def test_sentinel_and_cluster_settings_as_read() -> None:
    config = SolverSettings.from_settings(
        Settings(
            {
                "CAPSOLVER_REDIS_URL": "rediss://:pw@fleet-master/1",
                "CAPSOLVER_REDIS_SENTINELS": "10.0.0.1:26379,[::1]:26380, sentinel-3",
            }
        )
    )
    assert config.redis_sentinels == (
        ("10.0.0.1", 26379),
        ("::1", 26380),
        ("sentinel-3", 26379),
    )
    assert not config.redis_cluster
    config = SolverSettings.from_settings(
        Settings({"CAPSOLVER_REDIS_URL": "redis://node:7000", "CAPSOLVER_REDIS_CLUSTER": True})
    )
    assert config.redis_cluster and config.redis_sentinels == ()


# Real servers


@pytest.mark.asyncio_reactor
@on_reactor
async def test_rediss_verifies_the_servers_certificate(redis_tls: tuple[Any, Path]) -> None:
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    server, ca = redis_tls
    trusted = RedisState(f"{server.url}?ssl_ca_certs={ca}", "tls", ApiKey(API_KEY), StateLimits())
    await trusted.open()
    assert isinstance(await trusted.begin_call(), CallTicket)
    await trusted.close()
    # Without the CA, the certificate is not trusted: no connection, no leave to pay.
    untrusted = RedisState(server.url, "tls", ApiKey(API_KEY), StateLimits())
    with pytest.raises(CaptchaFleetError, match="certificate verify failed"):
        await untrusted.begin_call()
    await untrusted.close()


@pytest.mark.asyncio_reactor
@on_reactor
async def test_an_acl_user_logs_in_and_a_wrong_password_is_never_shown(
    own_redis: RedisServer,
) -> None:
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    own_redis.port = 0
    own_redis.start()
    own_redis.command("ACL", "SETUSER", "fleet", "on", ">p@ss-w0rd", "~*", "&*", "+@all")
    url = own_redis.unix_url.replace("unix://", "unix://fleet:p%40ss-w0rd@")
    state = RedisState(url, fresh_fleet(), ApiKey(API_KEY), StateLimits())
    await state.open()
    assert isinstance(await state.begin_call(), CallTicket)
    await state.close()
    wrong = RedisState(url.replace("w0rd", "word"), fresh_fleet(), ApiKey(API_KEY), StateLimits())
    with pytest.raises(CaptchaFleetError) as raised:
        await wrong.begin_call()
    await wrong.close()
    message = str(raised.value)
    assert "unix://fleet:***@" in message and "p@ss" not in message and "ss-wo" not in message


@pytest.mark.asyncio_reactor
@on_reactor
async def test_in_a_cluster_every_key_of_a_fleet_lives_in_one_hash_slot(
    redis_cluster: Any,
) -> None:
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    target = RedisTarget(redis_cluster.url, cluster=True)
    fleet = fresh_fleet()
    limits = StateLimits(max_tasks=5, budget_period=60, fleet_concurrency=2)
    a = RedisState(target, fleet, ApiKey(API_KEY), limits)
    b = RedisState(target, fleet, ApiKey(API_KEY), limits)
    await a.open()
    await b.open()
    try:
        key = f"{SHA}:"
        assert await a.claim(key)
        assert not await b.claim(key)
        ticket = await a.begin_call()
        assert isinstance(ticket, CallTicket)
        await a.end_call(ticket)
        from scrapy_capsolver_ocr.solution import CaptchaSolution

        waiting = b.wait(key)
        await a.publish(key, CaptchaSolution("c1u5", "t1", SHA))
        solved = await waiting  # woken through the cluster's pub/sub
        assert solved is not None and solved.text == "c1u5"
        figures = await b.figures()
        assert (figures.tasks_used, figures.cached_answers) == (1, 1)
    finally:
        await a.close()
        await b.close()
    client = RedisCluster.from_url(redis_cluster.url)
    try:
        keys = []
        for pattern in (f"fleet:{fleet}:*", f"account:{a.keys.account}:*"):
            keys += [k async for k in client.scan_iter(match=f"{{capsolver}}:{pattern}")]
        assert len(keys) >= 4
        assert len({client.keyslot(k) for k in keys}) == 1
    finally:
        await client.aclose()


@pytest.mark.asyncio_reactor
@on_reactor
async def test_a_sentinel_failover_pauses_paying_and_solving_resumes_on_the_new_master(
    redis_binary: str,
) -> None:
    from conftest import _redis_tool

    from scrapy_capsolver_ocr.state.redis_state import RedisState

    servers = RedisSentinelServers(
        redis_binary, _redis_tool("redis-sentinel"), password=TOPOLOGY_PASSWORD
    )
    state: RedisState | None = None
    try:
        servers.start()
        state = RedisState(
            RedisTarget(servers.url, servers.sentinels),
            fresh_fleet(),
            ApiKey(API_KEY),
            StateLimits(max_tasks=100),
        )
        await state.open()
        assert isinstance(await state.begin_call(), CallTicket)
        servers.master.command("WAIT", "1", "5000")  # the replica has the count
        servers.master.kill()
        refused = 0
        deadline = time.monotonic() + 30
        while True:
            try:
                ticket = await state.begin_call()
            except CaptchaFleetError as exc:
                message = str(exc)
                assert TOPOLOGY_PASSWORD not in message and "fleet-master" in message
                refused += 1
                assert time.monotonic() < deadline, "no new master within 30 s"
                await sleep(0.5)
                continue
            if isinstance(ticket, CallTicket):
                break
        assert refused > 0  # nothing was paid for while there was no master
        figures = await state.figures()
        # The replica had the first count: the budget goes on from it.
        assert figures.tasks_used == 2
    finally:
        if state is not None:
            await state.close()
        servers.stop()


def fleet_command(*args: str, env: dict[str, str] | None = None) -> Any:
    return run_command("fleet", *args, timeout=60, text=True, env={**os.environ, **(env or {})})


@pytest.mark.asyncio_reactor
@on_reactor
async def test_fleet_commands_on_a_cluster_and_through_sentinel(
    redis_cluster: Any, redis_sentinel: Any
) -> None:
    from scrapy_capsolver_ocr.state.redis_state import RedisState

    sentinels = ",".join(f"{host}:{port}" for host, port in redis_sentinel.sentinels)
    targets = [
        (RedisTarget(redis_cluster.url, cluster=True), ["--redis-cluster"], {}),
        (
            RedisTarget(redis_sentinel.url, redis_sentinel.sentinels),
            [],
            {"CAPSOLVER_REDIS_SENTINELS": sentinels},
        ),
    ]
    for target, flags, env in targets:
        fleet = fresh_fleet()
        state = RedisState(target, fleet, ApiKey(API_KEY), StateLimits(max_tasks=9))
        await state.open()
        await state.begin_call()
        await state.close()
        url = ["--redis-url", target.url]
        shown = fleet_command("status", *url, *flags, "--fleet", fleet, env=env)
        assert shown.returncode == 0, shown.stderr
        assert "1 of 9 API tasks used" in shown.stdout
        reset = fleet_command("reset-budget", *url, *flags, "--fleet", fleet, env=env)
        assert "(1 API tasks were counted in this period)" in reset.stdout
        everything = fleet_command("status", *url, *flags, env=env)
        assert f"Fleet {fleet}" in everything.stdout
        for output in (shown, reset, everything):
            assert TOPOLOGY_PASSWORD not in output.stdout + output.stderr
    # Unreachable: the message names where, never the password.
    down = fleet_command(
        "status",
        "--redis-url",
        f"redis://:{TOPOLOGY_PASSWORD}@fleet-master/0",
        "--redis-sentinel",
        "127.0.0.1:1",
    )
    assert down.returncode == 1
    assert "redis://:***@fleet-master/0 (master 'fleet-master' through Sentinel 127.0.0.1:1)" in (
        down.stderr
    )
    assert TOPOLOGY_PASSWORD not in down.stderr + down.stdout


# The reactor


@pytest_twisted.ensureDeferred
async def test_fleet_mode_runs_on_the_asyncio_reactor_and_names_it_on_another(
    capsolver: CapSolverMock, image_site: str, redis_url: str
) -> None:
    settings = solver_settings(
        capsolver, CAPSOLVER_REDIS_URL=redis_url, CAPSOLVER_FLEET=fresh_fleet()
    )
    urls = [f"{image_site}/captcha/reactor1.png"]
    if is_asyncio_reactor_installed():
        crawler = await crawl(RecordingSpider, settings, urls=urls)
        assert stat(crawler, "finish_reason") == "finished"
        assert crawler.spider.texts == {urls[0]: "reactor1"}  # type: ignore[union-attr]
        return
    # The epoll pass of scripts/test.sh: refused at start, before anything is paid.
    with pytest.raises(RuntimeError) as raised:
        await crawl(RecordingSpider, settings, urls=urls)
    message = str(raised.value)
    assert "TWISTED_REACTOR" in message
    assert '"twisted.internet.asyncioreactor.AsyncioSelectorReactor"' in message
    assert capsolver.calls() == []
