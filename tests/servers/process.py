"""Start a test server in a subprocess and learn its URL without a race on the port.

The server binds port 0 (any free port) and prints its URL as the first line on stdout once
it listens; :func:`start_server` waits for that line. Servers should log to stderr, which is
left to the test run (pytest shows it with a failing test).
"""

from __future__ import annotations

import contextlib
import os
import queue
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
#: Only a safety net for a server that hangs before printing; a healthy one takes ~1 s.
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0


def start_server(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] = REPO_ROOT,
    timeout: float = STARTUP_TIMEOUT,
) -> tuple[subprocess.Popen[str], str]:
    """Run ``[sys.executable, *argv]``; return the process and the URL it printed first.

    ``env`` replaces the environment, as for :class:`subprocess.Popen`. Pair every call with
    :func:`stop_server`, or use :func:`running_server`.
    """
    process = subprocess.Popen(
        [sys.executable, *argv],
        stdout=subprocess.PIPE,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
    )
    assert process.stdout is not None
    first_line: queue.Queue[str] = queue.Queue(maxsize=1)
    threading.Thread(target=_read_stdout, args=(process.stdout, first_line), daemon=True).start()
    try:
        line = first_line.get(timeout=timeout)
    except queue.Empty:
        stop_server(process)
        raise RuntimeError(f"{argv!r} printed no URL within {timeout} s") from None
    if not line.startswith(("http://", "https://")):
        stop_server(process)
        raise RuntimeError(
            f"{argv!r} printed {line!r} instead of its URL (exit status {process.returncode})"
        )
    return process, line.strip()


def stop_server(process: subprocess.Popen[str], timeout: float = STOP_TIMEOUT) -> None:
    """Terminate the server (SIGTERM) and wait for it; kill it if it does not stop."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def running_server(argv: Sequence[str], *, env: Mapping[str, str] | None = None) -> Iterator[str]:
    """``with running_server(argv) as url:`` the server runs inside the block."""
    process, url = start_server(argv, env=env)
    try:
        yield url
    finally:
        stop_server(process)


def _read_stdout(stream: IO[str], first_line: queue.Queue[str]) -> None:
    with stream:
        first_line.put(stream.readline())
        # Keep reading, so that a server writing more never blocks on a full pipe.
        for _ in stream:
            pass
