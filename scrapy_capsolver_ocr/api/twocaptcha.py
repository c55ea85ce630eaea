"""2Captcha's API v2 behind the provider seam (docs/providers.md, section 4): the shared
dialect of :mod:`.polled_service`, its options (``numeric`` 0-4, ``imgInstructions``,
``languagePool`` beside the task), its codes and ``reportIncorrect``. It has no field for
the plugin's module, score or website URL. Its task ids exceed 2**32: they are kept exact
as text and sent back as JSON integers."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import CaptchaTaskError
from .errors import ErrorRule
from .polled_service import (
    WORKER_OPTIONS,
    Dialect,
    OptionSpec,
    PolledService,
    error_table,
    task_refused,
)

NAME = "2Captcha"
KEY_VARIABLE = "TWOCAPTCHA_API_KEY"
DEFAULT_URL = "https://api.2captcha.com"

ERRORS = error_table(
    NAME,
    KEY_VARIABLE,
    # 2Captcha returns the price of an unsolvable image: one more try costs nothing more.
    unsolvable_retries=1,
    extra={
        "ERROR_IMAGE_TYPE_NOT_SUPPORTED": "ERROR_TOO_BIG_CAPTCHA_FILESIZE",
        "ERROR_BAD_DUPLICATES": "ERROR_CAPTCHA_UNSOLVABLE",
        "ERROR_TASK_ABSENT": task_refused(NAME),
        "ERROR_TASK_NOT_SUPPORTED": task_refused(NAME),
        "ERROR_REPORT_NOT_RECORDED": ErrorRule(
            CaptchaTaskError, 0, "the report was not recorded (too many complaints lately)"
        ),
    },
)
#: Every code with a meaning of its own, 2Captcha's and the plugin's own checks.
ERROR_TABLE = ERRORS.rules

DIALECT = Dialect(
    NAME,
    "reportIncorrect",
    {
        **WORKER_OPTIONS,
        # 0: none, 1: digits only, 2: letters only, 3: digits or letters, 4: both.
        "numeric": OptionSpec(int, choices=(0, 1, 2, 3, 4)),
        # The base64 of an image of instructions shown to the workers.
        "imgInstructions": OptionSpec(str),
        "languagePool": OptionSpec(str, choices=("en", "rn"), top_level=True),
    },
    ERRORS,
)


class TwoCaptcha(PolledService):
    """2Captcha's image task through API v2."""

    def __init__(self, options: Mapping[str, Any] = {}) -> None:
        super().__init__(DIALECT, options)
