"""Anti-Captcha behind the provider seam (docs/providers.md, section 2): the shared dialect
of :mod:`.polled_service`, its options (``numeric`` 0-2, ``languagePool`` in the task), its
codes, ``reportIncorrectImageCaptcha``, and the website URL sent as ``websiteURL``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .polled_service import WORKER_OPTIONS, Dialect, OptionSpec, PolledService, error_table
from .provider import TaskOptions

NAME = "Anti-Captcha"
KEY_VARIABLE = "ANTICAPTCHA_API_KEY"
DEFAULT_URL = "https://api.anti-captcha.com"

ERRORS = error_table(
    NAME,
    KEY_VARIABLE,
    # Anti-Captcha charges for an unsolvable image: another try is another payment.
    unsolvable_retries=0,
    extra={
        "ERROR_IMAGE_TYPE_NOT_SUPPORTED": "ERROR_TOO_BIG_CAPTCHA_FILESIZE",
        "ERROR_BAD_DUPLICATES": "ERROR_CAPTCHA_UNSOLVABLE",
    },
)
#: Every code with a meaning of its own, Anti-Captcha's and the plugin's own checks.
ERROR_TABLE = ERRORS.rules

DIALECT = Dialect(
    NAME,
    "reportIncorrectImageCaptcha",
    {
        **WORKER_OPTIONS,
        # 0: no requirement, 1: digits only, 2: no digits.
        "numeric": OptionSpec(int, choices=(0, 1, 2)),
        # In the task, as the official SDK sends it (the createTask page puts it beside).
        "languagePool": OptionSpec(str, choices=("en", "rn")),
    },
    ERRORS,
)


class AntiCaptcha(PolledService):
    """Anti-Captcha's image task: ``websiteURL`` labels the spending statistics; no
    module and no score field."""

    def __init__(self, options: Mapping[str, Any] = {}) -> None:
        super().__init__(DIALECT, options)

    def plugin_fields(self, options: TaskOptions) -> dict[str, Any]:
        return {"websiteURL": options.website_url} if options.website_url else {}
