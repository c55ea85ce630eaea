"""The demo (example_project/run_demo.py, which scripts/demo.sh runs), end to end: real
servers, the example project's spiders, real OCR."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import API_KEY, CapSolverMock
from servers.process import REPO_ROOT

RUN_DEMO = REPO_ROOT / "example_project" / "run_demo.py"
ITEMS_PER_LOGIN = 6


def run_demo(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    summary_file = tmp_path / "summary.json"
    base_env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("CAPSOLVER_API_KEY", "CAPSOLVER_API_URL")
    }
    result = subprocess.run(
        [sys.executable, str(RUN_DEMO), *args, "--summary-json", str(summary_file)],
        capture_output=True,
        text=True,
        env={**base_env, **(env or {})},
        cwd=tmp_path,  # the demo must not depend on the directory it is started from
        timeout=300,
        check=False,
    )
    assert summary_file.exists(), result.stderr[-3000:]
    return result, json.loads(summary_file.read_text())


def assert_every_wrong_answer_retried_within_the_limit(summary: dict[str, Any]) -> None:
    limit = summary["max_attempts"]
    for name, spider in summary["spiders"].items():
        assert spider["finish_reason"] == "finished", name
        for login, record in spider["records"].items():
            where = f"{name} login {login}: {record}"
            assert 1 <= record["attempts"] <= limit, where
            if record["succeeded"]:
                # Each refused answer was followed by another attempt, and the last one passed.
                assert record["wrong_answers"] == record["attempts"] - 1, where
                assert record["items"] == ITEMS_PER_LOGIN, where
            else:
                # Given up only once the limit was reached, every answer refused.
                assert record["wrong_answers"] == record["attempts"] == limit, where
                assert record["items"] == 0, where
        wrong = sum(record["wrong_answers"] for record in spider["records"].values())
        attempts = sum(record["attempts"] for record in spider["records"].values())
        assert (spider["wrong_answers"], spider["captchas_solved"]) == (wrong, attempts)


@pytest.mark.parametrize("captchas", ["noisy", "digits"])
def test_demo_logs_in_with_the_local_ocr_server(tmp_path: Path, captchas: str) -> None:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    options = ["--digits"] if captchas == "digits" else []
    result, summary = run_demo(tmp_path, "--logins", "4", *options)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (summary["solver"], summary["captchas"]) == ("local", captchas)
    assert summary["api_url"].startswith("http://127.0.0.1:")
    assert summary["logins_succeeded"] > 0
    for spider in summary["spiders"].values():
        assert spider["logins"] == 4
        assert spider["items"] == ITEMS_PER_LOGIN * spider["logins_succeeded"]
    assert_every_wrong_answer_retried_within_the_limit(summary)
    assert "== Demo summary" in result.stdout
    assert f"{summary['logins_succeeded']} of {summary['logins']} logins succeeded" in (
        result.stdout
    )
    assert "Traceback" not in result.stderr


def test_demo_local_first_reads_locally_and_sends_the_rest_to_the_api(tmp_path: Path) -> None:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    result, summary = run_demo(tmp_path, "--logins", "3", "--digits", "--local-first")
    assert result.returncode == 0, result.stderr[-3000:]
    assert summary["local_first"] is True
    assert summary["solver"] == "local"  # the local OCR server stands in for CapSolver
    local = 0
    for spider in summary["spiders"].values():
        # Every captcha answered once: by the local engine, or by an API call.
        assert spider["local_answers"] + spider["paid_answers"] == spider["captchas_solved"]
        local += spider["local_answers"]
    assert local > 0  # 9 in 10 of the digit captchas are read surely
    assert_every_wrong_answer_retried_within_the_limit(summary)
    assert "Local first: " in result.stdout
    assert "Traceback" not in result.stderr


def test_demo_with_a_key_solves_through_the_api_and_gives_up_at_the_limit(
    tmp_path: Path, capsolver: CapSolverMock
) -> None:
    # The mock stands in for CapSolver's cloud. It cannot read the demo site's captchas (it
    # answers a text made from the image's hash), so every answer is refused: each login
    # gives up after CAPSOLVER_MAX_ATTEMPTS answers, each of them reported as wrong.
    env = {"CAPSOLVER_API_KEY": API_KEY, "CAPSOLVER_API_URL": capsolver.url}
    result, summary = run_demo(tmp_path, "--logins", "2", env=env)
    assert result.returncode == 1  # no login succeeded
    assert (summary["solver"], summary["api_url"]) == ("cloud", capsolver.url)
    assert "Local OCR server" not in result.stdout
    assert summary["logins_succeeded"] == 0
    assert_every_wrong_answer_retried_within_the_limit(summary)
    attempts = sum(spider["captchas_solved"] for spider in summary["spiders"].values())
    assert attempts == summary["max_attempts"] * summary["logins"]
    assert len(capsolver.calls("createTask")) == attempts
    assert len(capsolver.calls("feedbackTask")) == attempts
    assert API_KEY not in result.stdout + result.stderr


def chromium_available() -> bool:
    configured = os.environ.get("CHROMIUM_PATH")
    candidates = [configured] if configured else ["/usr/lib/chromium/chromium"]
    candidates.append(shutil.which("chromium"))
    return any(path and os.access(path, os.X_OK) for path in candidates)


@pytest.mark.playwright
def test_demo_logs_in_in_a_browser(tmp_path: Path) -> None:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    pytest.importorskip("scrapy_playwright", reason='pip install ".[playwright]"')
    if not chromium_available():
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail("No Chromium: set CHROMIUM_PATH or install Debian's chromium")
        pytest.skip("No Chromium: set CHROMIUM_PATH or install Debian's chromium")
    result, summary = run_demo(tmp_path, "--logins", "2", "--spider", "browser_login")
    assert result.returncode == 0, result.stderr[-3000:]
    assert list(summary["spiders"]) == ["browser_login"]
    assert summary["logins_succeeded"] > 0
    assert_every_wrong_answer_retried_within_the_limit(summary)


def test_the_example_project_names_what_it_lacks() -> None:
    # As in an environment without the demo extra: form2request cannot be imported.
    hide = "import sys; sys.modules['form2request'] = None; "
    run = "from scrapy.cmdline import execute; execute(['scrapy', 'list'])"
    result = subprocess.run(
        [sys.executable, "-c", hide + run],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT / "example_project",
        timeout=120,
        check=False,
    )
    assert result.returncode != 0
    assert "pip install -r example_project/requirements.txt" in result.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "scrapy", "list"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT / "example_project",
        timeout=120,
        check=True,
    )
    assert listed.stdout.split() == ["browser_login", "fleet_login", "image_login", "page_login"]


def test_fleet_demo_processes_share_the_login_jobs_and_one_budget(
    tmp_path: Path, redis_binary: str
) -> None:
    result, summary = run_demo(tmp_path, "--fleet", "3", "--logins", "9", "--digits")

    assert result.returncode == 0, result.stderr[-3000:]
    processes = summary["spiders"]
    assert len(processes) == 3
    assert summary["logins"] == 9  # every job taken once, by one of the processes
    logins = [int(login) for spider in processes.values() for login in spider["records"]]
    assert sorted(logins) == list(range(1, 10))
    assert_every_wrong_answer_retried_within_the_limit(summary)
    # One budget: the fleet's count is every process's calls added up.
    fleet_tasks = {spider["fleet_api_tasks"] for spider in processes.values()}
    assert max(fleet_tasks) == sum(spider["api_tasks"] for spider in processes.values())
    assert "One fleet, one budget" in result.stdout


def test_failover_demo_moves_to_the_backup_and_ends_every_login(tmp_path: Path) -> None:
    pytest.importorskip("ddddocr", reason='the OCR extra: pip install ".[ocr]"')
    # --digits: answers the site accepts, so logins end quickly either way.
    result, summary = run_demo(tmp_path, "--failover", "--logins", "12", "--digits")
    assert result.returncode == 0, result.stderr[-3000:]
    failover = summary["failover"]
    capsolver, anticaptcha = (failover["services"][name] for name in ("capsolver", "anticaptcha"))
    assert capsolver["url"].startswith("http://127.0.0.1:")
    assert anticaptcha["url"].endswith("/anticaptcha")
    # The preferred server answered until it was killed, then the backup answered.
    assert capsolver["answers"] >= failover["answers_before_outage"] == 3
    assert anticaptcha["answers"] > 0
    assert failover["moments"]["killed"] < failover["moments"]["first_backup_answer"]
    answered = capsolver["answers"] + anticaptcha["answers"]
    spiders = summary["spiders"].values()
    assert answered == sum(spider["captchas_solved"] for spider in spiders)
    # Every login ended: logged in, or given up with the reason (a task lost in the outage).
    for spider in spiders:
        assert spider["finish_reason"] == "finished"
        assert spider["logins"] == 12
        for record in spider["records"].values():
            assert record["succeeded"] is not None, record
            assert record["succeeded"] or record["error"], record
    assert "== Demo summary" in result.stdout
    assert "capsolver killed at" in result.stdout
    lines = [line.split() for line in result.stdout.splitlines()]
    assert ["1.", "capsolver", str(capsolver["calls"]), "calls"] == lines_starting(lines, "1.")
    assert ["2.", "anticaptcha", str(anticaptcha["calls"]), "calls"] == lines_starting(lines, "2.")


def lines_starting(lines: list[list[str]], first: str) -> list[str]:
    [line] = [words for words in lines if words[:1] == [first]]
    return line[:4]


def test_failover_demo_refuses_other_modes(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(RUN_DEMO), "--failover", "--fleet", "2"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "--failover runs on its own" in result.stderr
