"""The threads the local engine reads in, so that the reactor never waits for OCR.

A pool of its own (not the reactor's, which DNS lookups and other components share), with
at most ``workers`` threads, created when first needed and stopped when the crawl ends.

On Linux the threads run at a lower scheduling priority (nice +10): reading captchas uses
the CPU the crawl leaves idle, and the reactor thread (and whatever else runs on the
machine) gets the cores first when both want them.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

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
