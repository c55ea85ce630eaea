"""``scrapy-capsolver-ocr learn``: train a site's reader from labelled images, and measure a
trained one (:mod:`scrapy_capsolver_ocr.engines.learnt`, the ``learn`` extra).

- ``learn train LABEL_DIR -o MODEL``: images named ``<answer>_<anything>.<ext>``; MODEL a
  file, or a folder where ``model-v<N>.onnx`` files are kept (the newest is the model to
  beat), as a crawl keeps a site's models. Exit status 0 when a model was written, 3 when
  the new one was not promoted, 1 on bad input.
- ``learn eval MODEL DIR [--json]``: accuracy, coverage and precision at the model's
  threshold, or one JSON entry per image.

:func:`add_learn` returns the ``learn`` group's sub-parsers so that more actions (``learn
status``) are added beside these.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import learn_status
from .api_commands import report_failure
from .arguments import positive_int

if TYPE_CHECKING:
    from ..engines.learnt.model import LearntModel
    from ..engines.learnt.training import TrainingProgress, TrainingReport

#: The file name of models in a folder, before ``-v<N>.onnx``: what a crawl writes.
MODEL_NAME = "model"
#: Exit status of ``learn train`` when training ran but its model was not promoted.
NOT_PROMOTED = 3
_VERSIONED = re.compile(r"^(?P<name>.+)-v(?P<version>[0-9]+)\.onnx$")
_BAR = 30


def add_learn(
    commands: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    """Add the ``learn`` command group; return its sub-parsers, for more actions."""
    learn = commands.add_parser(
        "learn",
        help="train a reader of one site's captchas from labelled images, and measure it",
        description=(
            "Learn a site's captchas from their answers (the learn extra: "
            'pip install "scrapy-capsolver-ocr[learn]"). See docs/learning.md.'
        ),
    )
    actions = learn.add_subparsers(title="actions", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train a model from images named <answer>_<anything>.<ext>",
        description=(
            "Train a reader on every image of LABEL_DIR, its answer before the first "
            "underscore of its name (7FKP2_0001.png), holding out a share of them to measure "
            "it and choose its confidence threshold. The model is written only when it "
            "reaches --min-precision at some threshold and beats the model it replaces "
            "(MODEL when that file exists; the newest <name>-v<N>.onnx when MODEL is a "
            "folder). Exit status: 0 written, 3 not promoted, 1 bad input."
        ),
    )
    train.add_argument("directory", metavar="LABEL_DIR", help="a folder of labelled images")
    train.add_argument(
        "-o",
        "--output",
        metavar="MODEL",
        required=True,
        help="the model file, or a folder of versioned models (an existing folder, or a "
        "path ending in /)",
    )
    train.add_argument(
        "--name",
        default=MODEL_NAME,
        help="in a MODEL folder, the models' file name before -v<N>.onnx (default: "
        "%(default)s, as a crawl names a site's models)",
    )
    train.add_argument("--site", help="the site the model reads (default: LABEL_DIR's name)")
    train.add_argument(
        "--epochs", type=positive_int, help="passes over the labels (default: by their number)"
    )
    train.add_argument("--seed", type=int, default=0, help="seed of the split and training")
    train.add_argument(
        "--min-precision",
        type=_share,
        default=0.97,
        help="share of local answers that must be right (default: %(default)s)",
    )
    train.set_defaults(run=run_train)
    evaluate = actions.add_parser(
        "eval",
        help="accuracy, coverage and precision of a model on labelled images",
        description=(
            "Read every image of DIR with MODEL (a file, or a folder: its newest model). "
            "Without --json: accuracy on the images named <answer>_<anything>.<ext>, and "
            "the share answered at the model's threshold with the share of those right. "
            'With --json: for every image whatever its name, {"file", "text", '
            '"confidence", "answered"} (answered: the crawl would use it locally).'
        ),
    )
    evaluate.add_argument("model", metavar="MODEL", help="a model file or folder of models")
    evaluate.add_argument("directory", metavar="DIR", help="a folder of images")
    evaluate.add_argument("--json", action="store_true", help="one JSON entry per image")
    evaluate.set_defaults(run=run_eval)
    status = actions.add_parser(
        "status",
        help="each site's labels, model version, held-out accuracy and coverage",
        description=(
            "What a crawl has learnt: per site, the labels stored and the model in use "
            "(version, held-out accuracy, coverage at its threshold), from the learn "
            "directory or a fleet's Redis."
        ),
    )
    learn_status.add_arguments(status)
    return actions


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number above 0 and at most 1, not {text!r}")
    return value


def versions(folder: Path, name: str | None = None) -> list[tuple[int, Path]]:
    """The ``<name>-v<N>.onnx`` files of ``folder`` (any name when None), oldest first."""
    found = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _VERSIONED.match(path.name)
            if match and path.is_file() and name in (None, match["name"]):
                found.append((int(match["version"]), path))
    return sorted(found)


def _is_folder(argument: str) -> bool:
    return Path(argument).is_dir() or argument.endswith(("/", "\\"))


def run_train(args: argparse.Namespace) -> int:
    from ..engines.learnt import LearnUnavailableError, require_learn

    try:
        require_learn("learn train")
    except LearnUnavailableError as exc:
        return report_failure("learn train", str(exc))
    from ..engines.learnt.label_files import LabelFolderError, labelled_files
    from ..engines.learnt.model import LearntModel
    from ..engines.learnt.training import Label, train_model

    directory = Path(args.directory)
    name = args.name
    try:
        files = labelled_files(directory)
        if _is_folder(args.output):
            folder = Path(args.output)
            existing = versions(folder, name)
            previous = existing[-1][1] if existing else None
            version = LearntModel.load(previous).version if previous else 0
            output = folder / f"{name}-v{version + 1}.onnx"
        else:
            output = Path(args.output)
            previous = output if output.exists() else None
        # Oldest first, as training expects (it holds out the newest): by modification time,
        # since names begin with the answer.
        files.sort(key=lambda file: (file.path.stat().st_mtime_ns, file.path.name))
        labels = [Label(file.image, file.answer or "") for file in files]
        print(f"Training on {len(labels)} labelled images of {directory}", file=sys.stderr)
        report = train_model(
            labels,
            output,
            site=args.site if args.site is not None else directory.resolve().name,
            previous=previous,
            progress=_progress_bar(),
            seed=args.seed,
            min_precision=args.min_precision,
            epochs=args.epochs,
        )
    except (LabelFolderError, ValueError, OSError) as exc:
        message = str(exc)
        if isinstance(exc, OSError) and exc.strerror:
            message = f"{exc.filename}: {exc.strerror}"
        return report_failure("learn train", message)
    print(summary(report, output, previous), flush=True)
    return 0 if report.promoted else NOT_PROMOTED


def _progress_bar() -> Any:
    tty = sys.stderr.isatty()

    def show(step: TrainingProgress) -> None:
        done = round(_BAR * step.epoch / step.epochs)
        line = (
            f"epoch {step.epoch:>3}/{step.epochs} [{'#' * done}{'.' * (_BAR - done)}] "
            f"loss {step.loss:7.3f}  held-out {step.heldout_accuracy:6.1%}  {step.seconds:5.0f} s"
        )
        end = "\n" if not tty or step.epoch == step.epochs else ""
        print(("\r" if tty else "") + line, end=end, file=sys.stderr, flush=True)

    return show


def summary(report: TrainingReport, output: Path, previous: Path | None) -> str:
    """What ``learn train`` prints when training is over."""
    threshold = "none" if report.threshold is None else f"{report.threshold:.4f}"
    lines = [
        report.reason,
        f"model: {output if report.promoted else 'not written'} (version {report.version}"
        + (f", replacing {previous}" if previous is not None and report.promoted else "")
        + f", {report.model_bytes / 1e6:.2f} MB, {report.parameters} parameters)",
        f"labels: {report.labels} ({report.skipped} unreadable skipped), "
        f"{report.epochs} epochs in {report.seconds:.0f} s",
        f"held-out accuracy: {report.heldout_accuracy:.1%}",
        f"threshold: {threshold}: answers {report.coverage:.1%} of held-out captchas, "
        f"{report.precision:.1%} of them right",
    ]
    return "\n".join(lines)


def _load(argument: str) -> LearntModel:
    from ..engines.learnt.model import LearntModel

    path = Path(argument)
    if path.is_dir():
        found = versions(path)
        if not found:
            raise ValueError(f"{path} holds no <name>-v<N>.onnx model")
        path = found[-1][1]
    return LearntModel.load(path)


def run_eval(args: argparse.Namespace) -> int:
    try:
        import onnxruntime  # noqa: F401  (the one package reading needs beyond numpy)
    except ImportError:
        return report_failure(
            "learn eval", 'learn eval needs onnxruntime: pip install "scrapy-capsolver-ocr[learn]"'
        )
    from ..engines.learnt.label_files import LabelFolderError, image_files
    from ..engines.learnt.threshold import at_threshold, scored
    from ..engines.local import InvalidImageError
    from ..engines.local.gate import Reading

    try:
        model = _load(args.model)
        files = image_files(Path(args.directory))
    except (LabelFolderError, ValueError, OSError) as exc:
        return report_failure("learn eval", str(exc))
    readings = []
    for file in files:
        reading, problem = Reading("", 0.0), file.problem
        if problem is None:
            try:
                reading = model.read(file.image)
            except InvalidImageError as exc:
                problem = str(exc)
        readings.append((file, reading, problem))
    if args.json:
        entries = []
        for file, reading, problem in readings:
            entry: dict[str, Any] = {
                "file": file.path.name,
                "text": reading.text,
                "confidence": round(reading.confidence, 6),
                "answered": bool(reading.text) and reading.confidence >= model.threshold,
            }
            if problem is not None:
                entry["error"] = problem
            entries.append(entry)
        print(json.dumps(entries, indent=1), flush=True)
        return 0
    labelled = [(file, reading) for file, reading, _ in readings if file.answer is not None]
    if not labelled:
        return report_failure(
            "learn eval",
            f"no image of {args.directory} is named <answer>_<anything>.<ext>: nothing to "
            "measure (--json reads them all)",
        )
    marks = scored(
        [reading for _, reading in labelled], [file.answer or "" for file, _ in labelled]
    )
    right = sum(mark.right for mark in marks)
    coverage, precision = at_threshold(marks, model.threshold)
    answered = round(coverage * len(marks))
    unreadable = sum(problem is not None for file, _, problem in readings if file.answer)
    print(
        "\n".join(
            [
                f"{model.path}: site {model.site!r}, version {model.version}, threshold "
                f"{model.threshold:.4f}",
                f"{len(marks)} labelled images in {args.directory}"
                + (f" ({unreadable} unreadable, counted wrong)" if unreadable else ""),
                f"accuracy: {right / len(marks):.1%} ({right}/{len(marks)})",
                f"at the threshold: answers {coverage:.1%} ({answered}/{len(marks)}), "
                f"{precision:.1%} of them right ({round(precision * answered)}/{answered})",
            ]
        ),
        flush=True,
    )
    return 0
