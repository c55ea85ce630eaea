"""Training a site's reader from its accepted answers: labels in, a model file out when
the new model is good enough to use and better than the one it would replace.

CPU-heavy and blocking: run it in a child process, never on the reactor thread. It starts
no thread of its own; numpy's BLAS uses what ``OMP_NUM_THREADS`` / ``OPENBLAS_NUM_THREADS``
allow. The network (:mod:`.network`) is trained with autograd and Adam on the CTC loss
(:mod:`.ctc`); the held-out labels (the newest 20 %, see :func:`_split`) are read
through the very ONNX bytes that would be written, so the threshold is chosen on what the
crawl will read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..local.gate import Alphabet, read_best_path, softmax
from . import require_learn
from .ctc import ctc_loss
from .inputs import BACKGROUND, HEIGHT, batch, network_input
from .labels import LOCAL
from .metadata import ModelInfo
from .model import LearntModel
from .network import Parameters, Statistics, folded, forward, initial_parameters
from .onnx_file import onnx_bytes
from .threshold import HeldoutScore, promotion, scored

Array = np.ndarray[Any, np.dtype[Any]]

#: Fewer labels than this cannot be split into training and held-out sets worth the name.
MIN_LABELS = 10
BATCH_SIZE = 32
LEARNING_RATE = 3e-3
#: Without ``epochs``, train for about this many images (epochs = this / training labels,
#: within EPOCH_RANGE): small label sets need more passes over them to learn anything.
#: 48,000 (20 epochs for 3,000 labels, 40 for 1,000) rather than 24,000: on claptcha
#: captchas it raised held-out accuracy from 75 to 84 % at 3,000 labels and from 73 to 77 %
#: at 1,000, and the share answered at 97 % precision with it (docs/learning.md).
IMAGES_SEEN = 48_000
EPOCH_RANGE = (8, 40)


@dataclass(frozen=True)
class Label:
    """One accepted answer. ``source``: who read it (the label store's ``cloud`` or
    ``local``; None when unknown, as for a folder of labelled files)."""

    image: bytes
    text: str
    source: str | None = None

    @property
    def judges_precision(self) -> bool:
        """Whether the label may judge the precision of a threshold: not one a local reader
        (perhaps the very model to beat) answered itself, since only its right answers
        became labels (a refused answer is none) and its wrong ones are missing."""
        return self.source != LOCAL


@dataclass(frozen=True)
class TrainingProgress:
    """Where training is, after each epoch."""

    epoch: int
    epochs: int
    loss: float
    heldout_accuracy: float
    seconds: float


@dataclass(frozen=True)
class TrainingReport:
    """What a training run gave. ``promoted``: the model file was written (it beat the
    previous model and reached the precision floor); ``threshold`` None: no threshold
    reached ``min_precision`` with any coverage (not promoted)."""

    promoted: bool
    version: int
    labels: int
    heldout_accuracy: float
    threshold: float | None
    coverage: float
    precision: float
    seconds: float
    reason: str
    #: Labels left out because their image could not be read.
    skipped: int = 0
    #: The model file's size in bytes (written or not).
    model_bytes: int = 0
    parameters: int = 0
    epochs: int = 0


def default_epochs(training_labels: int) -> int:
    low, high = EPOCH_RANGE
    return min(high, max(low, round(IMAGES_SEEN / max(training_labels, 1))))


def _validate(labels: Sequence[Label], heldout_share: float, min_precision: float) -> None:
    if not 0.05 <= heldout_share <= 0.5:
        raise ValueError(f"heldout_share must be from 0.05 to 0.5, not {heldout_share!r}")
    if not 0.0 < min_precision <= 1.0:
        raise ValueError(f"min_precision must be above 0 and at most 1, not {min_precision!r}")
    for index, label in enumerate(labels):
        if not label.text or label.text != label.text.strip():
            raise ValueError(
                f"label {index} has no answer text, or spaces around it: {label.text!r}"
            )


def _split(count: int, share: float) -> tuple[list[int], list[int]]:
    """The indices to train on and to hold out. Labels come oldest first: the held-out ones
    are the newest ``share``, so a previous model, trained the same way on fewer labels,
    never saw them. They are held out whoever read them: the captchas a local reader
    answered are part of what the crawl will meet, so coverage is measured on all of them
    (precision only on those that may judge it, :attr:`Label.judges_precision`)."""
    held = max(1, round(count * share))
    return list(range(count - held)), list(range(count - held, count))


def _shifted(images: Array, random_state: np.random.Generator) -> Array:
    """Each image moved by up to 2 pixels each way, background filling in: the same
    captcha drawn a little elsewhere, so the network learns glyphs, not places."""
    out = np.full_like(images, BACKGROUND)
    _, height, width, _ = images.shape
    for index, (down, right) in enumerate(random_state.integers(-2, 3, size=(len(images), 2))):
        source = images[
            index, max(0, -down) : height - max(0, down), max(0, -right) : width - max(0, right)
        ]
        out[
            index,
            max(0, down) : max(0, down) + source.shape[0],
            max(0, right) : max(0, right) + source.shape[1],
        ] = source
    return out


class _Adam:
    def __init__(self, parameters: Parameters) -> None:
        self.step = 0
        self.first = {name: np.zeros_like(values) for name, values in parameters.items()}
        self.second = {name: np.zeros_like(values) for name, values in parameters.items()}

    def update(self, parameters: Parameters, gradients: Parameters, rate: float) -> None:
        self.step += 1
        for name, gradient in gradients.items():
            self.first[name] = 0.9 * self.first[name] + 0.1 * gradient
            self.second[name] = 0.999 * self.second[name] + 0.001 * gradient * gradient
            first = self.first[name] / (1 - 0.9**self.step)
            second = self.second[name] / (1 - 0.999**self.step)
            parameters[name] = (parameters[name] - rate * first / (np.sqrt(second) + 1e-8)).astype(
                np.float32
            )


def _accuracy(
    parameters: Parameters, inputs: Sequence[Array], answers: Sequence[str], alphabet: str
) -> float:
    """The share of ``inputs`` the numpy network reads as their answers (progress only: the
    figures that decide are read through the ONNX file)."""
    letters = Alphabet(["", *alphabet])
    readings = []
    for start in range(0, len(inputs), 64):
        for logits in forward(parameters, batch(inputs[start : start + 64])):
            readings.append(read_best_path(softmax(logits), letters))
    return sum(mark.right for mark in scored(readings, answers)) / len(inputs) if inputs else 0.0


#: Images the normalisation statistics of the reading network are taken on.
STATISTICS_IMAGES = 256


def reading_parameters(parameters: Parameters, inputs: Sequence[Array]) -> Parameters:
    """The trained ``parameters`` with their normalisation folded in, at the mean and
    variance over (up to STATISTICS_IMAGES of) the training ``inputs``."""
    statistics: Statistics = {}
    forward(parameters, batch(inputs[:STATISTICS_IMAGES]), statistics=statistics)
    return folded(parameters, statistics)


def fit(
    inputs: Sequence[Array],
    targets: Sequence[list[int]],
    classes: int,
    epochs: int,
    seed: int,
    after_epoch: Callable[[int, float, Parameters], None] | None = None,
) -> Parameters:
    """The network's parameters trained on ``inputs`` (network inputs) towards ``targets``
    (class indices, 1-based) for ``epochs`` passes, with a cosine-decayed learning rate;
    their normalisation not folded in yet (see :func:`reading_parameters`)."""
    import autograd.numpy as anp
    from autograd import value_and_grad

    def loss(parameters: Parameters, images: Array, labels: list[list[int]]) -> Any:
        return ctc_loss(forward(parameters, images, anp), labels)

    loss_and_gradient = value_and_grad(loss)
    parameters = initial_parameters(classes, seed)
    adam = _Adam(parameters)
    random_state = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(inputs) / BATCH_SIZE)
    total = max(1, epochs * steps_per_epoch)
    for epoch in range(1, epochs + 1):
        order = random_state.permutation(len(inputs))
        losses = []
        for start in range(0, len(order), BATCH_SIZE):
            chosen = order[start : start + BATCH_SIZE]
            images = _shifted(batch([inputs[i] for i in chosen]), random_state)
            value, gradients = loss_and_gradient(parameters, images, [targets[i] for i in chosen])
            rate = LEARNING_RATE * 0.5 * (1 + math.cos(math.pi * adam.step / total))
            adam.update(parameters, gradients, rate)
            losses.append(float(value))
        if after_epoch is not None:
            after_epoch(epoch, float(np.mean(losses)), parameters)
    return parameters


def train_model(
    labels: Sequence[Label],
    output: Path,
    *,
    site: str = "",
    previous: Path | None = None,
    progress: Callable[[TrainingProgress], None] | None = None,
    seed: int = 0,
    min_precision: float = 0.97,
    heldout_share: float = 0.2,
    epochs: int | None = None,
) -> TrainingReport:
    """Train a reader on ``labels`` (oldest first) and write it to ``output`` if it is
    promoted: when it reaches ``min_precision`` at some confidence threshold with non-zero
    coverage on the held-out labels, and reads them better than ``previous`` (a model
    file) does at the threshold it reads with. Labels whose image cannot be read are
    skipped (counted in the report). Raises ValueError for too few labels, a label without
    text, bad arguments or an unreadable ``previous``; :class:`~. LearnUnavailableError`
    without the ``learn`` extra. Blocks for minutes."""
    require_learn("Training a learnt model")
    began = time.monotonic()
    _validate(labels, heldout_share, min_precision)
    old = LearntModel.load(previous) if previous is not None else None
    inputs: list[Array] = []
    answers: list[str] = []
    judges: list[bool] = []
    for label in labels:
        try:
            inputs.append(network_input(label.image))
        except ValueError:  # InvalidImageError: the store counts these too
            continue
        answers.append(label.text)
        judges.append(label.judges_precision)
    skipped = len(labels) - len(inputs)
    if len(inputs) < MIN_LABELS:
        raise ValueError(f"{len(inputs)} readable labels; training needs at least {MIN_LABELS}")
    alphabet = "".join(sorted({char for answer in answers for char in answer}))
    targets = [[alphabet.index(char) + 1 for char in answer] for answer in answers]
    train, heldout = _split(len(inputs), heldout_share)
    epochs = epochs if epochs is not None else default_epochs(len(train))
    if epochs < 1:
        raise ValueError(f"epochs must be at least 1, not {epochs}")
    heldout_inputs = [inputs[i] for i in heldout]
    heldout_answers = [answers[i] for i in heldout]

    def after_epoch(epoch: int, loss: float, parameters: Parameters) -> None:
        if progress is not None:
            reading = reading_parameters(parameters, train_inputs)
            accuracy = _accuracy(reading, heldout_inputs, heldout_answers, alphabet)
            progress(TrainingProgress(epoch, epochs, loss, accuracy, time.monotonic() - began))

    train_inputs = [inputs[i] for i in train]
    trained = fit(
        train_inputs, [targets[i] for i in train], len(alphabet) + 1, epochs, seed, after_epoch
    )
    parameters = reading_parameters(trained, train_inputs)
    version = (old.version if old is not None else 0) + 1
    info = ModelInfo(version, site, alphabet, 1.0, 0.0, 0.0, 0.0, len(inputs), HEIGHT)
    # Read the held-out labels through the ONNX bytes the crawl would read with.
    reader = LearntModel(output, onnx_bytes(parameters, info))
    score = HeldoutScore.judged(
        scored([reader.read_input(values) for values in heldout_inputs], heldout_answers),
        [judges[i] for i in heldout],
        min_precision,
    )
    previous_score = None
    if old is not None:
        # At the threshold it reads with, not one chosen again on these labels: those it
        # answered are here only where it was right (a refused answer is no label), so a
        # threshold chosen on them would flatter it.
        previous_score = HeldoutScore.at(
            scored([old.read_input(values) for values in heldout_inputs], heldout_answers),
            old.threshold,
        )
    promoted, reason = promotion(score, previous_score, min_precision)
    info = ModelInfo(
        version,
        site,
        alphabet,
        score.threshold if score.threshold is not None else 1.0,
        score.accuracy,
        score.coverage,
        score.precision,
        len(inputs),
        HEIGHT,
    )
    content = onnx_bytes(parameters, info)
    if promoted:
        output.parent.mkdir(parents=True, exist_ok=True)
        partial = output.with_name(output.name + ".partial")
        partial.write_bytes(content)
        partial.replace(output)  # readers never see half a file
    return TrainingReport(
        promoted=promoted,
        version=version,
        labels=len(inputs),
        heldout_accuracy=score.accuracy,
        threshold=score.threshold,
        coverage=score.coverage,
        precision=score.precision,
        seconds=time.monotonic() - began,
        reason=reason,
        skipped=skipped,
        model_bytes=len(content),
        parameters=sum(int(v.size) for v in parameters.values()),
        epochs=epochs,
    )
