"""Held-out readings scored: accuracy, the confidence threshold that keeps the required
precision, and the coverage and precision at a threshold. Pure functions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..local.gate import Reading


def same_answer(text: str, answer: str) -> bool:
    """Whether a reading is the answer. Case is ignored, as the local gate folds it and
    most sites compare answers ignoring it."""
    return text.casefold() == answer.casefold()


@dataclass(frozen=True)
class Scored:
    """One held-out reading: its confidence, and whether it was right."""

    confidence: float
    right: bool


def scored(readings: Sequence[Reading], answers: Sequence[str]) -> list[Scored]:
    return [
        Scored(reading.confidence, bool(reading.text) and same_answer(reading.text, answer))
        for reading, answer in zip(readings, answers, strict=True)
    ]


def choose_threshold(readings: Sequence[Scored], min_precision: float) -> float | None:
    """The lowest confidence at which the readings at least that sure are right at least
    ``min_precision`` of the time (the threshold that answers most while keeping that
    precision); None when no positive threshold does."""
    chosen = None
    right = 0
    ordered = sorted(readings, key=lambda scored: -scored.confidence)
    for answered, reading in enumerate(ordered, start=1):
        right += reading.right
        # A threshold keeps every reading of equal confidence: judge at the last of them.
        last_of_its_confidence = (
            answered == len(ordered) or ordered[answered].confidence < reading.confidence
        )
        if last_of_its_confidence and reading.confidence > 0 and right >= min_precision * answered:
            chosen = reading.confidence
    return chosen


def at_threshold(readings: Sequence[Scored], threshold: float | None) -> tuple[float, float]:
    """The share of readings answered at ``threshold`` (coverage), and the share of those
    that were right (precision; 0 when none is answered)."""
    if threshold is None or not readings:
        return 0.0, 0.0
    answered = [reading for reading in readings if reading.confidence >= threshold]
    if not answered:
        return 0.0, 0.0
    right = sum(reading.right for reading in answered)
    return len(answered) / len(readings), right / len(answered)


@dataclass(frozen=True)
class HeldoutScore:
    """How a reader did on held-out labels, with the threshold chosen on them."""

    accuracy: float
    threshold: float | None
    coverage: float
    precision: float

    @classmethod
    def of(cls, readings: Sequence[Scored], min_precision: float) -> HeldoutScore:
        """With the threshold chosen on ``readings`` for ``min_precision``."""
        return cls.at(readings, choose_threshold(readings, min_precision))

    @classmethod
    def judged(
        cls, readings: Sequence[Scored], judges: Sequence[bool], min_precision: float
    ) -> HeldoutScore:
        """With the threshold chosen, and its precision measured, on the readings whose
        ``judges`` is true (labels that are no local reader's right answers alone); the
        accuracy and coverage on all ``readings``, as the crawl meets them."""
        judging = [reading for reading, judge in zip(readings, judges, strict=True) if judge]
        on_judging = cls.of(judging, min_precision)
        on_all = cls.at(readings, on_judging.threshold)
        return cls(on_all.accuracy, on_judging.threshold, on_all.coverage, on_judging.precision)

    @classmethod
    def at(cls, readings: Sequence[Scored], threshold: float | None) -> HeldoutScore:
        """At a given threshold (a model's own)."""
        accuracy = sum(reading.right for reading in readings) / len(readings) if readings else 0.0
        coverage, precision = at_threshold(readings, threshold)
        return cls(accuracy, threshold, coverage, precision)


def promotion(
    new: HeldoutScore, previous: HeldoutScore | None, min_precision: float
) -> tuple[bool, str]:
    """Whether a newly trained reader replaces ``previous`` (None: there is none), and why,
    both scored on the same held-out labels. It must reach ``min_precision`` at some
    threshold, and answer more of them there than the previous one does at its own (or as
    many, more accurately)."""
    figures = (
        f"held-out accuracy {new.accuracy:.1%}, coverage {new.coverage:.1%} at precision "
        f"{new.precision:.1%}"
    )
    if new.threshold is None:
        return False, (
            f"not promoted: no confidence threshold keeps precision >= {min_precision:.0%} "
            f"({figures})"
        )
    if previous is not None:
        than = f"previous model: accuracy {previous.accuracy:.1%}, coverage {previous.coverage:.1%}"
        if (new.coverage, new.accuracy) <= (previous.coverage, previous.accuracy):
            return False, f"not promoted: no better than the previous model ({figures}; {than})"
        return True, f"promoted: better than the previous model ({figures}; {than})"
    return True, f"promoted ({figures})"
