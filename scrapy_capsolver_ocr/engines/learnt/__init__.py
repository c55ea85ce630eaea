"""A reader learnt from a site's own accepted answers: a small convolutional
network with a CTC loss, trained on this machine's CPU and read through onnxruntime.

- :mod:`.inputs`: the image as the network takes it, the same for training and reading.
- :mod:`.ctc`: the CTC loss and its gradient (numpy).
- :mod:`.network`: the network's layers, its parameters and its forward pass (numpy).
- :mod:`.onnx_file`: the network written as one ONNX file carrying its metadata.
- :mod:`.threshold`: held-out readings scored, and the confidence threshold chosen on them.
- :mod:`.training`: :func:`~.training.train_model`, labels in, a promoted model file out.
- :mod:`.model`: :class:`~.model.LearntModel`, a model file loaded and read.

Training needs the optional ``learn`` extra (autograd and onnx besides the ``ocr`` extra's
numpy, onnxruntime and Pillow); this module itself imports nothing heavy.
"""

from __future__ import annotations

import importlib.util

LEARN_INSTALL_HINT = 'pip install "scrapy-capsolver-ocr[learn]"'


class LearnUnavailableError(RuntimeError):
    """A package of the optional ``learn`` extra is not installed."""


def require_learn(needed_by: str, packages: tuple[str, ...] = ("autograd", "onnx")) -> None:
    """Raise :class:`LearnUnavailableError`, naming the extra, when one of ``packages``
    cannot be imported. Cheap: the packages are found, not imported."""
    missing = []
    for package in packages:
        try:
            found = importlib.util.find_spec(package) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(package)
    if missing:
        raise LearnUnavailableError(
            f"{needed_by} needs {', '.join(missing)}, optional dependencies: {LEARN_INSTALL_HINT}"
        )
