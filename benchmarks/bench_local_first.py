"""Local-first solving, measured: what it saves on logins, what it costs the site in refused
answers, whether the crawl keeps moving while it reads, and how fast the engine reads.

    python benchmarks/bench_local_first.py            # about 5 minutes on 2 cores
    python benchmarks/bench_local_first.py --quick

Starts the CapSolver mock (it answers every demo captcha right, from the answer the demo
site embeds with ``--embed-answers``), the demo site in each captcha style (noisy, digits,
and gvcode's look, which the engine reads badly) and the image site, all on 127.0.0.1; runs
every crawl in a fresh process (``local_first_scenarios.py`` for the logins,
``solving_scenarios.py`` for the pages); and writes ``docs/local-first.md`` with the raw
numbers in ``docs/local-first.json``. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "example_project" / "demo_site"))
import local_throughput  # noqa: E402
from bench_solving import (  # noqa: E402
    API_KEY,
    SERVERS,
    Bench,
    Plan,
    captchas,
    machine_facts,
    room,
    say,
    warm_site,
)
from captchas import CaptchaMaker  # noqa: E402
from local_first_report import write_report  # noqa: E402
from servers.process import start_server, stop_server  # noqa: E402

from scrapy_capsolver_ocr.engines.local.calibration import (  # noqa: E402
    expected_format,
    lowest_threshold,
    read_samples,
    row,
)
from scrapy_capsolver_ocr.engines.local.engine import OcrEngine  # noqa: E402
from scrapy_capsolver_ocr.settings import DEFAULT_LOCAL_MIN_CONFIDENCE  # noqa: E402

LOGINS = HERE / "local_first_scenarios.py"
DEMO_SITE = ROOT / "example_project" / "demo_site" / "server.py"
STYLES = ("noisy", "digits", "gvcode")
RUN_TIMEOUT = 900


@dataclass(frozen=True)
class LocalPlan:
    calibration: int = 1000
    logins: int = 200
    cloud_logins: int = 50
    at_once: int = 4
    #: Logins after which the site's format is learnt and the figures are steady.
    warm_up: int = 20
    pages: int = 500
    local_solves: int = 200
    throughput_images: int = 300
    repeat: int = 3
    #: Local-first login crawls per style, each with fresh captchas: the run-to-run spread.
    runs: int = 3


QUICK = LocalPlan(
    calibration=300, logins=60, cloud_logins=20, pages=300, throughput_images=100, repeat=2
)


def run_logins(log_dir: Path, name: str, params: dict[str, Any]) -> dict[str, Any]:
    log = log_dir / f"logins-{name}.log"
    argv = [sys.executable, str(LOGINS), "logins", json.dumps(params)]
    with open(log, "w") as stderr:
        done = subprocess.run(
            argv, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=RUN_TIMEOUT
        )
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"login run {name} failed (exit {done.returncode}); see {log}")
    result: dict[str, Any] = json.loads(lines[-1])
    result["log"] = str(log)
    return result


def login_figures(run: dict[str, Any], warm_up: int) -> dict[str, Any]:
    """Per login: paid createTask, answers the site refused, local answers; overall and
    after the first ``warm_up`` logins (once the site's format is learnt)."""
    stats, logins = run["stats"], run["logins"]
    chains = run["answered_by"]
    steady = chains[warm_up:] or chains
    paid_steady = sum(chain.count("capsolver") for chain in steady)
    succeeded = max(run["succeeded"], 1)
    return {
        "logins": logins,
        "succeeded": run["succeeded"],
        "success": run["succeeded"] / logins,
        "paid": stats.get("capsolver/task_count", 0),
        "paid_per_login": stats.get("capsolver/task_count", 0) / succeeded,
        "paid_per_login_steady": paid_steady / max(len(steady), 1),
        "refused_per_login": stats.get("capsolver/rejected", 0) / logins,
        "local_refused_per_login": stats.get("capsolver/local/rejected", 0) / logins,
        "local_solved": stats.get("capsolver/local/solved", 0),
        "local_declined": stats.get("capsolver/local/declined", 0),
        "solved": stats.get("capsolver/solved", 0),
        "seconds": run["seconds"],
        "errors": run["errors"],
    }


def spread(runs: list[dict[str, Any]], key: str) -> dict[str, float]:
    values = sorted(run[key] for run in runs)
    return {"min": values[0], "median": statistics.median(values), "max": values[-1]}


def logins(
    plan: LocalPlan,
    mock_url: str,
    sites: dict[str, str],
    logs: Path,
    styles: tuple[str, ...] = STYLES,
    cloud: bool = True,
) -> dict[str, Any]:
    """Per style, ``plan.runs`` local-first crawls (the median one by paid calls per login
    stands for the style, with the spread of all) and one CapSolver-only crawl."""
    results: dict[str, Any] = {}
    for style in styles:
        base = {"site": sites[style], "api": mock_url, "key": API_KEY, "at_once": plan.at_once}
        runs = []
        for run in range(plan.runs):
            say(f"logins on {style} captchas, local-first, run {run + 1} of {plan.runs}")
            local = run_logins(
                logs,
                f"{style}-local-{run}",
                {**base, "logins": plan.logins, "settings": {"CAPSOLVER_LOCAL_OCR": True}},
            )
            runs.append(login_figures(local, plan.warm_up))
        ranked = sorted(runs, key=lambda figures: figures["paid_per_login"])
        results[style] = {
            "local_first": ranked[(len(ranked) - 1) // 2],
            "local_first_runs": runs,
            "spread": {
                key: spread(runs, key)
                for key in ("paid_per_login", "paid_per_login_steady", "refused_per_login")
            },
        }
        if cloud:
            say(f"logins on {style} captchas, CapSolver only")
            only = run_logins(logs, f"{style}-cloud", {**base, "logins": plan.cloud_logins})
            results[style]["cloud_only"] = login_figures(only, plan.warm_up)
    return results


def reactor(plan: LocalPlan, mock_url: str, site_url: str, logs: Path) -> dict[str, Any]:
    """Pages per second while local solves read, against pages alone (same settings)."""
    bench = Bench(Plan(repeat=plan.repeat), mock_url, site_url, logs)
    warm_site(site_url, plan.local_solves)
    settings = room(plan.local_solves)
    common: dict[str, Any] = {"pages": plan.pages}
    say("pages alone")
    alone = bench.repeated("crawl", "page_span", settings=settings, **common)
    say(f"pages while {plan.local_solves} captchas are read locally (no key: all local)")
    local = {**settings, "CAPSOLVER_LOCAL_OCR": True, "CAPSOLVER_API_KEY": None}
    loaded = bench.repeated(
        "crawl",
        "page_span",
        captchas=captchas(plan.local_solves),
        pages_after_captchas=True,
        settings=local,
        **common,
    )
    return {
        "pages": plan.pages,
        "local_solves": plan.local_solves,
        "alone": alone,
        "loaded": loaded,
    }


def calibration(plan: LocalPlan, engine: OcrEngine) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for style in STYLES:
        maker = CaptchaMaker.of_style(style)
        labels = [maker.new_answer() for _ in range(plan.calibration)]
        images = [(f"{n}.png", label, maker.render(label)) for n, label in enumerate(labels)]
        lengths, chars = expected_format(labels, None, None)
        samples = read_samples(images, engine.read, chars, workers=2)
        chosen = lowest_threshold(samples, lengths, 0.95)
        shown = {}
        for threshold in (0.0, 0.5, 0.6, 0.7, 0.8, 0.9):
            at = row(samples, lengths, threshold)
            shown[f"{threshold:.1f}"] = {"answered": at.coverage, "right": at.precision}
        results[style] = {
            "captchas": len(samples),
            "read_right": sum(s.right for s in samples) / len(samples),
            "thresholds": shown,
            "lowest_95": None if chosen is None else chosen.threshold,
        }
    return results


def throughput(plan: LocalPlan) -> dict[str, Any]:
    """Images per second of the engine alone in each way it can run, in paired rounds
    (``local_throughput.py``), and where one image's time goes."""
    maker = CaptchaMaker.noisy()
    images = [maker.render(maker.new_answer()) for _ in range(plan.throughput_images)]
    local_throughput.WARM_UP.extend(images[:4])
    measured = local_throughput.measure(images, plan.repeat, local_throughput.CONFIGS)
    measured["profile_ms"] = local_throughput.profile(images)
    return measured


def logins_only(plan: LocalPlan, styles: tuple[str, ...]) -> None:
    logs = Path(tempfile.mkdtemp(prefix="bench-local-first-"))
    with ExitStack() as servers:
        mock, mock_url = start_server([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY])
        servers.callback(stop_server, mock)
        sites = {}
        for style in styles:
            site, sites[style] = start_server(
                [str(DEMO_SITE), "--port", "0", "--embed-answers", "--style", style]
            )
            servers.callback(stop_server, site)
        results = logins(plan, mock_url, sites, logs, styles, cloud=False)
    for style, figures in results.items():
        for key, values in figures["spread"].items():
            runs = ", ".join(f"{run[key]:.3f}" for run in figures["local_first_runs"])
            say(
                f"{style} {key}: min {values['min']:.3f} median {values['median']:.3f} "
                f"max {values['max']:.3f} ({runs})"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, fewer repeats")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "local-first.md")
    parser.add_argument(
        "--report-from", type=Path, help="measure nothing: write the page from this JSON"
    )
    parser.add_argument("--runs", type=int, help="local-first login crawls per style")
    parser.add_argument(
        "--logins-only",
        metavar="STYLE",
        nargs="+",
        choices=STYLES,
        help="measure only local-first logins on these styles and print their spread "
        "(writes no page): how to compare two versions of the engine",
    )
    args = parser.parse_args()
    if args.report_from:
        for path in write_report(json.loads(args.report_from.read_text()), args.out):
            say(f"wrote {path}")
        return
    plan = QUICK if args.quick else LocalPlan()
    if args.runs is not None:
        plan = replace(plan, runs=args.runs)
    if args.logins_only:
        logins_only(plan, tuple(args.logins_only))
        return
    facts = machine_facts()
    command = "python benchmarks/bench_local_first.py " + shlex.join(sys.argv[1:])
    results: dict[str, Any] = {
        "command": command.strip(),
        "plan": asdict(plan),
        "facts": facts,
        "threshold": DEFAULT_LOCAL_MIN_CONFIDENCE,
    }
    started = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="bench-local-first-"))
    engine = OcrEngine()
    say("calibration")
    results["calibration"] = calibration(plan, engine)
    say("engine throughput")
    results["throughput"] = throughput(plan)
    with ExitStack() as servers:

        def serve(argv: list[str]) -> str:
            process, url = start_server(argv)
            servers.callback(stop_server, process)
            return url

        mock_url = serve([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY])
        site_url = serve([str(SERVERS / "image_site.py")])
        demo = {
            style: serve([str(DEMO_SITE), "--port", "0", "--embed-answers", "--style", style])
            for style in STYLES
        }
        results["logins"] = logins(plan, mock_url, demo, logs)
        results["reactor"] = reactor(plan, mock_url, site_url, logs)
    facts["load_after"] = os.getloadavg()
    facts["total_seconds"] = time.perf_counter() - started
    # Kept beside the logs too, so that a page that fails to render can be written again
    # (--report-from) without measuring again.
    (logs / "results.json").write_text(json.dumps(results, indent=1, default=str))
    for path in write_report(results, args.out):
        say(f"wrote {path}")
    say(f"logs in {logs}")


if __name__ == "__main__":
    main()
