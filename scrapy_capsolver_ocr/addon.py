"""``ADDONS = {"scrapy_capsolver_ocr.Addon": 500}`` enables the plugin in one line."""

from __future__ import annotations

from scrapy.settings import BaseSettings

from .middleware import CaptchaSolverMiddleware
from .settings import ApiKey

MIDDLEWARE_PRIORITY = 543


class Addon:
    """Enables :class:`CaptchaSolverMiddleware` and wraps ``CAPSOLVER_API_KEY`` so that a
    dump of the settings shows only its last characters."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", CaptchaSolverMiddleware, MIDDLEWARE_PRIORITY
        )
        key = settings.get("CAPSOLVER_API_KEY")
        if isinstance(key, str) and key.strip():  # a blank key is refused at start, as is
            priority = settings.getpriority("CAPSOLVER_API_KEY")
            settings.set("CAPSOLVER_API_KEY", ApiKey(key.strip()), priority=priority or "addon")
