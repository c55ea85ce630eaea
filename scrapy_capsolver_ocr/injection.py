"""Moved to :mod:`scrapy_capsolver_ocr.integration.injection`; this path keeps working for
the answers pickled into JOBDIR queues by earlier versions."""

from .integration.injection import BoundAnswer

__all__ = ["BoundAnswer"]
