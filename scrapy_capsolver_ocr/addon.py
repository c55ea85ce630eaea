"""Moved to :mod:`scrapy_capsolver_ocr.integration.addon`; this path keeps working."""

from .integration.addon import Addon

__all__ = ["Addon"]
