"""Fixtures: the CapSolver mock and the image site, each a real server in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SERVERS = Path(__file__).parent / "servers"
API_KEY = "CAP-0123456789abcdef0123456789SECRET"


class ServerProcess:
    """A server started as ``python SCRIPT ARGS`` that prints its URL as its first line."""

    def __init__(self, script: Path, *args: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script), *args], stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        self.url = self.process.stdout.readline().strip()
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"{script.name} did not start (printed {self.url!r})")

    def stop(self) -> None:
        assert self.process.stdout is not None
        self.process.stdout.close()
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


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


@pytest.fixture(scope="session")
def capsolver_process() -> Iterator[ServerProcess]:
    server = ServerProcess(SERVERS / "capsolver_mock.py", "--key", API_KEY)
    yield server
    server.stop()


@pytest.fixture
def capsolver(capsolver_process: ServerProcess) -> CapSolverMock:
    mock = CapSolverMock(capsolver_process.url)
    mock.reset()
    return mock


@pytest.fixture(scope="session")
def image_site() -> Iterator[str]:
    server = ServerProcess(SERVERS / "image_site.py")
    yield server.url
    server.stop()
