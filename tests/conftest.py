"""Fixtures: the CapSolver mock and the image site, each a real server in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from servers import redis_server, redis_topologies
from servers.process import running_server

SERVERS = Path(__file__).parent / "servers"
# Scrapy's cookie middleware would fetch the public suffix list from the internet in a new
# environment: tests talk to 127.0.0.1 only, so they use the copy tldextract ships.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
API_KEY = "CAP-0123456789abcdef0123456789SECRET"


def run_command(*args: str, timeout: float = 300, **options: Any) -> subprocess.CompletedProcess:
    """``python -m scrapy_capsolver_ocr ARGS`` with its output captured; ``options`` go to
    :func:`subprocess.run` (``env``, ``input``, ``text``...)."""
    return subprocess.run(
        [sys.executable, "-m", "scrapy_capsolver_ocr", *args],
        capture_output=True,
        timeout=timeout,
        check=False,
        **options,
    )


def closed_port_url() -> str:
    """A URL on 127.0.0.1 where nothing listens: connections to it are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"  # nothing listens there once the probe is closed


class CapSolverMock:
    """Client of the mock's control endpoints (see servers/capsolver_mock.py)."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _post(self, path: str, data: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(data).encode(), method="POST"
        )
        with urllib.request.urlopen(request, timeout=10) as answer:
            answer.read()

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=10) as answer:
            return json.loads(answer.read())

    def reset(self) -> None:
        self._post("/_reset", {})

    def configure(self, **config: Any) -> None:
        self._post("/_config", config)

    def calls(self, method: str | None = "createTask") -> list[dict[str, Any]]:
        return [c for c in self._get("/_calls") if method is None or c["method"] == method]

    def max_in_flight(self) -> int:
        return int(self._get("/_stats")["max_in_flight"])

    def stats(self) -> dict[str, Any]:
        """``max_in_flight``, ``applied`` (calls each fault rule applied to), ``outages``."""
        return dict(self._get("/_stats"))


@pytest.fixture(scope="session")
def capsolver_url() -> Iterator[str]:
    with running_server([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY]) as url:
        yield url


@pytest.fixture
def capsolver(capsolver_url: str) -> CapSolverMock:
    mock = CapSolverMock(capsolver_url)
    mock.reset()
    return mock


@pytest.fixture(scope="session")
def image_site() -> Iterator[str]:
    with running_server([str(SERVERS / "image_site.py")]) as url:
        yield url


DEMO_SITE = str(SERVERS.parents[1] / "example_project" / "demo_site" / "server.py")


@pytest.fixture(scope="session")
def demo_site() -> Iterator[str]:
    """The demo site, its captcha answers embedded for the mock. It checks answers per
    session and every crawl starts new sessions, so one server serves every test."""
    with running_server([DEMO_SITE, "--port", "0", "--embed-answers"]) as url:
        yield url


@pytest.fixture(scope="session")
def rejecting_demo_site() -> Iterator[str]:
    """The demo site refusing the first two answers of each session, even right ones."""
    argv = [DEMO_SITE, "--port", "0", "--embed-answers", "--reject-first", "2"]
    with running_server(argv) as url:
        yield url


def _no_redis(reason: str) -> None:
    # CI must run the fleet tests: a missing Redis there is a failure, never a skip.
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the fleet tests must run)")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_binary() -> str:
    """A ``redis-server`` these tests can start, kill and restart themselves."""
    binary = redis_server.redis_binary()
    if binary is None:
        _no_redis("no redis-server: install it (apt-get install redis-server) or set REDIS_SERVER")
    assert binary is not None
    return binary


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for fleet tests: ``REDIS_URL`` when set, else a ``redis-server`` of the
    session's own on a TCP port. Tests keep apart by fleet names of their own."""
    external = os.environ.get("REDIS_URL")
    if external:
        yield external
        return
    binary = redis_server.redis_binary()
    if binary is None:
        _no_redis("no Redis: set REDIS_URL, REDIS_SERVER, or install redis-server")
    assert binary is not None
    server = redis_server.RedisServer(binary, tcp=True).start()
    try:
        yield server.url
    finally:
        server.stop()


def _redis_tool(name: str) -> str:
    binary = redis_server.redis_binary(name)
    if binary is None:
        _no_redis(f"no {name}: install it (apt-get install redis-server redis-sentinel)")
    assert binary is not None
    return binary


#: The password of the Cluster's and the Sentinel's Redis: the fleet tests check that it shows
#: nowhere.
TOPOLOGY_PASSWORD = "topo-s3cret"


@pytest.fixture(scope="session")
def redis_cluster(redis_binary: str) -> Iterator[redis_topologies.RedisClusterServers]:
    """A Redis Cluster of three masters, with a password, for the session."""
    cluster = redis_topologies.RedisClusterServers(
        redis_binary, _redis_tool("redis-cli"), password=TOPOLOGY_PASSWORD
    )
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def redis_sentinel(redis_binary: str) -> Iterator[redis_topologies.RedisSentinelServers]:
    """A master with a password, its replica and a Sentinel watching it, for the session."""
    servers = redis_topologies.RedisSentinelServers(
        redis_binary, _redis_tool("redis-sentinel"), password=TOPOLOGY_PASSWORD
    )
    try:
        yield servers.start()
    finally:
        servers.stop()


@pytest.fixture(scope="session")
def redis_tls(
    redis_binary: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[redis_server.RedisServer, Path]]:
    """A ``redis-server`` speaking TLS only, with a throwaway certificate: (server, CA file)."""
    ca, certificate, key = redis_topologies.tls_certificates(tmp_path_factory.mktemp("tls"))
    server = redis_server.RedisServer(redis_binary, tcp=True, tls=(certificate, key)).start()
    try:
        yield server, ca
    finally:
        server.stop()


@pytest.fixture
def own_redis(redis_binary: str) -> Iterator[redis_server.RedisServer]:
    """A ``redis-server`` for one test, on a unix socket, to kill and restart."""
    server = redis_server.RedisServer(redis_binary)
    try:
        yield server
    finally:
        server.stop()
