"""``scrapy-capsolver-ocr calibrate DIR``: how sure the local engine must be on a site's own
captchas, measured on labelled images.

Each image's answer is in its file name: the stem, or what follows its last ``_``
(``AB12.png``, ``0042_AB12.png``). Every image is read as the crawl would read it once the
site's format is learnt: over the characters of the labels (or ``--charset``), refusing
lengths no label has (or other than ``--length``). Answers are compared ignoring case, as
sites do. For each threshold the report gives the share of images answered locally and how
many of those were right, and the lowest threshold from which every higher one keeps at
least ``--precision`` of the local answers right.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ...images import image_type
from .gate import Reading, passes

#: Thresholds shown in the table; the lowest one reaching the precision is searched on a
#: finer grid.
SHOWN = (0.0, 0.3, 0.5, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 0.99)
STEP = 0.01


class CalibrationError(Exception):
    """Nothing to calibrate on: a message for the user."""


@dataclass(frozen=True)
class Sample:
    """One labelled image and what the engine read."""

    name: str
    label: str
    reading: Reading

    @property
    def right(self) -> bool:
        return self.reading.text.casefold() == self.label.casefold()


@dataclass(frozen=True)
class Row:
    """The outcome of one threshold."""

    threshold: float
    total: int
    answered: int
    right: int

    @property
    def coverage(self) -> float:
        return self.answered / self.total if self.total else 0.0

    @property
    def precision(self) -> float:
        return self.right / self.answered if self.answered else math.nan


def label_of(path: Path) -> str:
    return path.stem.rpartition("_")[2]


def labelled_images(directory: Path) -> list[tuple[str, str, bytes]]:
    """``(file name, label, image bytes)`` of every image in ``directory`` (not recursive),
    in name order. Raises :class:`CalibrationError` when there is none."""
    if not directory.is_dir():
        raise CalibrationError(f"{directory} is not a directory")
    found = []
    for path in sorted(directory.iterdir()):
        if not path.is_file() or not label_of(path):
            continue
        body = path.read_bytes()
        if image_type(body) is not None:
            found.append((path.name, label_of(path), body))
    if not found:
        raise CalibrationError(
            f"no labelled images in {directory}: save each captcha as ANSWER.png "
            "(or NUMBER_ANSWER.png)"
        )
    return found


def expected_format(
    labels: Iterable[str], length: int | None, charset: str | None
) -> tuple[frozenset[int], str]:
    """The lengths and characters to read with: given, else those of the labels."""
    labels = list(labels)
    lengths = frozenset([length]) if length is not None else frozenset(map(len, labels))
    chars = charset if charset is not None else "".join(sorted(set("".join(labels))))
    return lengths, chars


def read_samples(
    images: Sequence[tuple[str, str, bytes]],
    read: Callable[[bytes, str], Reading],
    chars: str,
    workers: int,
) -> list[Sample]:
    """Every image read (``read(body, chars)``), ``workers`` at a time."""
    with ThreadPoolExecutor(workers) as pool:
        readings = list(pool.map(lambda image: read(image[2], chars), images))
    return [
        Sample(name, label, reading)
        for (name, label, _), reading in zip(images, readings, strict=True)
    ]


def row(samples: Sequence[Sample], lengths: frozenset[int], threshold: float) -> Row:
    answered = [s for s in samples if passes(s.reading, lengths, threshold)]
    return Row(threshold, len(samples), len(answered), sum(s.right for s in answered))


def lowest_threshold(
    samples: Sequence[Sample], lengths: frozenset[int], precision: float
) -> Row | None:
    """The row of the lowest threshold from which every higher one that answers anything
    keeps ``precision``; None when even the highest answering one does not."""
    best: Row | None = None
    for step in range(round(1 / STEP), -1, -1):
        candidate = row(samples, lengths, round(step * STEP, 10))
        if candidate.answered == 0:
            continue
        if candidate.precision < precision:
            break
        best = candidate
    return best


def report(
    samples: Sequence[Sample],
    lengths: frozenset[int],
    chars: str,
    precision: float,
    directory: str,
) -> tuple[list[str], Row | None]:
    """The lines to print, and the chosen threshold's row."""
    right = sum(s.right for s in samples)
    lines = [
        f"{len(samples)} labelled captchas in {directory}; read over {len(chars)} characters "
        f"({chars}), answers of {'/'.join(map(str, sorted(lengths)))} characters",
        f"read right with no gate (as without an API key): {right / len(samples):.1%}",
        "",
        "threshold  answered locally  right of those",
    ]
    for threshold in SHOWN:
        shown = row(samples, lengths, threshold)
        right_share = "-" if not shown.answered else f"{shown.precision:6.1%}"
        lines.append(
            f"{threshold:9.2f}  {shown.coverage:15.1%}  {right_share:>14}"
            f"  ({shown.right}/{shown.answered})"
        )
    chosen = lowest_threshold(samples, lengths, precision)
    lines.append("")
    if chosen is None:
        lines.append(
            f"No threshold keeps {precision:.0%} of the local answers right on these "
            "captchas: the engine does not read them well enough; leave local-first off "
            "for this site (CapSolver reads them)."
        )
    else:
        lines.append(
            f"Lowest threshold for {precision:.0%} right: {chosen.threshold:.2f} "
            f"(answers {chosen.coverage:.1%} locally, {chosen.precision:.1%} of them right)"
        )
        lines.append(f"  CAPSOLVER_LOCAL_MIN_CONFIDENCE = {chosen.threshold:.2f}")
    return lines, chosen


def calibrate(
    directory: Path,
    precision: float,
    length: int | None,
    charset: str | None,
    workers: int,
    read: Callable[[bytes, str], Reading] | None = None,
) -> tuple[list[str], Row | None]:
    """Read the labelled images of ``directory`` and report on every threshold. ``read``
    defaults to the local engine's. Raises :class:`CalibrationError`."""
    images = labelled_images(directory)
    lengths, chars = expected_format((label for _, label, _ in images), length, charset)
    if read is None:
        from .engine import OcrEngine

        read = OcrEngine().read
    samples = read_samples(images, read, chars, workers)
    return report(samples, lengths, chars, precision, str(directory))
