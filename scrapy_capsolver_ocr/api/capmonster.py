"""CapMonster Cloud behind the provider seam (docs/providers.md, section 3): Anti-Captcha's
dialect (:mod:`.polled_service`) with fewer options (``case``, ``numeric`` 0-1, ``math``), the
plugin's module sent as ``capMonsterModule`` when it is one of CapMonster's module names and
its score as ``recognizingThreshold`` (percent), its codes, ``reportIncorrectImageCaptcha``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .polled_service import (
    WAIT,
    WORKER_OPTIONS,
    Dialect,
    OptionSpec,
    PolledService,
    error_table,
    task_refused,
)
from .provider import TaskOptions

NAME = "CapMonster Cloud"
KEY_VARIABLE = "CAPMONSTER_API_KEY"
DEFAULT_URL = "https://api.capmonster.cloud"
#: The module CapMonster computes expressions with: ``math`` must not be sent with it.
MATH_MODULE = "captcha_math"
#: CapMonster's module names (its module-name page); CapSolver's names are another set.
MODULES = (
    "amazon",
    "apple",
    "botdetect",
    "facebook",
    "gmx",
    "google",
    "hotmail",
    "mailru",
    "okeng",
    "okrus",
    "partiallyblur",
    "ramblerrus",
    "ramblerrusnew",
    "solvemedia",
    "steam",
    "vk",
    "whatsapp",
    "wikimedia_paddle_ensemble",
    "yandex",
    "yandexnew",
    "yandexwave",
    MATH_MODULE,
    "sat",
    "universal",
)

ERRORS = error_table(
    NAME,
    KEY_VARIABLE,
    # Not charged below recognizingThreshold; CapMonster states nothing more.
    unsolvable_retries=1,
    extra={
        "ERROR_TASK_NOT_SUPPORTED": task_refused(NAME),
        "ERROR_TASK_ABSENT": task_refused(NAME),
        "ERROR_DOMAIN_NOT_ALLOWED": task_refused(NAME),
        "ERROR_IP_BANNED": "ERROR_IP_BLOCKED",
        "WRONG_CAPTCHA_ID": "ERROR_NO_SUCH_CAPCHA_ID",
        # Both ask a poller to slow down: getTaskResult is asked again, never createTask.
        "ERROR_TOO_MUCH_REQUESTS": WAIT,
        "CAPTCHA_NOT_READY": WAIT,
    },
)
#: Every code with a meaning of its own, CapMonster's and the plugin's own checks.
ERROR_TABLE = ERRORS.rules

DIALECT = Dialect(
    NAME,
    "reportIncorrectImageCaptcha",
    {
        "case": WORKER_OPTIONS["case"],
        "math": WORKER_OPTIONS["math"],
        # 0: no requirement, 1: digits only.
        "numeric": OptionSpec(int, choices=(0, 1)),
        # The module for every task of this entry, unless a request names one of MODULES.
        "capMonsterModule": OptionSpec(str, choices=MODULES),
    },
    ERRORS,
)


class CapMonster(PolledService):
    """CapMonster Cloud's image task, spelled as its documentation spells it
    (``capMonsterModule``, ``case``; its Python SDK capitalises both)."""

    def __init__(self, options: Mapping[str, Any] = {}) -> None:
        super().__init__(DIALECT, options)
        if options.get("math") and options.get("capMonsterModule") == MATH_MODULE:
            raise ValueError(
                f"{NAME} options 'math' and 'capMonsterModule' {MATH_MODULE!r}: the module "
                "computes the expression itself; CapMonster asks not to send both"
            )

    def plugin_fields(self, options: TaskOptions) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if options.module in MODULES:
            fields["capMonsterModule"] = options.module
            if options.module == MATH_MODULE and "math" in self.options:
                fields["math"] = False
        if options.score is not None:
            fields["recognizingThreshold"] = round(options.score * 100)
        return fields

    def unsupported(self, options: TaskOptions) -> list[str]:
        # A module of another service's names is not sent: CapMonster would refuse it.
        return ["module"] if options.module is not None and options.module not in MODULES else []
