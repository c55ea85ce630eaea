"""``ADDONS = {"scrapy_capsolver_ocr.Addon": 500}`` enables the plugin in one line."""

from __future__ import annotations

from scrapy.settings import BaseSettings

from ..settings import mask_api_key, refuse_reactorless
from .middleware import CaptchaSolverMiddleware

MIDDLEWARE_PRIORITY = 543


class Addon:
    """Enables :class:`CaptchaSolverMiddleware`, wraps ``CAPSOLVER_API_KEY`` so that a dump
    of the settings shows only its last characters, and gives the solves request slots of
    their own. All of it before Scrapy freezes the settings, through public API only."""

    def update_settings(self, settings: BaseSettings) -> None:
        if _enabled(settings):
            # Before Scrapy builds anything for a crawl that could not solve a captcha.
            refuse_reactorless(settings)
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", CaptchaSolverMiddleware, MIDDLEWARE_PRIORITY
        )
        mask_api_key(settings)
        add_request_slots(settings)


def _enabled(settings: BaseSettings) -> bool:
    try:
        return settings.getbool("CAPSOLVER_ENABLED", True)
    except ValueError:
        return True  # the settings' checks refuse the bad value at start, naming it


def add_request_slots(settings: BaseSettings) -> None:
    """Raise ``CONCURRENT_REQUESTS`` by ``CAPSOLVER_CONCURRENCY``: a request waiting for its
    captcha answer holds one of Scrapy's request slots until the answer comes, so without
    room of their own, slow solves would stop every page download. Off with
    ``CAPSOLVER_ADD_REQUEST_SLOTS = False`` (or ``CAPSOLVER_ENABLED = False``)."""
    try:
        enabled = settings.getbool("CAPSOLVER_ENABLED", True)
        wanted = settings.getbool("CAPSOLVER_ADD_REQUEST_SLOTS", True)
        solves = settings.getint("CAPSOLVER_CONCURRENCY", 16)
        requests = settings.getint("CONCURRENT_REQUESTS")
    except (TypeError, ValueError):
        return  # the settings' checks refuse the bad value at start, naming it
    if not enabled or not wanted or solves <= 0 or requests <= 0:
        return
    # At the priority the value has, so that it wins over it whatever its origin.
    priority = settings.getpriority("CONCURRENT_REQUESTS") or "addon"
    settings.set("CONCURRENT_REQUESTS", requests + solves, priority=priority)
