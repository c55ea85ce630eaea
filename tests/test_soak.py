"""The soak script runs and finds what it is meant to find, on a short run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


def test_short_soak_loses_no_request(tmp_path: Path) -> None:
    result_file = tmp_path / "soak.json"
    command = [sys.executable, str(SOAK), "--solves", "300", "--faults", "0.2"]
    run = subprocess.run(
        [*command, "--json", str(result_file)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    result = json.loads(result_file.read_text())
    assert (result["lost"], result["ended_twice"], result["ended_once"]) == (0, 0, 300)
    assert result["solved"] + sum(result["failed"].values()) == 300
    assert set(result["failed"]) <= {
        "CaptchaTaskError",
        "CaptchaTransientError",
        "CaptchaTimeoutError",
    }
    stats = result["stats"]
    assert stats["capsolver/solved"] + stats["capsolver/failed"] == 300
    # The faults did happen, and each was retried or ended its request.
    assert result["faults_applied"] >= 20
    assert stats["capsolver/task_count"] == 300 + stats["capsolver/retries"]
    assert result["samples"][-1][1] == 300
