"""The threads the local engine reads in, so that the reactor never waits for OCR; and
worker processes it can read in instead (:class:`WorkerProcesses`).

A pool of its own (not the reactor's, which DNS lookups and other components share), with
at most ``workers`` threads, created when first needed and stopped when the crawl ends.

On Linux the threads run at a lower scheduling priority (nice +10): reading captchas uses
the CPU the crawl leaves idle, and the reactor thread (and whatever else runs on the
machine) gets the cores first when both want them.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import IO, Any, TypeVar

from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

T = TypeVar("T")

#: How much nicer than the crawl the reading threads are (Linux: per thread).
NICENESS = 10
_lowered = threading.local()


def lower_priority() -> None:
    """Lower the calling thread's scheduling priority by :data:`NICENESS`, once per thread
    (Linux, where each thread has its own nice value; elsewhere nothing is changed)."""
    if getattr(_lowered, "done", False):
        return
    _lowered.done = True
    if sys.platform.startswith("linux"):
        try:
            thread = threading.get_native_id()
            os.setpriority(
                os.PRIO_PROCESS, thread, os.getpriority(os.PRIO_PROCESS, thread) + NICENESS
            )
        except OSError:  # not allowed in this sandbox: the threads keep the crawl's priority
            pass


def _at_low_priority(function: Callable[..., T], *args: Any) -> T:
    lower_priority()
    return function(*args)


class WorkerThreads:
    """Runs blocking calls in up to ``workers`` threads and awaits them on the reactor."""

    def __init__(self, workers: int, reactor: Any, name: str = "capsolver-local-ocr") -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=workers, name=name)
        self._running: set[Deferred[Any]] = set()
        self._stopped = False
        self._pool.start()
        # A crawl that ends without closing the solver must not leave threads behind.
        self._trigger = reactor.addSystemEventTrigger("before", "shutdown", self._stop_pool)

    @property
    def busy(self) -> int:
        """Calls running or waiting for a thread."""
        return len(self._running)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` in a worker thread; its result or its exception."""
        if self._stopped:
            raise RuntimeError("the local OCR threads are stopped")
        running: Deferred[T] = deferToThreadPool(
            self._reactor, self._pool, _at_low_priority, function, *args
        )
        self._running.add(running)
        try:
            return await maybe_deferred_to_future(running)
        finally:
            self._running.discard(running)

    async def stop(self) -> None:
        """Let the calls in progress end, then stop the threads."""
        if self._stopped:
            return
        self._stopped = True
        if self._running:
            await maybe_deferred_to_future(DeferredList(list(self._running), consumeErrors=True))
        self._reactor.removeSystemEventTrigger(self._trigger)
        self._stop_pool()

    def _stop_pool(self) -> None:
        self._stopped = True
        if self._pool.started:
            # Joins the threads, which are idle by now (or end a read of a few ms).
            self._pool.stop()


# Worker processes: the reading itself, out of the crawl's process.


class WorkerProcessDied(RuntimeError):
    """The worker process reading an image exited before it answered."""


def send_frame(stream: IO[bytes], message: object) -> None:
    data = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_FRAME.pack(len(data)) + data)
    stream.flush()


def receive_frame(stream: IO[bytes]) -> Any:
    """The next message, or raise EOFError when the other end has gone."""
    header = stream.read(_FRAME.size)
    if len(header) < _FRAME.size:
        raise EOFError
    (size,) = _FRAME.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    # Both ends are this module, on a pipe between a process and the worker it started.
    return pickle.loads(data)


_FRAME = struct.Struct("!I")


class WorkerProcesses:
    """Calls ``reader(*args)`` in up to ``workers`` processes of their own, where ``reader``
    is what the function named ``factory`` (``module.function``) returns given ``setup``;
    each process is started
    with ``python -m`` this module (not multiprocessing, whose workers would import the
    crawl's own script again) and kept for the next calls.

    :meth:`call` blocks until its process answers: call it from a worker thread
    (:class:`WorkerThreads`), never on the reactor thread. A process that dies while
    reading raises :class:`WorkerProcessDied` for that call; the next call starts another.
    The processes run at :data:`NICENESS` and ignore Ctrl-C (the crawl decides when to stop).
    """

    def __init__(self, workers: int, factory: str, setup: dict[str, Any]) -> None:
        self._workers = workers
        self._target = (factory, setup)
        self._lock = threading.Lock()
        self._idle: list[subprocess.Popen[bytes]] = []
        self._started = 0
        self._free = threading.Semaphore(workers)
        self._closed = False

    @property
    def processes(self) -> list[int]:
        """The process ids of the worker processes alive and idle (for tests and stats)."""
        with self._lock:
            return [process.pid for process in self._idle]

    def call(self, *args: Any) -> Any:
        with self._free:
            process = self._take()
            try:
                assert process.stdin is not None and process.stdout is not None
                send_frame(process.stdin, args)
                outcome, value = receive_frame(process.stdout)
            except (EOFError, OSError):
                _stop(process, 10.0)  # it is gone: close its pipes, collect its exit code
                code = process.returncode
                with self._lock:
                    self._started -= 1
                raise WorkerProcessDied(
                    f"the local OCR worker process {process.pid} exited (code {code}) while "
                    "reading a captcha; the next captcha starts another"
                ) from None
            self._give_back(process)
            if outcome == "error":
                raise value
            return value

    def close(self, timeout: float = 10.0) -> None:
        """Stop the idle processes (each ends at the end of its input) and wait for them.
        Blocks up to ``timeout`` per process: call it from a worker thread."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for process in idle:
            _stop(process, timeout)

    def _take(self) -> subprocess.Popen[bytes]:
        with self._lock:
            if self._closed:
                raise RuntimeError("the local OCR worker processes are stopped")
            while self._idle:
                process = self._idle.pop()
                if process.poll() is None:
                    return process
                _stop(process, 0)  # died while idle: nothing was lost
                self._started -= 1
            self._started += 1
        argv = [sys.executable, "-m", __name__, json.dumps(self._target)]
        return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)

    def _give_back(self, process: subprocess.Popen[bytes]) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(process)
                return
        _stop(process, 10.0)


def _stop(process: subprocess.Popen[bytes], timeout: float) -> None:
    assert process.stdin is not None and process.stdout is not None
    with contextlib.suppress(OSError):  # already gone
        process.stdin.close()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    process.stdout.close()


def _serve(target: str) -> None:
    """A worker process: builds its reader, then answers calls until its input ends."""
    import importlib

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    lower_priority()
    factory, setup = json.loads(target)
    module_name, _, name = factory.rpartition(".")
    reader = getattr(importlib.import_module(module_name), name)(**setup)
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Whatever else prints must not corrupt the answers.
    sys.stdout = sys.stderr
    while True:
        try:
            args = receive_frame(stdin)
        except EOFError:
            return
        try:
            answer: tuple[str, Any] = ("ok", reader(*args))
        except Exception as exc:  # the caller gets it, raised as in a thread
            answer = ("error", exc)
        try:
            send_frame(stdout, answer)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            send_frame(stdout, ("error", RuntimeError(f"{answer[1]!r} cannot be sent back: {exc}")))


if __name__ == "__main__":
    _serve(sys.argv[1])
