"""The learning curve: paid createTask calls per successful login as a site-learnt reader
learns a captcha style from the answers the site accepts.

A simulation with the real engines and the real trainer, not a crawl: the full run is 45,000
logins (5,000 on each of 3 styles, in 3 modes) with a dozen trainings of minutes each, and
a crawl would add nothing to what is measured here but hours of HTTP round trips. What is
real: the captchas (drawn by the captcha libraries from PyPI, seeded), the bundled engine
(ddddocr through :class:`~scrapy_capsolver_ocr.engines.local.engine.OcrEngine`, gated by
:func:`~scrapy_capsolver_ocr.engines.local.gate.passes` at
``DEFAULT_LOCAL_MIN_CONFIDENCE``, as local-first does), the trainer
(:func:`~scrapy_capsolver_ocr.engines.learnt.training.train_model`, with ``previous=``) and
the learnt reader (:class:`~scrapy_capsolver_ocr.engines.learnt.model.LearntModel`, at its
threshold). What is modelled: the site (it accepts an answer when it equals the captcha's
text, ignoring case, as most sites and the local gate do; a refused answer costs a fresh
captcha) and the cloud (right with ``--cloud-accuracy``, 95 % by default, as CapSolver-like
services are on such images; the same captchas get the same verdict in every mode).

Each login gets a fresh captcha; a refused answer (local or cloud) gets another one, until
the login succeeds. Three modes:

- ``cloud``: every captcha is a paid createTask;
- ``local``: local-first without learning: ddddocr answers when the gate passes, else paid;
- ``learn``: the learnt model first (at its threshold), then ddddocr gated, then paid;
  every accepted answer is a label, and the model is (re)trained with all of them each time
  ``--retrain-every`` new labels arrived (1,000, 2,000, ...), promoted or not by the trainer.

The lengths and characters the gate reads with are the style's (what local-first has learnt
after its first few accepted answers).

Stages (each caches under /tmp/learning-curve-cache, so reruns are cheap):

    pip install -e ".[ocr,learn]" -r benchmarks/requirements.txt
    # ddddocr alone on each style: plain accuracy, gated coverage and precision
    nice python benchmarks/learning_curve.py --baseline
    # the simulation, per style (separate processes can run styles side by side)
    nice python benchmarks/learning_curve.py --styles claptcha --logins 5000
    # the plot (docs/learning-curve.png), the JSON and the markdown table
    python benchmarks/learning_curve.py --report
    # a smoke run of everything in about five minutes (results not kept in docs/)
    nice python benchmarks/learning_curve.py --quick
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# Before numpy loads: one BLAS thread (the machine is shared), as a crawl's training child
# process would have.
for _variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_variable, "1")

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from captcha_styles import CACHE_DIR, STYLES, Style, save_cached  # noqa: E402
from learning_curve_report import (  # noqa: E402
    MODE_TITLES,
    MODES,
    TARGET_LABELS,
    plot,
    section,
    targets,
    write_section,
)

from scrapy_capsolver_ocr.engines.local.gate import Reading, passes  # noqa: E402
from scrapy_capsolver_ocr.settings import DEFAULT_LOCAL_MIN_CONFIDENCE  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_STYLES = ("claptcha", "gvcode", "multicolor")
RESULTS_JSON = ROOT / "docs" / "learning-curve.json"
PLOT = ROOT / "docs" / "learning-curve.png"
BENCHMARKS_PAGE = ROOT / "docs" / "benchmarks.md"


# --- readings by ddddocr, cached per captcha ------------------------------------------


class DdddocrReadings:
    """ddddocr's reading of each captcha of a stream (over the style's alphabet), read once
    and kept in the cache: readings are deterministic."""

    def __init__(self, style: Style, seed: int) -> None:
        self.style = style
        self.path = CACHE_DIR / f"{style.key}-seed{seed}-ddddocr.pickle"
        self.readings: dict[int, tuple[str, float]] = {}
        if self.path.exists():
            with self.path.open("rb") as file:
                self.readings = pickle.load(file)
        self._saved = len(self.readings)
        self._engine: Any = None

    def read(self, index: int, image: bytes) -> Reading:
        known = self.readings.get(index)
        if known is None:
            if self._engine is None:
                from scrapy_capsolver_ocr.engines.local.engine import OcrEngine

                self._engine = OcrEngine()
            reading = self._engine.read(image, self.style.alphabet)
            known = self.readings[index] = (reading.text, reading.confidence)
        return Reading(*known)

    def save(self) -> None:
        if len(self.readings) != self._saved:
            save_cached(self.path, self.readings)
            self._saved = len(self.readings)


def right(text: str, answer: str) -> bool:
    """Whether the site accepts ``text`` for ``answer``: equal ignoring case."""
    return bool(text) and text.casefold() == answer.casefold()


# --- stage 1: ddddocr alone -------------------------------------------------------------


def baseline(style: Style, count: int, seed: int) -> dict[str, Any]:
    """ddddocr on the first ``count`` captchas of the stream: read right without a gate;
    answered by the gate, and right among those."""
    stream = style.stream(seed)
    readings = DdddocrReadings(style, seed)
    lengths = {style.length}
    plain = answered = answered_right = 0
    for index in range(count):
        answer, image = stream.get(index)
        reading = readings.read(index, image)
        plain += right(reading.text, answer)
        if passes(reading, lengths, DEFAULT_LOCAL_MIN_CONFIDENCE):
            answered += 1
            answered_right += right(reading.text, answer)
    stream.save()
    readings.save()
    return {
        "style": style.name,
        "library": style.library,
        "captchas": count,
        "accuracy": plain / count,
        "coverage": answered / count,
        "precision": answered_right / answered if answered else None,
        "threshold": DEFAULT_LOCAL_MIN_CONFIDENCE,
    }


# --- stage 2: the simulated logins ------------------------------------------------------


@dataclass
class Window:
    """What happened over a run of consecutive logins."""

    first_login: int
    logins: int = 0
    paid: int = 0
    refused_local: int = 0
    refused_cloud: int = 0
    answered_learnt: int = 0
    answered_ddddocr: int = 0


@dataclass
class Training:
    at_login: int
    labels: int
    promoted: bool
    version: int
    seconds: float
    heldout_accuracy: float
    threshold: float | None
    coverage: float
    precision: float
    model_bytes: int
    reason: str


@dataclass
class Run:
    style: str
    mode: str
    logins: int
    windows: list[Window] = field(default_factory=list)
    trainings: list[Training] = field(default_factory=list)
    #: The login (0-based) after which the labels reached TARGET_LABELS, if they did.
    target_login: int | None = None
    seconds: float = 0.0
    #: False while it runs: the results are saved after every window, so that a run
    #: stopped early still shows the logins it did.
    finished: bool = False


class Cloud:
    """The modelled cloud: right on a captcha with the stated accuracy, the same verdict for
    the same captcha in every mode (a seeded draw per captcha)."""

    def __init__(self, accuracy: float, seed: int) -> None:
        self.accuracy = accuracy
        self.seed = seed
        self._draws = np.zeros(0)

    def right(self, index: int) -> bool:
        if index >= len(self._draws):
            size = max(2 * len(self._draws), index + 1, 1024)
            self._draws = np.random.default_rng(self.seed).random(size)
        return bool(self._draws[index] < self.accuracy)


def simulate(
    style: Style,
    mode: str,
    logins: int,
    *,
    seed: int,
    cloud_accuracy: float,
    window: int,
    retrain_every: int,
    epochs: int | None = None,
    log: Any = print,
    keep: Callable[[Run], None] | None = None,
) -> Run:
    from scrapy_capsolver_ocr.engines.learnt.labels import CLOUD, LOCAL
    from scrapy_capsolver_ocr.engines.learnt.model import LearntModel
    from scrapy_capsolver_ocr.engines.learnt.training import Label, train_model

    began = time.monotonic()
    stream = style.stream(seed)
    readings = DdddocrReadings(style, seed)
    cloud = Cloud(cloud_accuracy, seed + 1)
    lengths = {style.length}
    run = Run(style.name, mode, logins)
    labels: list[Label] = []
    trained_at = 0
    model: LearntModel | None = None
    model_path = CACHE_DIR / "models" / f"{style.key}-seed{seed}-{mode}-{retrain_every}.onnx"
    model_path.unlink(missing_ok=True)
    shown = 0  # captchas the site has shown so far: the next one is stream.get(shown)
    current = Window(0)
    for login in range(logins):
        while True:
            answer, image = stream.get(shown)
            index = shown
            shown += 1
            text = None
            source = "cloud"
            if model is not None:
                reading = model.read(image)
                if passes(reading, lengths, model.threshold):
                    text, source = reading.text, "learnt"
            if text is None and mode != "cloud":
                reading = readings.read(index, image)
                if passes(reading, lengths, DEFAULT_LOCAL_MIN_CONFIDENCE):
                    text, source = reading.text, "ddddocr"
            if text is None:
                current.paid += 1
                text = answer if cloud.right(index) else ""
            if right(text, answer):
                if source == "learnt":
                    current.answered_learnt += 1
                elif source == "ddddocr":
                    current.answered_ddddocr += 1
                if mode == "learn":
                    # Who read it, as the crawl's label store records.
                    labels.append(Label(image, text, CLOUD if source == "cloud" else LOCAL))
                break
            if source == "cloud":
                current.refused_cloud += 1
            else:
                current.refused_local += 1
        current.logins += 1
        if run.target_login is None and len(labels) >= TARGET_LABELS:
            run.target_login = login
        if mode == "learn" and len(labels) - trained_at >= retrain_every:
            trained_at = len(labels)
            stream.save()
            readings.save()
            options: dict[str, Any] = {}
            if epochs is not None:
                options["epochs"] = epochs
            previous = model_path if model_path.exists() else None
            report = train_model(
                labels,
                model_path,
                site=style.name,
                previous=previous,
                seed=seed,
                **options,
            )
            training = Training(
                login + 1,
                report.labels,
                report.promoted,
                report.version,
                report.seconds,
                report.heldout_accuracy,
                report.threshold,
                report.coverage,
                report.precision,
                getattr(report, "model_bytes", 0)
                or (model_path.stat().st_size if model_path.exists() else 0),
                report.reason,
            )
            run.trainings.append(training)
            log(
                f"  {style.name}: trained on {report.labels} labels after login {login + 1} in "
                f"{report.seconds:.0f} s: {report.reason}",
                flush=True,
            )
            if report.promoted:
                model = LearntModel.load(model_path)
        if current.logins == window:
            run.windows.append(current)
            log(
                f"  {style.name} {mode}: logins {current.first_login + 1}-{login + 1}: "
                f"{current.paid / current.logins:.3f} paid/login, "
                f"{current.refused_local / current.logins:.3f} refused local/login, "
                f"{len(labels)} labels",
                flush=True,
            )
            current = Window(login + 1)
            if keep is not None:
                run.seconds = time.monotonic() - began
                keep(run)
    if current.logins:
        run.windows.append(current)
    stream.save()
    readings.save()
    run.seconds = time.monotonic() - began
    run.finished = True
    return run


def _model_bytes(report: Any, path: Path) -> int:
    """The trained model's size: the report's, else the file's (when it was written)."""
    size = getattr(report, "model_bytes", 0)
    if not size and report.promoted:
        size = path.stat().st_size
    return int(size)


# --- results ---------------------------------------------------------------------------


def results_path(style: str, tag: str) -> Path:
    return CACHE_DIR / f"results-{tag}-{style}.json"


def save_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    partial.replace(path)


def load_results(tag: str, styles: Sequence[str]) -> dict[str, Any]:
    found: dict[str, Any] = {"styles": {}}
    baseline_file = CACHE_DIR / "baseline.json"
    if baseline_file.exists():
        found["baseline"] = json.loads(baseline_file.read_text())
    for style in styles:
        path = results_path(style, tag)
        if path.exists():
            found["styles"][style] = json.loads(path.read_text())
    return found


# --- the command line ---------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--styles",
        default=",".join(DEFAULT_STYLES),
        help="%(default)s; any of " + ", ".join(STYLES),
    )
    parser.add_argument("--modes", default=",".join(MODES), help="%(default)s")
    parser.add_argument("--logins", type=int, default=5000, help="logins per style and mode")
    parser.add_argument("--window", type=int, default=250, help="logins per point of the curve")
    parser.add_argument("--retrain-every", type=int, default=1000, help="new labels per training")
    parser.add_argument("--cloud-accuracy", type=float, default=0.95)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--epochs", type=int, help="epochs per training (default: the trainer's)")
    parser.add_argument(
        "--baseline", action="store_true", help="measure ddddocr alone per style, then stop"
    )
    parser.add_argument("--baseline-count", type=int, default=2000)
    parser.add_argument(
        "--prepare",
        type=int,
        metavar="N",
        help="draw and read N captchas per style into the cache, then stop",
    )
    parser.add_argument(
        "--report", action="store_true", help="draw the plot and print the table from saved results"
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of every stage (~5 minutes)"
    )
    args = parser.parse_args()
    styles = [STYLES[name] for name in args.styles.split(",")]
    modes = args.modes.split(",")
    tag = "full"
    if args.quick:
        args.logins, args.window, args.retrain_every, args.epochs = 300, 50, 120, 3
        args.baseline_count = 200
        tag = "quick"
    if args.prepare:
        for style in styles:
            began = time.monotonic()
            baseline(style, args.prepare, args.seed)
            print(
                f"{style.name}: {args.prepare} captchas drawn and read in "
                f"{time.monotonic() - began:.0f} s",
                flush=True,
            )
        return
    if args.baseline or args.quick:
        rows = []
        for style in styles:
            row = baseline(style, args.baseline_count, args.seed)
            rows.append(row)
            print(json.dumps(row), flush=True)
        if not args.quick:
            CACHE_DIR.mkdir(parents=True, exist_ok=True)
            (CACHE_DIR / "baseline.json").write_text(json.dumps(rows, indent=1))
        if args.baseline:
            return
    if not args.report:
        if args.epochs is not None and "epochs" not in inspect.signature(_train_model()).parameters:
            parser.error("this trainer takes no epochs")
        for style in styles:
            path = results_path(style.name, tag)
            saved = json.loads(path.read_text()) if path.exists() else None
            data = saved or {"style": style.name, "library": style.library, "runs": {}}
            data["command"] = "python benchmarks/learning_curve.py " + " ".join(sys.argv[1:])
            data["settings"] = {
                "logins": args.logins,
                "window": args.window,
                "retrain_every": args.retrain_every,
                "cloud_accuracy": args.cloud_accuracy,
                "seed": args.seed,
                "epochs": args.epochs,
            }

            def keep(run: Run, data: dict[str, Any] = data, path: Path = path) -> None:
                data["runs"][run.mode] = asdict(run)
                save_json(path, data)

            for mode in modes:
                print(f"== {style.name}: {MODE_TITLES[mode]}, {args.logins} logins", flush=True)
                run = simulate(
                    style,
                    mode,
                    args.logins,
                    seed=args.seed,
                    cloud_accuracy=args.cloud_accuracy,
                    window=args.window,
                    retrain_every=args.retrain_every,
                    epochs=args.epochs,
                    keep=keep,
                )
                keep(run)
                print(f"   {run.seconds:.0f} s", flush=True)
            print("\n".join(targets({"styles": {style.name: data}})), flush=True)
        if not args.quick:
            return
    results = load_results(tag, [style.name for style in styles])
    if not results["styles"]:
        parser.error("no saved results for these styles: run the simulation first")
    out = PLOT if tag == "full" else CACHE_DIR / "learning-curve-quick.png"
    plot(results, out)
    command = "`; `".join(
        dict.fromkeys(data["command"] for data in results["styles"].values() if "command" in data)
    )
    text = section(results, command or "python benchmarks/learning_curve.py", PLOT.name)
    if tag == "full":
        save_json(RESULTS_JSON, results)
        write_section(BENCHMARKS_PAGE, text)
    print(f"plot: {out}\n")
    print(text)


def _train_model() -> Any:
    from scrapy_capsolver_ocr.engines.learnt.training import train_model

    return train_model


if __name__ == "__main__":
    main()
