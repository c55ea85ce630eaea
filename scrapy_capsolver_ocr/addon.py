"""``ADDONS = {"scrapy_capsolver_ocr.Addon": 500}`` enables the plugin in one line."""

from __future__ import annotations

from scrapy.settings import BaseSettings

from .middleware import CaptchaSolverMiddleware
from .settings import mask_api_key

MIDDLEWARE_PRIORITY = 543


class Addon:
    """Enables :class:`CaptchaSolverMiddleware` and wraps ``CAPSOLVER_API_KEY`` so that a
    dump of the settings shows only its last characters."""

    def update_settings(self, settings: BaseSettings) -> None:
        settings.set_in_component_priority_dict(
            "DOWNLOADER_MIDDLEWARES", CaptchaSolverMiddleware, MIDDLEWARE_PRIORITY
        )
        mask_api_key(settings)
