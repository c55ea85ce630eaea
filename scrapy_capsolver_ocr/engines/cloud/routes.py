"""Where a paid task goes: the seam between the cloud reader and its solving services.

A :class:`Route` is one service of ``CAPSOLVER_PROVIDERS`` with its own provider, API client
and task runner. The reader pays through a :class:`Routes`: :class:`OneRoute` (one service,
the crawl as it always was: account errors close the crawl, a block pauses solving) or
:class:`~scrapy_capsolver_ocr.engines.cloud.failover.Failover` (several services tried in
order behind circuit breakers). The reader runs one paid call the same way for both; what
a failure means for the crawl is the :class:`Routes`'.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ...api.client import ApiClient
from ...api.image_task import TaskRunner
from ...api.provider import Provider
from ...errors import (
    CaptchaAccountError,
    CaptchaBlockedError,
    CaptchaSolveError,
    CaptchaTransientError,
)
from ...solution import CaptchaSolution
from ...state.base import CallTicket
from .account import Account

#: Transport failures before the request was sent: the service cannot have created a task.
_UNSENT_TRANSPORT = frozenset(
    {
        "CONNECTION_ConnectionRefusedError",
        "CONNECTION_ConnectError",
        "CONNECTION_DNSLookupError",
        "CONNECTION_NoRouteError",
        "CONNECTION_TCPTimedOutError",
        "CONNECTION_ConnectingCancelledError",
        "TLS_CERTIFICATE",
    }
)


def refused_before_sending(exc: Exception) -> bool:
    """The call never reached the service (connection refused, no route, a refused
    certificate): nothing was created, and asking again at once would fail the same way."""
    return isinstance(exc, CaptchaTransientError) and exc.error_code in _UNSENT_TRANSPORT


#: Transport failures of a call that was sent and whose connection then died (closed or
#: reset by the other end before the whole answer came): not a timeout, not an answer.
_LOST_CONNECTION = frozenset(
    {
        "CONNECTION_ResponseNeverReceived",
        "CONNECTION_ResponseFailed",
        "CONNECTION_RequestTransmissionFailed",
        "CONNECTION_ConnectionLost",
        "CONNECTION_ConnectionDone",
        "CONNECTION_ConnectionAborted",
    }
)


def connection_lost(exc: Exception) -> bool:
    """The call was sent and its connection died before the answer: the service may have
    created a task, or the process holding it may have died with the connection (which
    :func:`unreachable` tells apart). A timeout, a gateway timeout or a broken answer came
    from a service that is still there: not this."""
    return isinstance(exc, CaptchaTransientError) and exc.error_code in _LOST_CONNECTION


async def unreachable(route: Route) -> bool:
    """Whether ``route``'s service cannot be reached now: a call that creates nothing (its
    balance) never gets to it (connection refused, no route). A service that answers, even
    with an error, or that is only slow, is reachable."""
    try:
        await route.api.call(*route.provider.balance_call())
    except CaptchaSolveError as exc:
        return refused_before_sending(exc)
    return False


def maybe_created(exc: Exception) -> bool:
    """The call may have created a task the service bills: it was sent and no answer
    came back (a timeout, a connection lost before or while answering, an answer too large
    or without ``errorId``, a gateway timeout). An error the service answered with, or a
    call that never left, created none."""
    if not isinstance(exc, CaptchaTransientError) or refused_before_sending(exc):
        return False
    code = exc.error_code
    if code in ("HTTP_504", "TIMEOUT", "ANSWER_TOO_LARGE", "MALFORMED_ANSWER", "NOT_JSON"):
        return True
    return code.startswith("CONNECTION_")


@dataclass(eq=False)
class Route:
    """One solving service a task can be paid on."""

    #: The service's name in ``CAPSOLVER_PROVIDERS`` and in stats.
    name: str
    provider: Provider
    api: ApiClient
    runner: TaskRunner
    #: Paid calls in flight to it from this process (0: only ``CAPSOLVER_CONCURRENCY``) and
    #: from the fleet (0: no cap of its own).
    concurrency: int = 0
    fleet_concurrency: int = 0


@dataclass
class Sending:
    """One task on its way: whether a call may have created it (then it is never paid again
    on another service), whether it is its service's probe, the services it failed on."""

    maybe_created: bool = False
    probe: bool = False
    tried: list[Route] = field(default_factory=list)


class RouteOpened(CaptchaSolveError):
    """Internal: the task's service went out while the task waited for its turn; it goes
    to the next one without a call (never seen by a request)."""


def note_sending(sending: Sending, exc: Exception) -> None:
    """Remember a failed call of a task that may have created it on the service."""
    if maybe_created(exc):
        sending.maybe_created = True


Attempt = Callable[[Route, Sending], Awaitable[CaptchaSolution]]


class Routes(Protocol):
    """The services a cloud reader pays, and what their failures mean for the crawl."""

    #: Every route, the preferred first.
    all: list[Route]

    @property
    def preferred(self) -> Route: ...

    def named(self, name: str) -> Route:
        """The route of ``name`` (a :attr:`CaptchaSolution.provider`), else the preferred."""
        ...

    async def pay(self, attempt: Attempt) -> CaptchaSolution:
        """``attempt(route, sending)`` on the routes this policy chooses, until one answers
        or the error is the request's."""
        ...

    def slot(self, route: Route) -> AbstractAsyncContextManager[None]:
        """``async with routes.slot(route):`` held for one paid call to ``route``."""
        ...

    def calling(self, route: Route) -> None:
        """One createTask call goes to ``route`` now."""
        ...

    def still_wanted(self, route: Route, sending: Sending) -> None:
        """Raise :class:`RouteOpened` when the task, whose turn to call ``route`` has come,
        should rather go to another service."""
        ...

    async def blocked(
        self, route: Route, exc: CaptchaBlockedError, ticket: CallTicket | None
    ) -> None:
        """``route`` answered a call (``ticket``: its leave; None: a balance call) with a block."""
        ...

    async def account_error(self, route: Route, exc: CaptchaAccountError) -> None:
        """``route`` refused the account (bad key, no balance)."""
        ...

    def stopped(self, route: Route) -> bool:
        """A block of ``route`` is not waited out on it: the task moves on, or the crawl
        stopped."""
        ...

    def give_up(self, exc: Exception) -> bool:
        """No retry of ``exc`` on the same route: another one is asked at once."""
        ...

    def balances(self) -> bool:
        """Whether balances are kept per route (``capsolver/provider/<name>/balance_*``)."""
        ...


class _NoSlot:
    """The slot of a service without a cap of its own: nothing to wait for (one object for
    every call, as the single-service path is every crawl's)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


_NO_SLOT = _NoSlot()


class OneRoute:
    """One service: the crawl as before ``CAPSOLVER_PROVIDERS``. An account error closes the
    crawl, a block pauses all solving, failures are the request's."""

    def __init__(self, route: Route, account: Account) -> None:
        self.all = [route]
        self._account = account

    @property
    def preferred(self) -> Route:
        return self.all[0]

    def named(self, name: str) -> Route:
        return self.all[0]

    async def pay(self, attempt: Attempt) -> CaptchaSolution:
        return await attempt(self.all[0], Sending())

    def slot(self, route: Route) -> AbstractAsyncContextManager[None]:
        return _NO_SLOT

    def calling(self, route: Route) -> None:
        pass

    def still_wanted(self, route: Route, sending: Sending) -> None:
        pass

    async def blocked(
        self, route: Route, exc: CaptchaBlockedError, ticket: CallTicket | None
    ) -> None:
        await self._account.blocked(exc, ticket)

    async def account_error(self, route: Route, exc: CaptchaAccountError) -> None:
        self._account.fail(exc)

    def stopped(self, route: Route) -> bool:
        return self._account.stopped

    def give_up(self, exc: Exception) -> bool:
        return False

    def balances(self) -> bool:
        return False
