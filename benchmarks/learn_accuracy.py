"""How well a learnt reader reads a captcha style after 1,000 and 3,000 labels, and what
training costs: time, model size, inference time.

For each style and label count, draws that many seeded captchas, trains with
``train_model`` (its default epochs, held-out share and 97 % precision floor), and reads
500 fresh captchas of the same style with the model through onnxruntime: the held-out
figures the model was chosen on, and the same figures on captchas it never saw.

Styles: ``gvcode`` (the demo site's style the bundled engine reads badly) and
``claptcha`` (the claptcha library's look, when ``pip install claptcha`` is done).

    python benchmarks/learn_accuracy.py [--styles gvcode claptcha] [--counts 1000 3000]
        [--json docs/learn-accuracy.json]

``--throughput`` measures speed only: training images a second (the third of four epochs
on 500 labels, its held-out check included) and the time of one read, per style.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from labelled_captchas import fixed_captchas
from servers.seeded_drawing import seeded_drawing

from scrapy_capsolver_ocr.engines.learnt.inputs import HEIGHT, batch, network_input
from scrapy_capsolver_ocr.engines.learnt.metadata import ModelInfo
from scrapy_capsolver_ocr.engines.learnt.model import LearntModel
from scrapy_capsolver_ocr.engines.learnt.network import (
    Statistics,
    folded,
    forward,
    initial_parameters,
)
from scrapy_capsolver_ocr.engines.learnt.onnx_file import onnx_bytes
from scrapy_capsolver_ocr.engines.learnt.threshold import at_threshold, scored
from scrapy_capsolver_ocr.engines.learnt.training import Label, TrainingProgress, train_model

FRESH = 500
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
CLAPTCHA_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"


def claptcha_captchas(count: int, seed: int) -> list[tuple[str, bytes]]:
    """``count`` (answer, PNG) pairs drawn by claptcha (4 characters, noise 0.3)."""
    from claptcha import Claptcha
    from PIL import ImageFont

    if not hasattr(ImageFont.FreeTypeFont, "getsize"):
        # claptcha 0.3.3 (its last release) calls getsize, which Pillow 10 removed.
        def getsize(font: ImageFont.FreeTypeFont, text: str) -> tuple[int, int]:
            _, _, right, bottom = font.getbbox(text)
            return int(right), int(bottom)

        ImageFont.FreeTypeFont.getsize = getsize  # type: ignore[attr-defined]
    answers = random.Random(seed)
    drawn = []
    with seeded_drawing(seed):  # claptcha draws with the global random
        for _ in range(count):
            answer = "".join(answers.choice(CLAPTCHA_ALPHABET) for _ in range(4))
            _, data = Claptcha(answer, FONT, noise=0.3).bytes
            drawn.append((answer, data.getvalue()))
    return drawn


def drawer(style: str) -> Callable[[int, int], list[tuple[str, bytes]]]:
    if style == "claptcha":
        return claptcha_captchas
    return lambda count, seed: fixed_captchas(style, count, seed)


def measure(style: str, count: int, folder: Path) -> dict[str, object]:
    draw = drawer(style)
    labels = [Label(image, answer) for answer, image in draw(count, 1)]
    output = folder / f"{style}-{count}.onnx"
    last: list[TrainingProgress] = []

    def progress(step: TrainingProgress) -> None:
        last[:] = [step]
        print(
            f"  {style} {count}: epoch {step.epoch}/{step.epochs} loss {step.loss:.3f} "
            f"held-out {step.heldout_accuracy:.1%} {step.seconds:.0f} s",
            file=sys.stderr,
            flush=True,
        )

    report = train_model(labels, output, site=style, progress=progress)
    result: dict[str, object] = {
        "style": style,
        "labels": count,
        "epochs": report.epochs,
        "parameters": report.parameters,
        "train_seconds": round(report.seconds, 1),
        "model_bytes": report.model_bytes,
        "promoted": report.promoted,
        "heldout_accuracy": round(report.heldout_accuracy, 4),
        "threshold": report.threshold,
        "heldout_coverage": round(report.coverage, 4),
        "heldout_precision": round(report.precision, 4),
        "reason": report.reason,
    }
    if report.promoted:
        model = LearntModel.load(output)
        fresh = draw(FRESH, 1000 + count)
        began = time.perf_counter()
        readings = [model.read(image) for _, image in fresh]
        result["read_ms"] = round((time.perf_counter() - began) / len(fresh) * 1000, 2)
        marks = scored(readings, [answer for answer, _ in fresh])
        coverage, precision = at_threshold(marks, model.threshold)
        result["fresh_accuracy"] = round(sum(m.right for m in marks) / len(marks), 4)
        result["fresh_coverage"] = round(coverage, 4)
        result["fresh_precision"] = round(precision, 4)
    return result


def throughput(style: str, folder: Path) -> dict[str, object]:
    labels = [Label(image, answer) for answer, image in drawer(style)(500, 1)]
    seconds: list[float] = []
    train_model(
        labels, folder / "speed.onnx", progress=lambda s: seconds.append(s.seconds), epochs=4
    )
    # Reading takes as long whatever the weights: time a model of untrained ones.
    alphabet = CLAPTCHA_ALPHABET
    trained = initial_parameters(len(alphabet) + 1, 0)
    images = [image for _, image in drawer(style)(200, 2)]
    statistics: Statistics = {}
    forward(trained, batch([network_input(image) for image in images[:64]]), statistics=statistics)
    info = ModelInfo(1, style, alphabet, 0.5, 0.0, 0.0, 0.0, 0, HEIGHT)
    model = LearntModel(folder / "untrained.onnx", onnx_bytes(folded(trained, statistics), info))
    model.read(images[0])
    began = time.perf_counter()
    for image in images:
        model.read(image)
    read_seconds = time.perf_counter() - began
    inputs = [network_input(image) for image in images]
    began = time.perf_counter()
    for values in inputs:
        model.logits(values)
    network_seconds = time.perf_counter() - began
    return {
        "style": style,
        "train_images_per_second": round(400 / (seconds[2] - seconds[1]), 1),
        # The whole reading: decoding the image, scaling it, the network, the confidence.
        "read_ms": round(read_seconds / len(images) * 1000, 2),
        "network_ms": round(network_seconds / len(images) * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--styles", nargs="+", default=["gvcode", "claptcha"])
    parser.add_argument("--counts", nargs="+", type=int, default=[1000, 3000])
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    parser.add_argument("--throughput", action="store_true", help="measure speed only")
    options = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as folder:
        if options.throughput:
            for style in options.styles:
                print(json.dumps(throughput(style, Path(folder))), flush=True)
            return
        for style in options.styles:
            for count in options.counts:
                result = measure(style, count, Path(folder))
                print(json.dumps(result), flush=True)
                results.append(result)
    if options.json:
        options.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
