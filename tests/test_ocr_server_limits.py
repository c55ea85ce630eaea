"""The local OCR server against abusive clients: the request body cap, the deadline for a
whole request, the idle timeout and the cap on open connections.

Servers run in subprocesses with a stand-in OCR engine (``tests/servers/fake_ocr_server.py``,
which takes every option of ``serve``), or in this process where a test must know when an
image is being read; ``scrapy-capsolver-ocr serve`` itself checks that its options arrive.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import select
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest
import pytest_twisted
from ocr_server_helpers import (
    FAKE_SERVER,
    SERVE,
    GateEngine,
    JsonObject,
    assert_error,
    b64,
    call,
    clean_png,
    image_held,
    image_task,
    server_env,
)
from servers.process import running_server
from twisted.internet.threads import deferToThread

from scrapy_capsolver_ocr.server.http import ServerLimits, default_max_connections

# Only a safety net for a server that never answers: a healthy one answers in milliseconds.
SOCKET_TIMEOUT = 30.0
# One image request, 90 bytes of JSON around a 4-byte image.
SMALL_TASK = json.dumps(image_task(b64(b"four"))).encode()


@contextlib.contextmanager
def fake_server(*options: str) -> Iterator[str]:
    with running_server([FAKE_SERVER, *options], env=server_env()) as url:
        yield url


def connect(url: str) -> socket.socket:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return socket.create_connection((parts.hostname, parts.port), timeout=SOCKET_TIMEOUT)


def read_answer(sock: socket.socket) -> tuple[int, JsonObject]:
    """The status and JSON of the one answer on ``sock``, read until the server closes."""
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


def is_closed(sock: socket.socket) -> bool:
    """Wait (at most SOCKET_TIMEOUT) until the server closes ``sock``; True if it did."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def assert_body_refused(answer: tuple[int, JsonObject]) -> None:
    assert_error(answer, 400, "ERROR_BAD_REQUEST")
    assert "--max-body" in answer[1]["errorDescription"]


@pytest.fixture(scope="module")
def capped_url() -> Iterator[str]:
    with fake_server("--max-body", "1000") as url:
        yield url


def test_a_body_declared_over_the_cap_is_refused_before_it_is_sent(capped_url: str) -> None:
    with connect(capped_url) as sock:
        sock.sendall(b"POST /createTask HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        assert_body_refused(read_answer(sock))


def test_a_client_that_sends_a_body_over_the_cap_whole_reads_the_refusal(
    capped_url: str,
) -> None:
    # Closed at once, the connection would be reset under a client still sending.
    for _ in range(3):
        assert_body_refused(call(capped_url, "createTask", raw=b" " * 20_000_000))


def test_a_chunked_body_over_the_cap_is_refused(capped_url: str) -> None:
    connection = http.client.HTTPConnection(urlsplit(capped_url).netloc, timeout=SOCKET_TIMEOUT)
    with contextlib.closing(connection):
        chunks = iter([SMALL_TASK[:50]] + [b" " * 100] * 100)
        connection.request("POST", "/createTask", body=chunks, encode_chunked=True)
        response = connection.getresponse()
        assert_body_refused((response.status, json.load(response)))


def test_a_body_at_the_cap_is_read(capped_url: str) -> None:
    at_cap = SMALL_TASK.ljust(1000)
    status, answer = call(capped_url, "createTask", raw=at_cap)
    assert (status, answer["solution"]) == (200, {"text": "common:4"})
    assert_body_refused(call(capped_url, "createTask", raw=at_cap + b" "))


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"HELLO\r\n\r\n",
        b"POST /createTask HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /createTask HTTP/1.1\r\nContent-Length: ten\r\n\r\n",
        b"POST /" + b"a" * 20_000 + b" HTTP/1.1\r\n\r\n",
        b"POST /createTask HTTP/1.1\r\n" + b"X-Filler: yes\r\n" * 600 + b"\r\n",
    ],
    ids=["request-line", "header", "content-length", "line-over-16k", "600-headers"],
)
def test_malformed_requests_get_a_json_error(capped_url: str, request_bytes: bytes) -> None:
    with connect(capped_url) as sock:
        sock.sendall(request_bytes)
        assert_error(read_answer(sock), 400, "ERROR_BAD_REQUEST")


def test_a_client_too_slow_to_send_its_request_is_cut_off() -> None:
    with fake_server("--request-timeout", "0.5") as url, connect(url) as sock:
        # One byte every 0.1 s keeps the connection from ever being idle.
        trickle = iter(b"POST /createTask HTTP/1.1\r\nHost: x\r\n" + b"X-Slow: y\r\n" * 100)
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while not select.select([sock], [], [], 0.1)[0] and time.monotonic() < deadline:
            sock.send(bytes([next(trickle)]))
        answer = read_answer(sock)
    assert_error(answer, 400, "ERROR_BAD_REQUEST")
    assert "did not arrive within 0.5 s" in answer[1]["errorDescription"]


def test_idle_connections_are_closed_after_the_idle_timeout() -> None:
    with fake_server("--idle-timeout", "0.5") as url:
        silent = [connect(url) for _ in range(20)]
        kept_alive = http.client.HTTPConnection(urlsplit(url).netloc, timeout=SOCKET_TIMEOUT)
        kept_alive.request("POST", "/getBalance", body=b"{}")
        assert kept_alive.getresponse().read()
        assert kept_alive.sock is not None
        try:
            assert [is_closed(sock) for sock in [*silent, kept_alive.sock]] == [True] * 21
        finally:
            kept_alive.close()
            for sock in silent:
                sock.close()


def test_idle_connections_do_not_lock_out_new_clients() -> None:
    # With 256 open files the server keeps at most 192 connections: more idle ones than
    # that used to take every file it could open, and new clients were reset.
    with fake_server("--open-files", "256") as url:
        idle = [connect(url) for _ in range(300)]
        try:
            status, answer = call(url, "createTask", image_task(b64(b"four")))
            assert (status, answer["solution"]) == (200, {"text": "common:4"})
            # The longest idle made room; the latest are still open.
            assert is_closed(idle[0])
            idle[-1].setblocking(False)
            with pytest.raises(BlockingIOError):
                idle[-1].recv(1)
        finally:
            for sock in idle:
                sock.close()


@pytest.mark.parametrize("max_connections", [1, 2])
@pytest_twisted.ensureDeferred
async def test_a_connection_being_answered_is_never_closed_to_make_room(
    max_connections: int,
) -> None:
    engine = GateEngine()
    limits = ServerLimits(max_connections=max_connections)
    async with image_held(engine, limits=limits) as (url, solving):
        # Over the cap, the longest-idle connection is closed: the first idle one, or the
        # newcomer itself when the only other connection is having its image read.
        first = await deferToThread(connect, url)
        second = await deferToThread(connect, url) if max_connections == 2 else None
        assert await deferToThread(is_closed, first)
        if second is not None:
            second.setblocking(False)
            with pytest.raises(BlockingIOError):
                second.recv(1)
            second.close()
        first.close()
        engine.release.set()
        response = await solving
        answer = await response.json()
    assert (response.code, answer["solution"]) == (200, {"text": "ok"})


def test_serve_applies_its_limit_options() -> None:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    options = ["--max-body", "20000", "--max-pixels", "5000", "--idle-timeout", "0.5"]
    with running_server([*SERVE, *options], env=server_env()) as url:
        assert_body_refused(call(url, "getBalance", raw=b" " * 20_001))
        captcha = call(url, "createTask", image_task(b64(clean_png("AB12"))))  # 160x60
        assert_error(captcha, 400, "ERROR_INVALID_IMAGE")
        assert "160x60 pixels" in captcha[1]["errorDescription"]
        with connect(url) as sock:
            assert is_closed(sock)


def test_the_connection_cap_follows_the_open_file_limit() -> None:
    assert default_max_connections(1024) == 960
    assert default_max_connections(20) == 16
    assert default_max_connections() >= 16


@pytest.mark.parametrize(
    "limits",
    [
        {"max_body": 0},
        {"idle_timeout": 0},
        {"request_timeout": -1.0},
        {"max_connections": 0},
    ],
)
def test_limits_must_be_positive(limits: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=next(iter(limits))):
        ServerLimits(**limits)
