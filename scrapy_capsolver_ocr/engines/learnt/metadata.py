"""What a learnt model file says about itself, in the ONNX file's ``metadata_props``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

#: The ``kind`` of every learnt model file: anything else is not one.
KIND = "scrapy-capsolver-ocr learnt reader"
#: The layout of the file this code writes; a newer one is refused (it may read otherwise).
FORMAT_VERSION = 1
#: How a model's confidence in a reading is measured, which its threshold was chosen on:
#: the probability of the text over all its alignments (files written from now on), or
#: the product of each frame's top probability (files written before there was a choice;
#: a file without the field reads so).
TEXT_PROBABILITY = "text probability"
BEST_PATH = "best path"
CONFIDENCES = (TEXT_PROBABILITY, BEST_PATH)


@dataclass(frozen=True)
class ModelInfo:
    """A learnt model's metadata. ``alphabet``: the characters it reads, class i + 1 being
    ``alphabet[i]`` (class 0 is the blank); ``threshold``: the lowest confidence at which
    its readings kept the required precision on held-out labels, measured as
    ``confidence`` says (one of CONFIDENCES)."""

    version: int
    site: str
    alphabet: str
    threshold: float
    heldout_accuracy: float
    coverage: float
    precision: float
    labels: int
    input_height: int
    format_version: int = FORMAT_VERSION
    confidence: str = TEXT_PROBABILITY

    def properties(self) -> dict[str, str]:
        """The metadata as ONNX ``metadata_props`` (strings)."""
        values = {key: json.dumps(value) for key, value in asdict(self).items()}
        return {"kind": KIND, **values}

    @classmethod
    def parse(cls, properties: Mapping[str, str]) -> ModelInfo:
        """The metadata of a file's ``metadata_props``. Raises ValueError when they are not
        a learnt model's, or one of a newer format."""
        if properties.get("kind") != KIND:
            raise ValueError("no learnt model metadata (not written by learn train)")
        # Files written before confidence was recorded measured it along the best path.
        properties = {"confidence": json.dumps(BEST_PATH), **properties}
        try:
            values = {key: json.loads(properties[key]) for key in cls.__dataclass_fields__}
        except KeyError as exc:
            raise ValueError(f"its metadata lacks {exc.args[0]!r}") from None
        except json.JSONDecodeError as exc:
            raise ValueError(f"its metadata is unreadable: {exc}") from None
        if (
            not isinstance(values["format_version"], int)
            or values["format_version"] > FORMAT_VERSION
        ):
            raise ValueError(
                f"written in model format {values['format_version']!r}, newer than this "
                f"version of scrapy-capsolver-ocr reads ({FORMAT_VERSION}): upgrade it"
            )
        if values["confidence"] not in CONFIDENCES:
            raise ValueError(
                f"its confidence is measured as {values['confidence']!r}, which this version "
                "of scrapy-capsolver-ocr does not know: upgrade it"
            )
        types = {"version": int, "labels": int, "input_height": int, "site": str, "alphabet": str}
        for key, kind in types.items():
            if not isinstance(values[key], kind):
                raise ValueError(f"its metadata {key} is not a {kind.__name__}: {values[key]!r}")
        for key in ("threshold", "heldout_accuracy", "coverage", "precision"):
            if not isinstance(values[key], (int, float)) or not 0.0 <= values[key] <= 1.0:
                raise ValueError(f"its metadata {key} is not a number from 0 to 1: {values[key]!r}")
        if not values["alphabet"] or len(set(values["alphabet"])) != len(values["alphabet"]):
            raise ValueError(
                f"its alphabet is empty or repeats a character: {values['alphabet']!r}"
            )
        return cls(**values)
