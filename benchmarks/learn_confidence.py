"""How much a learnt model answers at 97 % precision under each way of measuring its
confidence, on folders of labelled captchas it never trained on.

Reads every image of each folder (named ``<answer>_<anything>.<ext>``, as ``learn eval``
reads them) with MODEL once, and scores the same network output under each measure: the
threshold is chosen on the folder itself (the lowest that keeps the precision), and the
threshold chosen on the first folder is also applied to the others (does it carry over to
captchas it was not chosen on?).

    python benchmarks/learn_confidence.py MODEL FOLDER [FOLDER ...] [--min-precision 0.97]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from scrapy_capsolver_ocr.engines.learnt.ctc import labelling_probability
from scrapy_capsolver_ocr.engines.learnt.inputs import network_input
from scrapy_capsolver_ocr.engines.learnt.label_files import labelled_files
from scrapy_capsolver_ocr.engines.learnt.model import (
    LearntModel,
    best_path_groups,
    read_probabilities,
)
from scrapy_capsolver_ocr.engines.learnt.threshold import (
    HeldoutScore,
    Scored,
    at_threshold,
    choose_threshold,
    scored,
)
from scrapy_capsolver_ocr.engines.local.gate import Alphabet, Reading, read_best_path, softmax

Array = np.ndarray[Any, np.dtype[Any]]


def _peak_frames(folded: Array) -> list[int]:
    """The surest frame of each character the best path emits."""
    peaks: list[int] = []
    previous = 0
    for frame, group in enumerate(folded.argmax(axis=1).tolist()):
        if group and group != previous:
            peaks.append(frame)
        elif group and folded[frame, group] > folded[peaks[-1], group]:
            peaks[-1] = frame
        previous = group
    return peaks


def _peaks(folded: Array) -> tuple[Array, Array]:
    """The top and second probability at the surest frame of each emitted character."""
    ordered = np.sort(folded[_peak_frames(folded)], axis=1)
    return ordered[:, -1], ordered[:, -2]


def min_peak(folded: Array) -> float:
    top, _ = _peaks(folded)
    return float(top.min()) if len(top) else 0.0


def min_margin(folded: Array) -> float:
    top, second = _peaks(folded)
    return float((top - second).min()) if len(top) else 0.0


def entropy(folded: Array) -> float:
    return float(np.exp((folded * np.log(np.maximum(folded, 1e-12))).sum()))


def against_second(folded: Array) -> float:
    """The text's probability against the likeliest labelling one edit away (each character
    replaced by its peak frame's runner-up, or dropped when that is the blank)."""
    groups = best_path_groups(folded)
    if not groups:
        return 0.0
    first = labelling_probability(folded, groups)
    second = 0.0
    for index, frame in enumerate(_peak_frames(folded)):
        runner_up = int(np.argsort(folded[frame])[-2])
        other = groups[:index] + ([runner_up] if runner_up else []) + groups[index + 1 :]
        if other:
            second = max(second, labelling_probability(folded, other))
    return first / (first + second) if first + second > 0 else 0.0


def measures(alphabet: Alphabet) -> dict[str, Callable[[Array], Reading]]:
    def folded_measure(measure: Callable[[Array], float]) -> Callable[[Array], Reading]:
        def read(probabilities: Array) -> Reading:
            reading = read_best_path(probabilities, alphabet)
            if not reading.text:
                return reading
            return Reading(reading.text, measure(alphabet.fold(probabilities)))

        return read

    return {
        "best path (product of frame tops)": lambda p: read_best_path(p, alphabet),
        "text probability (shipped)": lambda p: read_probabilities(p, alphabet),
        "min peak of a character": folded_measure(min_peak),
        "min top-2 margin of a character": folded_measure(min_margin),
        "text against one edit away": folded_measure(against_second),
        "exp(-total entropy)": folded_measure(entropy),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--min-precision", type=float, default=0.97)
    args = parser.parse_args()
    model = LearntModel.load(args.model)
    alphabet = Alphabet(["", *model.alphabet])
    outputs = []
    for folder in args.folders:
        files = labelled_files(folder)
        outputs.append(
            (
                [file.answer or "" for file in files],
                [softmax(model.logits(network_input(file.image))) for file in files],
            )
        )
    print(f"{args.model}: {model.info.labels} labels; precision floor {args.min_precision:.0%}")
    for name, read in measures(alphabet).items():
        marks: list[list[Scored]] = [
            scored([read(p) for p in probabilities], answers) for answers, probabilities in outputs
        ]
        print(f"\n{name}")
        for folder, folder_marks in zip(args.folders, marks, strict=True):
            score = HeldoutScore.of(folder_marks, args.min_precision)
            print(
                f"  {folder.name} ({len(folder_marks)}): accuracy {score.accuracy:.1%}, "
                f"answers {score.coverage:.1%} at precision {score.precision:.1%}"
            )
        threshold = choose_threshold(marks[0], args.min_precision)
        for folder, folder_marks in zip(args.folders[1:], marks[1:], strict=True):
            coverage, precision = at_threshold(folder_marks, threshold)
            print(
                f"  threshold of {args.folders[0].name} on {folder.name}: answers "
                f"{coverage:.1%} at precision {precision:.1%}"
            )


if __name__ == "__main__":
    main()
