"""A learnt model file loaded for reading: onnxruntime only (no training packages).

:meth:`LearntModel.read` blocks for about a millisecond: call it from a worker thread or
process, never on the reactor thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..local.gate import Alphabet, Reading, read_best_path, softmax
from .ctc import labelling_probability
from .inputs import HEIGHT, network_input, padded
from .metadata import BEST_PATH, ModelInfo

Array = np.ndarray[Any, np.dtype[Any]]


def reading_session(content: bytes) -> Any:
    """An onnxruntime session over a model's bytes: one intra-op thread (the caller decides
    how many readers run at once), CPU only."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(content, options, providers=["CPUExecutionProvider"])


def best_path_groups(folded: Array) -> list[int]:
    """The classes the best path of ``folded`` (frames x classes, 0 the blank) emits: the
    top class of each frame, repeats merged, blanks dropped (CTC)."""
    groups: list[int] = []
    previous = 0
    for group in folded.argmax(axis=1).tolist():
        if group and group != previous:
            groups.append(group)
        previous = group
    return groups


def read_probabilities(probabilities: Array, alphabet: Alphabet) -> Reading:
    """The best path's text of ``probabilities`` (frames x classes) over ``alphabet``, with
    the probability of that text (ignoring case) summed over all its alignments to the
    frames as its confidence (see :func:`.ctc.labelling_probability`). The product of each
    frame's top probability, the local engines' measure, was overconfident on wrong
    readings of a learnt model: on 1,274 fresh claptcha captchas of a 4,000-label model it
    answered 49 % at 97 % precision where this answers 72 % (docs/learning.md)."""
    reading = read_best_path(probabilities, alphabet)
    if not reading.text:
        return reading
    folded = alphabet.fold(probabilities)
    return Reading(reading.text, labelling_probability(folded, best_path_groups(folded)))


@dataclass(frozen=True)
class _Parts:
    session: Any
    info: ModelInfo
    alphabet: Alphabet


class LearntModel:
    """A site's learnt reader: its file, its metadata, one onnxruntime session (each read
    runs in the calling thread alone; onnxruntime lets several threads read at once)."""

    def __init__(self, path: Path, content: bytes) -> None:
        """The model in ``content`` (the bytes of ``path``). Raises ValueError naming the file
        for anything that is not a learnt model this version reads."""
        try:
            session = reading_session(content)
        except Exception as exc:  # onnxruntime raises its own exception types for bad files
            raise ValueError(
                f"{path} is not a learnt model: onnxruntime cannot load it ({exc})"
            ) from None
        try:
            info = ModelInfo.parse(session.get_modelmeta().custom_metadata_map)
        except ValueError as exc:
            raise ValueError(f"{path} is not a learnt model this version reads: {exc}") from None
        if info.input_height != HEIGHT:
            raise ValueError(
                f"{path} is not a learnt model this version reads: its input is "
                f"{info.input_height} pixels high, not {HEIGHT}"
            )
        self.path = path
        self._parts = _Parts(session, info, Alphabet(["", *info.alphabet]))
        self._input = session.get_inputs()[0].name

    @classmethod
    def load(cls, path: Path) -> LearntModel:
        """The model in the file ``path``. Raises ValueError naming the file when it cannot be
        read or is not a learnt model (a corrupt file, another ONNX model, a newer format)."""
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise ValueError(
                f"{path} cannot be read as a learnt model: {exc.strerror or exc}"
            ) from None
        return cls(path, content)

    @property
    def info(self) -> ModelInfo:
        return self._parts.info

    @property
    def version(self) -> int:
        return self._parts.info.version

    @property
    def site(self) -> str:
        return self._parts.info.site

    @property
    def threshold(self) -> float:
        return self._parts.info.threshold

    @property
    def alphabet(self) -> str:
        return self._parts.info.alphabet

    @property
    def heldout_accuracy(self) -> float:
        return self._parts.info.heldout_accuracy

    @property
    def coverage(self) -> float:
        return self._parts.info.coverage

    def logits(self, values: Array) -> Array:
        """The frames x classes logits of one network input (HEIGHT x width)."""
        image = padded(values, values.shape[1])[np.newaxis, np.newaxis]
        return self._parts.session.run(None, {self._input: image})[0][0]  # type: ignore[no-any-return]

    def read_input(self, values: Array) -> Reading:
        """The reading of one network input (see :func:`.inputs.network_input`)."""
        probabilities = softmax(self.logits(values))
        if self._parts.info.confidence == BEST_PATH:  # its threshold was chosen on that
            return read_best_path(probabilities, self._parts.alphabet)
        return read_probabilities(probabilities, self._parts.alphabet)

    def read(self, image: bytes, max_pixels: int | None = None) -> Reading:
        """The text of ``image`` and the model's confidence in it. Raises
        :class:`~..local.InvalidImageError` for bytes it cannot read as a captcha. Blocks."""
        return self.read_input(network_input(image, max_pixels))

    def __repr__(self) -> str:
        return f"<LearntModel {self.path} v{self.version} site={self.site!r}>"
