"""Every use of another project's internals, in one place.

Each function below reaches one attribute or method that Scrapy or Twisted does not
document, because no public API does the job. Each says which internal it uses, why, what
happens when the internal is gone (the plugin degrades, it does not break), and which public
API would replace it. ``tests/test_compat.py`` checks each one against the installed Scrapy
and Twisted and fails with a message naming the internal when one moves, on the newest
Scrapy and on the oldest supported (2.13).

The version seam for Scrapy's reactorless mode (2.15+) is here too.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from scrapy.crawler import Crawler
    from scrapy.settings import BaseSettings
    from twisted.web.http import HTTPChannel

Channel = TypeVar("Channel", bound="type[HTTPChannel]")

#: The method Twisted's HTTPChannel calls to refuse a request it cannot parse.
TWISTED_REFUSAL = "_respondToBadRequestAndDisconnect"


def _engine(crawler: Crawler) -> Any:
    """The crawl's engine, or None before it exists (Scrapy 2.19 raises then, 2.13 gives
    None)."""
    try:
        return crawler.engine
    except RuntimeError:
        return None


def is_reactorless() -> bool:
    """True when this crawl runs in Scrapy's reactorless mode (``TWISTED_REACTOR_ENABLED =
    False``), by Scrapy's own :func:`scrapy.utils.reactorless.is_reactorless` (2.15+).

    Scrapy before 2.15 has no such mode: always False there. The helper reads the running
    state, not the setting: it cannot tell before the reactor or the event loop runs (its
    ``is_asyncio_available()`` raises then), so False too; the setting is checked besides.
    """
    try:
        from scrapy.utils.reactorless import is_reactorless as scrapy_is_reactorless
    except ImportError:  # Scrapy < 2.15
        return False
    try:
        return scrapy_is_reactorless()
    except RuntimeError:  # neither a reactor nor a running event loop yet
        return False


def wake_engine(crawler: Crawler) -> bool:
    """Make Scrapy's engine take its next scheduled requests now; False when it cannot.

    Internal: ``ExecutionEngine._slot.nextcall.schedule()`` (Scrapy 2.13 .. 2.19).
    Why: a request slot lent to a waiting solve (``RequestSlots``) is used only when a
    download ends or on the engine's 5 s heartbeat; this starts a page on it at once.
    Without it: the slot is used on the next heartbeat, up to 5 s later.
    Public replacement: none yet; an ``ExecutionEngine`` method that schedules the next
    call (what ``engine.crawl()`` does after enqueuing) would be it.
    """
    slot = getattr(_engine(crawler), "_slot", None)
    nextcall = getattr(slot, "nextcall", None)
    schedule = getattr(nextcall, "schedule", None)
    if not callable(schedule):
        return False
    schedule()
    return True


def change_request_limit(crawler: Crawler, by: int) -> bool:
    """Change by ``by`` how many requests Scrapy's downloader holds at once, for this crawl
    only; False (and nothing changed) before the engine exists or when there is no limit.

    Internal: ``Downloader.total_concurrency``, the running copy of ``CONCURRENT_REQUESTS``
    that ``Downloader.needs_backout()`` compares with ``len(Downloader.active)``. Its name is
    public but it is not documented, and an assignment to a renamed attribute would fail
    silently: hence the check that it exists.
    Why: a request waiting for its captcha answer holds one of those slots for the whole
    solve (``RequestSlots`` lends one to each solve beyond ``CAPSOLVER_CONCURRENCY``).
    Without it: no slot is lent; solves waiting their turn hold the pages' slots.
    Public replacement: none; ``CONCURRENT_REQUESTS`` is read once, when the downloader is
    built. The throttler proposed in scrapy/scrapy#6931 comes with a run-time API for it.
    """
    downloader = getattr(_engine(crawler), "downloader", None)
    limit = getattr(downloader, "total_concurrency", None)
    if not isinstance(limit, int) or limit <= 0:
        return False
    downloader.total_concurrency = limit + by  # type: ignore[union-attr]
    return True


def replace_frozen_setting(
    settings: BaseSettings, name: str, value: Any, priority: int | str
) -> None:
    """Set ``name`` in ``settings`` even once Scrapy has frozen them.

    Internal: the ``BaseSettings.frozen`` flag, set to False for the one change and back.
    Scrapy documents frozen settings as immutable and has no way to change one.
    Why: the middleware enabled alone (``DOWNLOADER_MIDDLEWARES``, without the add-on) sees
    the settings only once they are frozen, and wraps ``CAPSOLVER_API_KEY`` so that a dump
    of the settings does not show it. The value keeps its meaning: only how it prints.
    With the add-on, the key is wrapped before Scrapy freezes the settings, through public
    API only (``update_settings``).
    Public replacement: none for a component that is not an add-on (asked for in
    scrapy/scrapy#3663); the add-on is the public way.
    """
    frozen = settings.frozen
    settings.frozen = False
    try:
        settings.set(name, value, priority=priority)
    finally:
        settings.frozen = frozen


def answer_malformed_requests(refuse: Callable[[Any], None]) -> Callable[[Channel], Channel]:
    """Class decorator for a :class:`twisted.web.http.HTTPChannel` subclass: Twisted's own
    refusals of a request it cannot parse (a malformed request line or header, a line or all
    headers over 16 KB, a bad ``Content-Length`` or chunk) call ``refuse(channel)`` instead
    of writing Twisted's bare ``400 Bad Request``.

    Internal: ``HTTPChannel._respondToBadRequestAndDisconnect``, which every one of those
    refusals calls (Twisted 23.10 .. 26.10).
    Why: the local OCR server answers every error in CapSolver's JSON, so that clients (the
    plugin, CapSolver's SDKs) read an error instead of failing on a body that is not JSON.
    Without it: such requests get Twisted's bare 400 with no body.
    Public replacement: none; an ``HTTPChannel`` hook (or ``Site`` option) for the
    answer to a malformed request would be it.
    """

    def decorate(channel: Channel) -> Channel:
        def respond(self: Any) -> None:
            refuse(self)

        respond.__name__ = TWISTED_REFUSAL
        setattr(channel, TWISTED_REFUSAL, respond)
        return channel

    return decorate
