"""Waiting on the reactor: for a semaphore, or for one result that many callers await."""

from __future__ import annotations

import copy
from typing import Any, Generic, TypeVar

from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.task import deferLater

T = TypeVar("T")


async def take(semaphore: DeferredSemaphore, reactor: Any, *, first: bool = False) -> None:
    """Acquire ``semaphore``; with ``first``, ahead of everyone already waiting. A caller
    that had to wait resumes in a reactor turn of its own: under the epoll reactor a Deferred
    fires its callbacks at once, so when solving stops, each waiter would fail, release, and
    wake the next one inside its own stack, until a long queue overflows it."""
    acquiring: Deferred[Any] = semaphore.acquire()
    if not acquiring.called:
        if first:  # ``waiting`` is the semaphore's public FIFO of pending acquires
            semaphore.waiting.remove(acquiring)
            semaphore.waiting.insert(0, acquiring)
        acquiring.addCallback(lambda token: deferLater(reactor, 0, lambda: token))
    await maybe_deferred_to_future(acquiring)


class Waiters(Generic[T]):
    """Callers waiting for one result, all told at once when it comes."""

    def __init__(self) -> None:
        self._deferreds: list[Deferred[T]] = []

    async def wait(self) -> T:
        deferred: Deferred[T] = Deferred()
        self._deferreds.append(deferred)
        return await maybe_deferred_to_future(deferred)

    def succeed(self, value: T) -> None:
        deferreds, self._deferreds = self._deferreds, []
        for deferred in deferreds:
            deferred.callback(value)

    def fail(self, error: BaseException) -> None:
        deferreds, self._deferreds = self._deferreds, []
        for deferred in deferreds:
            # Each waiter raises its own copy: a traceback added by one is not another's.
            deferred.errback(copy.copy(error))
