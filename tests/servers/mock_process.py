"""A CapSolver mock (capsolver_mock.py) in a process of its own that can be killed and started
again on its port, its API calls logged to a file that outlives it: for the failover tests
and benchmark, which kill the preferred service in the middle of a crawl."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from servers.process import start_server, stop_server

MOCK = str(Path(__file__).with_name("capsolver_mock.py"))


class MockProcess:
    """``MockProcess(log, "--key", KEY, ...)`` starts the mock; ``url`` stays the same
    across :meth:`kill` and :meth:`restart`."""

    def __init__(self, log: Path, *options: str) -> None:
        self.log_path = log
        self._argv = [MOCK, "--calls-log", str(log), *options]
        self.process, self.url = start_server(self._argv)

    def kill(self) -> None:
        """SIGKILL: connections and tasks in flight die with it."""
        self.process.kill()
        self.process.wait()

    def restart(self) -> None:
        """Listening again on the same port (returns once it listens)."""
        port = self.url.rpartition(":")[2]
        self.process, _ = start_server([*self._argv, "--port", port])

    def stop(self) -> None:
        stop_server(self.process)

    def _calls(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.log_path.read_text().splitlines()]

    def created(self) -> list[str]:
        """The image digest of every createTask it received and did not refuse (one it
        died before answering counts as paid), killed or not."""
        calls = self._calls()
        created = Counter(
            str(c["sha256"]) for c in calls if c["method"] == "createTask" and not c.get("refused")
        )
        created.subtract(str(c["sha256"]) for c in calls if c.get("refused"))
        return sorted(created.elements())

    def answered(self) -> list[str]:
        """The image digest of every createTask it answered with a solution (written out
        before it died): what a service billing an answer delivered charges."""
        return sorted(str(c["sha256"]) for c in self._calls() if c["method"] == "answered")

    def received(self) -> int:
        """createTask calls it received, refused ones included."""
        return sum(1 for c in self._calls() if c["method"] == "createTask" and not c.get("refused"))


def paid_twice(*mocks: MockProcess) -> int:
    """Images whose createTask was paid more than once, over every service."""
    counts = Counter(sha for mock in mocks for sha in mock.created())
    return sum(1 for count in counts.values() if count > 1)


def answered_twice(*mocks: MockProcess) -> int:
    """Images whose createTask was answered with a solution by more than one service (or
    twice by one), over every service."""
    counts = Counter(sha for mock in mocks for sha in mock.answered())
    return sum(1 for count in counts.values() if count > 1)
