"""Reading captchas on this machine (local-first solving), with a confidence that knows when
it does not know.

- :mod:`.gate`: the confidence maths, pure functions on the model's probabilities.
- :mod:`.engine`: ddddocr's two models (the second asked when the first is unsure), an
  onnxruntime session of each per worker thread.
- :mod:`.workers`: the thread pool the engine reads in, off the reactor thread.
- :mod:`.formats`: the length and characters expected of a site's captchas, given or learnt.
- :mod:`.reader`: :class:`~.reader.LocalReader`, the reader the solver asks before CapSolver.
- :mod:`.calibration`: ``scrapy-capsolver-ocr calibrate``, choosing the confidence threshold.

This module itself imports nothing heavy: ddddocr (with numpy and onnxruntime) is the
optional ``ocr`` extra, imported only when local reading is switched on.
"""

from __future__ import annotations

import importlib.util

OCR_INSTALL_HINT = 'pip install "scrapy-capsolver-ocr[ocr]"'


class OcrUnavailableError(RuntimeError):
    """ddddocr, the optional OCR dependency, is not installed."""


class InvalidImageError(ValueError):
    """The engine cannot read these bytes as an image of a captcha."""


def require_ddddocr(needed_by: str) -> None:
    """Raise :class:`OcrUnavailableError`, naming the extra to install, when ddddocr cannot
    be imported. Cheap: the package is found, not imported."""
    try:
        found = importlib.util.find_spec("ddddocr") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise OcrUnavailableError(
            f"{needed_by} needs ddddocr, an optional dependency: {OCR_INSTALL_HINT}"
        )
