"""The solving services the cloud reader can pay, by the names ``CAPSOLVER_PROVIDERS`` uses.

Each :class:`ProviderKind` says where a service lives by default, which environment variable
holds its key when the setting gives none, and how its :class:`~.provider.Provider` is built
from the ``options`` of its entry (options it does not know are refused there, at start).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from . import anticaptcha, capmonster, twocaptcha
from .capsolver import CapSolver
from .provider import Provider


@dataclass(frozen=True)
class ProviderKind:
    """One service the plugin speaks."""

    #: The name in ``CAPSOLVER_PROVIDERS`` and in stats (``capsolver/provider/<name>/...``).
    name: str
    #: The base URL when the entry gives no ``api_url``.
    default_url: str
    #: The environment variable read for the key when the entry gives no ``api_key``.
    key_variable: str
    #: The provider, from the entry's ``options`` (checked: raises ``ValueError`` naming an
    #: option the service does not take) and the crawl's ``CAPSOLVER_APP_ID``.
    build: Callable[[Mapping[str, Any], str | None], Provider]


def _capsolver(options: Mapping[str, Any], app_id: str | None) -> Provider:
    if options:
        raise ValueError(f"CapSolver takes no options here, not {sorted(options)}")
    return CapSolver(app_id=app_id)


# CAPSOLVER_APP_ID is CapSolver's developer id: the other services have ids of their own.
def _anticaptcha(options: Mapping[str, Any], app_id: str | None) -> Provider:
    return anticaptcha.AntiCaptcha(options)


def _capmonster(options: Mapping[str, Any], app_id: str | None) -> Provider:
    return capmonster.CapMonster(options)


def _twocaptcha(options: Mapping[str, Any], app_id: str | None) -> Provider:
    return twocaptcha.TwoCaptcha(options)


#: Every service by name, in the order the documentation lists them.
PROVIDER_KINDS: dict[str, ProviderKind] = {
    "capsolver": ProviderKind(
        "capsolver", "https://api.capsolver.com", "CAPSOLVER_API_KEY", _capsolver
    ),
    "anticaptcha": ProviderKind(
        "anticaptcha", anticaptcha.DEFAULT_URL, anticaptcha.KEY_VARIABLE, _anticaptcha
    ),
    "capmonster": ProviderKind(
        "capmonster", capmonster.DEFAULT_URL, capmonster.KEY_VARIABLE, _capmonster
    ),
    "2captcha": ProviderKind(
        "2captcha", twocaptcha.DEFAULT_URL, twocaptcha.KEY_VARIABLE, _twocaptcha
    ),
}
