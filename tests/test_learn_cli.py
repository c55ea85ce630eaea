"""``scrapy-capsolver-ocr learn train`` and ``learn eval``, run as a user runs them."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from conftest import run_command
from labelled_captchas import fixed_captchas

from scrapy_capsolver_ocr.cli.learn_commands import NOT_PROMOTED, versions
from scrapy_capsolver_ocr.engines.learnt.model import LearntModel

TRAIN_COUNT = 300
EPOCHS = "7"


def run_learn(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("learn", *args, text=True, timeout=600)


def draw(folder: Path, count: int, seed: int, style: str = "digits") -> list[str]:
    """``count`` seeded captchas saved as ``ANSWER_NUMBER.png``; their answers."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = fixed_captchas(style, count, seed)
    for number, (answer, image) in enumerate(drawn):
        (folder / f"{answer}_{number:04d}.png").write_bytes(image)
    return [answer for answer, _ in drawn]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """A models folder after one ``learn train`` of seeded digit captchas into it."""
    root = tmp_path_factory.mktemp("learn")
    labels = root / "shop"
    draw(labels, TRAIN_COUNT, seed=21)
    (labels / "notes.txt").write_text("not an image: left alone")
    models = root / "models"
    run = run_learn("train", str(labels), "-o", f"{models}/", "--epochs", EPOCHS, "--seed", "1")
    return models, run


def test_train_writes_the_first_version_into_a_models_folder(
    trained: tuple[Path, subprocess.CompletedProcess[str]],
) -> None:
    models, run = trained
    assert run.returncode == 0, run.stderr
    assert [path.name for _, path in versions(models)] == ["model-v1.onnx"]
    assert f"Training on {TRAIN_COUNT} labelled images" in run.stderr
    epochs = re.findall(r"epoch +(\d+)/7 \[[#.]+\] loss +[0-9.]+ +held-out +[0-9.]+%", run.stderr)
    assert epochs == [str(n) for n in range(1, 8)]
    lines = run.stdout.splitlines()
    assert lines[0].startswith("promoted (held-out accuracy ")
    assert lines[1].startswith(f"model: {models / 'model-v1.onnx'} (version 1, ")
    assert lines[2].startswith(f"labels: {TRAIN_COUNT} (0 unreadable skipped), 7 epochs in ")
    model = LearntModel.load(models / "model-v1.onnx")
    assert (model.version, model.site, model.alphabet) == (1, "shop", "0123456789")
    assert f"held-out accuracy: {model.heldout_accuracy:.1%}" in lines


def test_eval_measures_a_model_on_labelled_images(
    trained: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    models, _ = trained
    draw(tmp_path, 40, seed=77)
    (tmp_path / "unnamed.png").write_bytes(fixed_captchas("digits", 1, 3)[0][1])  # no answer

    run = run_learn("eval", str(models / "model-v1.onnx"), str(tmp_path))

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{models / 'model-v1.onnx'}: site 'shop', version 1, threshold ")
    assert lines[1] == f"40 labelled images in {tmp_path}"
    right = int(re.fullmatch(r"accuracy: [0-9.]+% \((\d+)/40\)", lines[2])[1])  # type: ignore[index]
    # It reads far more here; the floor leaves room for other machines.
    assert right >= 10
    answered = re.fullmatch(
        r"at the threshold: answers [0-9.]+% \((\d+)/40\), [0-9.]+% of them right \((\d+)/\d+\)",
        lines[3],
    )
    assert answered is not None and int(answered[2]) <= int(answered[1]) <= 40


def test_eval_json_reads_every_image_whatever_its_name(
    trained: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    models, _ = trained
    answers = draw(tmp_path, 5, seed=78)
    (tmp_path / "captcha.png").write_bytes(fixed_captchas("digits", 1, 4)[0][1])
    (tmp_path / "broken.png").write_bytes(b"<html>blocked</html>")
    (tmp_path / "notes.txt").write_text("left alone")

    # A folder as MODEL: its newest model.
    run = run_learn("eval", str(models), str(tmp_path), "--json")

    assert run.returncode == 0, run.stderr
    entries = json.loads(run.stdout)
    names = sorted(path.name for path in tmp_path.glob("*.png"))
    assert [entry["file"] for entry in entries] == names
    threshold = LearntModel.load(models / "model-v1.onnx").threshold
    for entry in entries:
        assert set(entry) <= {"file", "text", "confidence", "answered", "error"}
        assert entry["answered"] == (bool(entry["text"]) and entry["confidence"] >= threshold)
    broken = next(entry for entry in entries if entry["file"] == "broken.png")
    assert broken["text"] == "" and not broken["answered"] and "HTML page" in broken["error"]
    read = [entry["text"] for entry in entries if entry["file"][:4] in answers]
    assert len(read) == 5 and all(text.isdigit() or text == "" for text in read)


def test_a_model_that_does_not_beat_the_newest_is_not_written(
    trained: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    models, _ = trained
    copy = tmp_path / "models"
    copy.mkdir()
    (copy / "model-v1.onnx").write_bytes((models / "model-v1.onnx").read_bytes())
    labels = tmp_path / "shop"
    draw(labels, 40, seed=22)

    run = run_learn("train", str(labels), "-o", str(copy), "--epochs", "1")

    assert run.returncode == NOT_PROMOTED, run.stderr
    assert run.stdout.startswith("not promoted: ")
    assert "model: not written (version 2, " in run.stdout
    assert [path.name for path in copy.iterdir()] == ["model-v1.onnx"]


def make_folder(root: Path, kind: str) -> Path:
    folder = root / "labels"
    if kind == "missing":
        return folder
    folder.mkdir()
    if kind == "empty":
        (folder / "readme.txt").write_text("no images here")
    elif kind == "unnamed":
        draw(folder, 12, seed=5)
        (folder / "captcha.png").write_bytes(fixed_captchas("digits", 1)[0][1])
    elif kind == "unreadable":
        draw(folder, 12, seed=5)
        (folder / "1234_cut.png").write_bytes(fixed_captchas("digits", 1)[0][1][:200])
    elif kind == "few":
        draw(folder, 4, seed=5)
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("missing", "labels is not a folder"),
        ("empty", "holds no image file"),
        ("unnamed", r"1 image\(s\) in .* have no answer in their name .*: captcha.png"),
        (
            "unreadable",
            r"1 image\(s\) in .* cannot be used: The PNG captcha from 1234_cut.png is truncated",
        ),
        ("few", "4 readable labels; training needs at least 10"),
    ],
)
def test_train_refuses_a_bad_label_folder(tmp_path: Path, kind: str, message: str) -> None:
    folder = make_folder(tmp_path, kind)
    run = run_learn("train", str(folder), "-o", str(tmp_path / "model.onnx"))
    assert run.returncode == 1
    assert re.search(message, run.stderr), run.stderr
    assert run.stderr.splitlines()[-1].startswith("scrapy-capsolver-ocr learn train: ")
    assert not (tmp_path / "model.onnx").exists()


def test_train_refuses_to_replace_a_file_that_is_no_model(tmp_path: Path) -> None:
    draw(tmp_path / "labels", 12, seed=5)
    other = tmp_path / "other.onnx"
    other.write_bytes(b"precious data")
    run = run_learn("train", str(tmp_path / "labels"), "-o", str(other))
    assert run.returncode == 1
    assert f"{other} is not a learnt model" in run.stderr
    assert other.read_bytes() == b"precious data"


@pytest.mark.parametrize("epochs", ["0", "many"])
def test_train_refuses_bad_epochs(tmp_path: Path, epochs: str) -> None:
    run = run_learn("train", str(tmp_path), "-o", "model.onnx", "--epochs", epochs)
    assert run.returncode == 2
    assert "--epochs: must be a whole number of at least 1" in run.stderr


def test_eval_refuses_a_bad_model_or_folder(
    trained: tuple[Path, subprocess.CompletedProcess[str]], tmp_path: Path
) -> None:
    models, _ = trained
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00" * 64)
    draw(tmp_path / "images", 3, seed=6)
    run = run_learn("eval", str(bad), str(tmp_path / "images"))
    assert run.returncode == 1 and f"{bad} is not a learnt model" in run.stderr
    run = run_learn("eval", str(tmp_path / "images"), str(tmp_path / "images"))
    assert run.returncode == 1 and "holds no <name>-v<N>.onnx model" in run.stderr
    run = run_learn("eval", str(models), str(tmp_path / "absent"))
    assert run.returncode == 1 and "absent is not a folder" in run.stderr
    unnamed = tmp_path / "unnamed"
    unnamed.mkdir()
    (unnamed / "captcha.png").write_bytes(fixed_captchas("digits", 1)[0][1])
    run = run_learn("eval", str(models), str(unnamed))
    assert run.returncode == 1 and "nothing to measure (--json reads them all)" in run.stderr


def test_learn_status_is_a_command_of_the_learn_group(tmp_path: Path) -> None:
    # The status itself is tested in test_learn_crawl.py; here: the command line reaches it.
    run = run_learn("status", "--learn-dir", str(tmp_path / "missing"))
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr.startswith("learn status: no learn directory at ")
