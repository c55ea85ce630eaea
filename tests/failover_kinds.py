"""A second service for the failover tests and benchmark: only ``capsolver`` is registered
in ``PROVIDER_KINDS`` on its own, and ``CAPSOLVER_PROVIDERS`` lists each name once, so the
tests register ``backup``, a service speaking CapSolver's dialect (the CapSolver mock serves
it) under a name and key variable of its own."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scrapy_capsolver_ocr.api.capsolver import CapSolver
from scrapy_capsolver_ocr.api.provider import Provider, TaskOptions
from scrapy_capsolver_ocr.api.registry import PROVIDER_KINDS, ProviderKind

BACKUP = "backup"


class Backup(CapSolver):
    """CapSolver's dialect under another name; it cannot honour a module."""

    name = "Backup"

    def unsupported(self, options: TaskOptions) -> list[str]:
        return ["module"] if options.module else []


def _build(options: Mapping[str, Any], app_id: str | None) -> Provider:
    unknown = sorted(set(options) - {"region"})
    if unknown:
        raise ValueError(f"Backup takes only the option 'region', not {unknown}")
    return Backup(app_id=app_id)


BACKUP_KIND = ProviderKind(BACKUP, "https://backup.invalid", "BACKUP_API_KEY", _build)


def register() -> None:
    """Make ``backup`` a name ``CAPSOLVER_PROVIDERS`` accepts (in this process)."""
    PROVIDER_KINDS[BACKUP] = BACKUP_KIND


def unregister() -> None:
    PROVIDER_KINDS.pop(BACKUP, None)
