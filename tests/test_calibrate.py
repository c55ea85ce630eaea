"""``scrapy-capsolver-ocr calibrate``: run as a user runs it, and its threshold choice on
fixed readings."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import run_command
from labelled_captchas import draw_labelled

from scrapy_capsolver_ocr.engines.local.calibration import (
    Sample,
    calibrate,
    expected_format,
    label_of,
    lowest_threshold,
    row,
)
from scrapy_capsolver_ocr.engines.local.gate import Reading


def run_calibrate(*args: str) -> subprocess.CompletedProcess[str]:
    return run_command("calibrate", *args, text=True)


def test_calibrate_prints_a_table_and_the_lowest_threshold(tmp_path: Path) -> None:
    answers = draw_labelled(tmp_path, "digits", 60)
    (tmp_path / "notes.txt").write_text("not an image")  # ignored

    run = run_calibrate(str(tmp_path), "--precision", "0.9")

    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines[0].startswith(f"{len(answers)} labelled captchas in {tmp_path}")
    assert "answers of 4 characters" in lines[0]
    table = [line.split() for line in lines if line[:9].strip().replace(".", "").isdigit()]
    thresholds = [float(columns[0]) for columns in table]
    assert thresholds == sorted(thresholds) and thresholds[0] == 0.0
    answered = [float(columns[1].rstrip("%")) for columns in table]
    # A higher threshold never answers more.
    assert answered == sorted(answered, reverse=True)
    # The 4-digit captchas are read well: some threshold keeps 90 % right.
    assert any(line.startswith("Lowest threshold for 90% right: ") for line in lines)
    assert any(line.strip().startswith("CAPSOLVER_LOCAL_MIN_CONFIDENCE = ") for line in lines)


def test_calibrate_takes_the_length_and_charset_given(tmp_path: Path) -> None:
    draw_labelled(tmp_path, "digits", 10)
    run = run_calibrate(str(tmp_path), "--length", "5", "--charset", "0123456789")
    assert run.returncode == 0, run.stderr
    assert "read over 10 characters (0123456789), answers of 5 characters" in run.stdout
    # No 4-digit answer has the length asked for: nothing is answered locally.
    assert "No threshold keeps 95% of the local answers right" in run.stdout


@pytest.mark.parametrize(
    ("folder", "message"),
    [("empty", "no labelled images in"), ("missing", "is not a directory")],
)
def test_nothing_to_calibrate_on_is_a_one_line_error(
    tmp_path: Path, folder: str, message: str
) -> None:
    (tmp_path / "empty").mkdir()
    run = run_calibrate(str(tmp_path / folder))
    assert run.returncode == 1
    assert run.stderr.startswith("scrapy-capsolver-ocr calibrate: ")
    assert message in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("option", "value"), [("--precision", "1.5"), ("--length", "0"), ("--charset", " ")]
)
def test_bad_options_are_usage_errors(tmp_path: Path, option: str, value: str) -> None:
    run = run_calibrate(str(tmp_path), option, value)
    assert run.returncode == 2
    assert option in run.stderr


def test_without_ddddocr_the_error_names_the_extra(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "sys.modules['ddddocr'] = None\n"
        "from scrapy_capsolver_ocr import cli\n"
        f"sys.exit(cli.main(['calibrate', {str(tmp_path)!r}]))\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert run.returncode == 1
    assert 'pip install "scrapy-capsolver-ocr[ocr]"' in run.stderr


# The threshold choice, on fixed readings


def sample(text: str, confidence: float, label: str = "ab12") -> Sample:
    return Sample(f"{label}.png", label, Reading(text, confidence))


def test_label_is_the_stem_or_what_follows_its_last_underscore() -> None:
    assert label_of(Path("AB12.png")) == "AB12"
    assert label_of(Path("0042_x_AB12.png")) == "AB12"


def test_expected_format_comes_from_the_labels_unless_given() -> None:
    assert expected_format(["AB12", "CD3"], None, None) == (frozenset({3, 4}), "123ABCD")
    assert expected_format(["AB12"], 5, "xy") == (frozenset({5}), "xy")


def test_rows_count_answers_passing_the_gate_and_right_ignoring_case() -> None:
    samples = [
        sample("AB12", 0.9),  # right, ignoring case
        sample("ab13", 0.8),  # wrong
        sample("ab1", 0.99),  # wrong length: never answered
        sample("ab12", 0.5),
    ]
    lengths = frozenset({4})
    assert (row(samples, lengths, 0.0).answered, row(samples, lengths, 0.0).right) == (3, 2)
    at = row(samples, lengths, 0.85)
    assert (at.answered, at.right, at.coverage, at.precision) == (1, 1, 0.25, 1.0)


def test_lowest_threshold_is_where_every_higher_one_keeps_the_precision() -> None:
    # Right answers at 0.95 and 0.9, a wrong one at 0.8, right ones below it: from 0.81 up
    # every threshold is 100 % right; at 0.8 it drops to 2/3; from 0.5 down it is back to
    # 4/5 = 80 %, which a search from the lowest threshold up would take for 0.8.
    samples = [
        sample("ab12", 0.95),
        sample("ab12", 0.9),
        sample("zz99", 0.8),
        sample("ab12", 0.6),
        sample("ab12", 0.5),
    ]
    lengths = frozenset({4})
    chosen = lowest_threshold(samples, lengths, 0.8)
    assert chosen is not None and chosen.threshold == pytest.approx(0.81)
    assert (chosen.answered, chosen.right) == (2, 2)
    assert lowest_threshold(samples, lengths, 0.5) is not None
    assert lowest_threshold(samples, lengths, 0.5).threshold == 0.0  # type: ignore[union-attr]
    assert lowest_threshold([sample("zz99", 0.99)], lengths, 0.95) is None


def test_calibrate_reads_through_the_function_given(tmp_path: Path) -> None:
    for name in ("0001_AB12.png", "0002_CD34.png"):
        (tmp_path / name).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    seen = []

    def read(body: bytes, chars: str) -> Reading:
        seen.append(chars)
        return Reading("AB12", 0.9)

    lines, chosen = calibrate(tmp_path, 0.95, None, None, workers=1, read=read)
    assert seen == ["1234ABCD", "1234ABCD"]
    assert chosen is None  # half right at every threshold
    assert lines[1] == "read right with no gate (as without an API key): 50.0%"
