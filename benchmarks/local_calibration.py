"""Calibrating the local OCR gate on the demo site's captchas (and on a style it reads badly).

Draws N labelled captchas of each demo-site style with the site's own generator (noisy
letters and digits; 4 digits; and gvcode's look, which the engine reads badly), runs
``scrapy-capsolver-ocr calibrate`` on each folder, and prints its reports and a summary: per
style, the share answered locally and right at the chosen threshold, and the lowest
threshold that keeps 95 % of the local answers right on every demo style (the default of
CAPSOLVER_LOCAL_MIN_CONFIDENCE).

    python benchmarks/local_calibration.py [-n 1000] [--out DIR] [--threshold 0.7]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

# The demo site is a script directory, not a package: import its generator from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_project" / "demo_site"))
from captchas import CaptchaMaker

from scrapy_capsolver_ocr.engines.local.calibration import (
    expected_format,
    labelled_images,
    read_samples,
    report,
    row,
)
from scrapy_capsolver_ocr.engines.local.engine import OcrEngine
from scrapy_capsolver_ocr.settings import DEFAULT_LOCAL_MIN_CONFIDENCE

STYLES = ("noisy", "digits", "gvcode")
#: The styles the default threshold is calibrated on: the demo site's own.
DEMO_STYLES = ("noisy", "digits")


def draw(folder: Path, style: str, count: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    maker = CaptchaMaker.of_style(style)
    for number in range(count):
        answer = maker.new_answer()
        (folder / f"{number:05d}_{answer}.png").write_bytes(maker.render(answer))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=1000, help="captchas per style")
    parser.add_argument("--out", type=Path, help="keep the labelled images here")
    parser.add_argument(
        "--threshold",
        type=float,
        default=DEFAULT_LOCAL_MIN_CONFIDENCE,
        help="the threshold to summarise (default: the setting's default, %(default)s)",
    )
    parser.add_argument("--precision", type=float, default=0.95)
    args = parser.parse_args()
    engine = OcrEngine()
    with tempfile.TemporaryDirectory() as scratch:
        root = args.out or Path(scratch)
        summary = []
        lowest = {}
        for style in STYLES:
            folder = root / style
            draw(folder, style, args.count)
            images = labelled_images(folder)
            lengths, chars = expected_format((label for _, label, _ in images), None, None)
            samples = read_samples(images, engine.read, chars, workers=2)
            lines, chosen = report(samples, lengths, chars, args.precision, f"{style}/")
            print(f"== {style}\n" + "\n".join(lines) + "\n", flush=True)
            at = row(samples, lengths, args.threshold)
            lowest[style] = chosen.threshold if chosen else None
            summary.append(
                f"| {style} | {len(samples)} | {sum(s.right for s in samples) / len(samples):.1%} "
                f"| {at.coverage:.1%} | {at.precision:.1%} | "
                f"{'none' if chosen is None else f'{chosen.threshold:.2f}'} |"
            )
    print(
        f"| style | captchas | read right (no gate) | answered locally at {args.threshold:g} "
        f"| right of those | lowest threshold for {args.precision:.0%} |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print("\n".join(summary))
    demo = [lowest[style] for style in DEMO_STYLES]
    if all(value is not None for value in demo):
        print(f"\nThreshold keeping {args.precision:.0%} on every demo style: {max(demo):.2f}")
    else:
        print(f"\nNo threshold keeps {args.precision:.0%} on every demo style")


if __name__ == "__main__":
    main()
