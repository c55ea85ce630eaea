"""The confidence of a local reading: pure functions on the model's probabilities.

The model (ddddocr's CTC recogniser) gives, for each of T frames across the image, a
probability for each class of its charset; class 0 is the blank (no character here).
Measured on the demo site's captchas, ddddocr's own confidence and the product or minimum
of the per-character probabilities tell right answers from wrong ones hardly at all: the
model splits a letter's probability between its two cases, so a sure "w" looks unsure. What
does tell them apart:

1. fold the cases: each class counts for its case-folded character;
2. restrict decoding to the expected alphabet (the blank and those characters);
3. score the best path: the product over frames of the top probability among them, *not*
   renormalised, so probability the model put on a character outside the alphabet is doubt;
4. refuse an answer whose length is not an expected one: most confident mistakes drop or
   merge a character;
5. ask a second model when the first is neither sure nor hopeless (:func:`second_opinion`):
   two models trained apart rarely make the same mistake with confidence.

Case folding assumes what most sites do: they compare answers ignoring case. The text keeps
the alphabet's spelling when it has one case of a letter, else the case the model preferred.

:class:`ConfidenceGate` applies the last two steps' verdict to any engine that reads on this
machine: the local reader asks it of every reading, whichever engine made it.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .formats import ExpectedFormat

Array = np.ndarray[Any, np.dtype[Any]]


@dataclass(frozen=True)
class Reading:
    """What the engine read: the text, and how sure it is of it (0..1)."""

    text: str
    confidence: float


class Alphabet:
    """The classes of a charset that may be read, grouped by case-folded character.

    ``chars`` None allows every character of the charset (the OCR server reads anything).
    Characters of ``chars`` the charset does not have can never be read.
    """

    def __init__(self, charset: Sequence[str], chars: str | None = None) -> None:
        wanted: dict[str, set[str]] | None = None
        if chars is not None:
            wanted = {}
            for char in chars:
                wanted.setdefault(char.casefold(), set()).add(char)
        members: dict[str, list[int]] = {}
        for index, char in enumerate(charset):
            if index == 0 or not char:
                continue  # the blank
            key = char.casefold()
            if wanted is None or key in wanted:
                members.setdefault(key, []).append(index)
        keys = list(members)
        self.chars = chars
        self.size = len(keys)
        # How to write each group: one fixed spelling, or the likelier of the charset's
        # spellings that the alphabet allows (columns and characters).
        self._fixed: list[str | None] = []
        self._choices: list[tuple[Array, list[str]]] = []
        for key in keys:
            allowed = wanted[key] if wanted is not None else {charset[i] for i in members[key]}
            choice = [i for i in members[key] if charset[i] in allowed]
            if len(choice) > 1 and len(allowed) > 1:
                self._fixed.append(None)
            else:  # the charset may only have the other case of the alphabet's letter
                self._fixed.append(charset[choice[0]] if choice else min(allowed))
            self._choices.append((np.array(choice), [charset[i] for i in choice]))
        # Folding adds each group's n-th member in one vectorised step per n.
        self._ranks: list[tuple[Array, Array]] = []
        rank = 0
        while True:
            groups = [g for g, key in enumerate(keys) if len(members[key]) > rank]
            if not groups:
                break
            columns = [members[keys[g]][rank] for g in groups]
            self._ranks.append((np.array(columns), np.array(groups) + 1))
            rank += 1

    def fold(self, probabilities: Array) -> Array:
        """``probabilities`` (frames x charset) as (frames x 1 + groups): column 0 is the
        blank, column g the summed probability of group g's classes."""
        folded = np.zeros((probabilities.shape[0], self.size + 1))
        folded[:, 0] = probabilities[:, 0]
        for columns, groups in self._ranks:
            folded[:, groups] += probabilities[:, columns]
        return folded

    def spell(self, group: int, frame: Array) -> str:
        """How to write ``group`` (1-based), given the probabilities of its surest frame."""
        fixed = self._fixed[group - 1]
        if fixed is not None:
            return fixed
        columns, chars = self._choices[group - 1]
        return chars[int(frame[columns].argmax())]


def softmax(logits: Array) -> Array:
    """The model's output (frames x 1 x classes, or frames x classes) as probabilities."""
    values = np.asarray(logits, dtype=np.float64).reshape(logits.shape[0], -1)
    values = np.exp(values - values.max(axis=1, keepdims=True))
    return values / values.sum(axis=1, keepdims=True)  # type: ignore[no-any-return]


def read_best_path(probabilities: Array, alphabet: Alphabet) -> Reading:
    """The best path's text over ``alphabet``, and its score: the product over frames of
    the top folded probability. No text at all has confidence 0."""
    folded = alphabet.fold(probabilities)
    if folded.shape[0] == 0:
        return Reading("", 0.0)
    best = folded.argmax(axis=1)
    top = folded[np.arange(folded.shape[0]), best]
    # A run of frames on one group is one character (CTC): spelt from its surest frame.
    runs: list[list[int]] = []
    previous = 0
    for frame, group in enumerate(best.tolist()):
        if group and group != previous:
            runs.append([group, frame])
        elif group and top[frame] > top[runs[-1][1]]:
            runs[-1][1] = frame
        previous = group
    text = "".join(alphabet.spell(group, probabilities[frame]) for group, frame in runs)
    return Reading(text, float(np.prod(top)) if text else 0.0)


#: First readings at least this sure are not worth a second model's time: from 0.9 on,
#: more than 99 % of them were right on the demo site's noisy captchas.
SECOND_OPINION_ABOVE = 0.9
#: Nor are those below this: agreement on them raised coverage little and cost precision.
SECOND_OPINION_BELOW = 0.2


def wants_second_opinion(first: Reading) -> bool:
    """Whether ``first`` is unsure enough, yet not hopeless, to be read again by a second
    model (see :func:`second_opinion`)."""
    return bool(first.text) and SECOND_OPINION_BELOW <= first.confidence < SECOND_OPINION_ABOVE


def second_opinion(first: Reading, second: Reading) -> Reading:
    """``first`` with its confidence revised by a second model's reading of the same image.

    When both read the same text (ignoring case), the surer of the two stands: two models
    trained apart seldom agree on a mistake. When they differ, the first answer keeps only
    the share of its confidence the second model leaves: ``c1 (1 - c2)``. On 3,000 of the
    demo site's noisy captchas, held out from the 2,000 this rule was chosen on, at the
    default threshold 0.7: 53.5 % answered locally, 97.4 % of them right (1.4 % of the
    captchas answered wrong), where the first model alone answered 45.3 %, 96.5 % right
    (1.6 % wrong). The text is always the first model's, the better reader of the two.
    """
    if first.text and first.text.casefold() == second.text.casefold():
        confidence = max(first.confidence, second.confidence)
    else:
        confidence = first.confidence * (1.0 - second.confidence)
    return Reading(first.text, confidence)


def passes(reading: Reading, lengths: Collection[int] | None, min_confidence: float) -> bool:
    """Whether ``reading`` may be used instead of paying: some text, of an expected length
    (when lengths are known), at least as sure as ``min_confidence``."""
    if not reading.text:
        return False
    if lengths is not None and len(reading.text) not in lengths:
        return False
    return reading.confidence >= min_confidence


class ConfidenceGate:
    """Whether a local reading is used instead of paying; the reason when it is not.

    With ``only_reader`` (no API key: nobody else can read the image) every reading with
    some text is used, however unsure.
    """

    def __init__(self, min_confidence: float, *, only_reader: bool = False) -> None:
        self.min_confidence = min_confidence
        self.only_reader = only_reader

    def __repr__(self) -> str:
        return f"ConfidenceGate(min_confidence={self.min_confidence:g})"

    def refuses_unread(self, expected: ExpectedFormat) -> str | None:
        """Why no reading could pass for a captcha expected as ``expected`` (so it is not
        read at all), or None."""
        if expected.lengths is None and not self.only_reader:
            return "the length of this site's captchas is not known yet"
        return None

    def refuses(self, reading: Reading, expected: ExpectedFormat) -> str | None:
        """Why ``reading`` may not be used, or None when it may."""
        if self.only_reader or passes(reading, expected.lengths, self.min_confidence):
            return None
        if expected.lengths is not None and len(reading.text) not in expected.lengths:
            return f"read {len(reading.text)} characters, expected {sorted(expected.lengths)}"
        return f"confidence {reading.confidence:.3f} < {self.min_confidence:g}"
