"""Failover, measured: the preferred service killed in the middle of a crawl, and what a
single-service crawl pays for the failover code (nothing measurable, we expect).

    python benchmarks/failover.py                  # both parts, about 2 minutes on 2 cores
    python benchmarks/failover.py --part outage
    python benchmarks/failover.py --part overhead --base main --runs 5

``outage``: a crawl of ``--captchas`` (500) captchas through two CapSolver mocks on
127.0.0.1 (tests/servers/capsolver_mock.py, the second one registered as the ``backup``
service, tests/failover_kinds.py), each answering after ``--latency`` seconds; once the
preferred one received a quarter of the tasks it is killed (SIGKILL), and started again
on its port ``--down`` seconds later. ``CAPSOLVER_TIMEOUT`` is 1 s;
``CAPSOLVER_FAILOVER_UNANSWERED`` is on unless ``--no-unanswered``. Measured: requests that
never ended (lost), requests that ended with an error, images paid twice (a createTask
answered with a solution by both services, over both services' call logs, which outlive the
kill), the tasks moved off the killed service with their connection
(``capsolver/provider/capsolver/unanswered_moved``: it died before answering them; each
is a possible second charge where a service bills a task it received), images whose
createTask reached both services (received and not refused), seconds from the kill to the
first answer from the backup, and seconds from the return of the preferred service to the
first answer from it again (against the cool-down).

``overhead``: the solving path of ``solving_scenarios.py middleware`` (section 3 of
docs/benchmarks.md: 2000 captchas in memory through ``process_response``, one service) with
this tree's package and with the package of git revision ``--base``, each in a fresh
process, in turn (A B A B ...), and the ratio of their solves/s pair by pair.

Prints one JSON object; ``--write`` also writes its parts into docs/failover-benchmarks.json.
Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from servers.mock_process import MockProcess, answered_twice, paid_twice  # noqa: E402
from servers.process import start_server, stop_server  # noqa: E402

API_KEY = "CAP-benchmark-key-0000000000000000"
SERVERS = ROOT / "tests" / "servers"
SCENARIOS = HERE / "solving_scenarios.py"
RUN_TIMEOUT = 600


# The crawl, in a process of its own (``--crawl JOB``)


def crawl(job_path: str) -> None:
    """Crawl the job's URLs; write when each ended, and who answered it."""
    import failover_kinds
    import scrapy
    from scrapy.crawler import CrawlerProcess

    failover_kinds.register()
    job = json.loads(Path(job_path).read_text())
    ended: dict[str, dict[str, Any]] = {}

    class Spider(scrapy.Spider):
        name = "failover-bench"

        async def start(self) -> Any:
            for url in job["urls"]:
                yield scrapy.Request(
                    url, meta={"solve_image": True}, errback=self.failed, dont_filter=True
                )

        def parse(self, response: Any) -> None:
            solution = response.meta["captcha_solution"]
            ended[response.url] = {"at": time.time(), "provider": solution.provider}

        def failed(self, failure: Any) -> None:
            url = failure.request.url
            ended[url] = {"at": time.time(), "error": type(failure.value).__name__}

    process = CrawlerProcess({**job["settings"], "LOG_FILE": job["log"]})
    crawler = process.create_crawler(Spider)
    process.crawl(crawler)
    if os.environ.get("FAILOVER_BENCH_WATCHDOG"):
        sys.path.insert(0, os.environ["FAILOVER_BENCH_WATCHDOG"])
        import watchdog
        from twisted.internet import reactor as installed

        installed.callWhenRunning(watchdog.start, installed)
    process.start()
    assert crawler.stats is not None
    stats = {k: v for k, v in crawler.stats.get_stats().items() if k.startswith("capsolver/")}
    Path(job["result"]).write_text(json.dumps({"ended": ended, "stats": stats}, default=str))


# The outage


def outage(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    site_process, site = start_server([str(SERVERS / "image_site.py")])
    latency = ("--key", API_KEY, "--latency", str(args.latency))
    preferred = MockProcess(work / "preferred.calls", *latency)
    backup = MockProcess(work / "backup.calls", *latency)
    try:
        urls = [f"{site}/captcha/f{number:04d}.png" for number in range(args.captchas)]
        job = {
            "urls": urls,
            "result": str(work / "crawl.json"),
            "log": str(work / "crawl.log"),
            "settings": {
                "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
                "LOG_LEVEL": os.environ.get("FAILOVER_BENCH_LOG_LEVEL", "INFO"),
                "LOG_FORMAT": "%(asctime)s.%(msecs)03d [%(name)s] %(levelname)s: %(message)s",
                "TELNETCONSOLE_ENABLED": False,
                "CAPSOLVER_PROVIDERS": [
                    {"name": "capsolver", "api_key": API_KEY, "api_url": preferred.url},
                    {"name": "backup", "api_key": API_KEY, "api_url": backup.url},
                ],
                "CAPSOLVER_TIMEOUT": 1.0,
                "CAPSOLVER_CONCURRENCY": args.concurrency,
                "CAPSOLVER_FAILOVER_COOLDOWN": args.cooldown,
                "CAPSOLVER_FAILOVER_UNANSWERED": args.unanswered,
                "CAPSOLVER_LOGSTATS_INTERVAL": 0,
            },
        }
        job_path = work / "job.json"
        job_path.write_text(json.dumps(job))
        env = {**os.environ, "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}
        crawl_process = subprocess.Popen(
            [sys.executable, __file__, "--crawl", str(job_path)], env=env, cwd=ROOT
        )
        while preferred.received() < args.captchas // 4:
            if crawl_process.poll() is not None:
                raise RuntimeError(f"the crawl ended before the outage; see {job['log']}")
            time.sleep(0.01)
        preferred.kill()
        killed_at = time.time()
        (work / "times.json").write_text(json.dumps({"killed": killed_at}))
        time.sleep(args.down)
        preferred.restart()
        back_at = time.time()
        crawl_process.wait(RUN_TIMEOUT)
        result = json.loads(Path(job["result"]).read_text())
    finally:
        for mock in (preferred, backup):
            mock.stop()
        stop_server(site_process)
    ended = result["ended"]
    answers = sorted((e["at"], e["provider"]) for e in ended.values() if "provider" in e)
    first_backup = next((at for at, who in answers if who == "backup" and at > killed_at), None)
    first_back = next((at for at, who in answers if who == "capsolver" and at > back_at), None)
    stats = result["stats"]
    return {
        "captchas": args.captchas,
        "latency": args.latency,
        "cooldown": args.cooldown,
        "down": args.down,
        "unanswered_setting": args.unanswered,
        "lost": len(urls) - len(ended),
        "failed": sum(1 for e in ended.values() if "error" in e),
        "failed_classes": sorted({e["error"] for e in ended.values() if "error" in e}),
        "unanswered_moved": stats.get("capsolver/provider/capsolver/unanswered_moved", 0),
        "sent_to_both": paid_twice(preferred, backup),
        "paid_twice": answered_twice(preferred, backup),
        "answered_by": {
            who: sum(1 for _, by in answers if by == who) for who in ("capsolver", "backup")
        },
        "kill_to_first_backup_answer": None if first_backup is None else first_backup - killed_at,
        "return_to_first_preferred_answer": None if first_back is None else first_back - back_at,
        "breaker_opened": stats.get("capsolver/provider/capsolver/breaker_opened", 0),
        "breaker_closed": stats.get("capsolver/provider/capsolver/breaker_closed", 0),
    }


# The single-service overhead


def overhead(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    base = work / "base"
    base.mkdir()
    archive = subprocess.run(
        ["git", "archive", "--format=tar", args.base, "scrapy_capsolver_ocr"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    (work / "base.tar").write_bytes(archive)
    with tarfile.open(work / "base.tar") as tar:
        tar.extractall(base, filter="data")
    site_process, site = start_server([str(SERVERS / "image_site.py")])
    mock_process, mock = start_server([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY])
    params = {
        "key": API_KEY,
        "api": mock,
        "site": site,
        "captchas": {"kind": "captcha", "count": args.overhead_captchas},
        "concurrency": 16,
        "settings": {"CAPSOLVER_CONCURRENCY": 16, "LOG_LEVEL": "WARNING"},
    }
    rows: dict[str, list[tuple[float, float]]] = {"this": [], "base": []}
    dropped = 0
    try:
        for number in range(args.runs + 1):  # the first pair warms the site's image cache
            # Each run spends from the mock's balance: a fresh one for every pair.
            urllib.request.urlopen(urllib.request.Request(f"{mock}/_reset", b"{}"), timeout=10)
            pair = {
                name: middleware_run(path, params)
                for name, path in (("this", ROOT), ("base", base))
            }
            if number == 0:
                continue
            if None in pair.values():
                dropped += 1  # a run that did not solve every captcha: its pair is left out
                continue
            for name, run in pair.items():
                rows[name].append(run)  # type: ignore[arg-type]
    finally:
        stop_server(mock_process)
        stop_server(site_process)
    this, base_runs = rows["this"], rows["base"]
    # Solves/s moves with whatever else the machine runs; the CPU a solve takes in the
    # crawl's process moves far less: both, each as this tree over the base, pair by pair.
    rate_ratios = [a[0] / b[0] for a, b in zip(this, base_runs, strict=True)]
    cpu_ratios = [a[1] / b[1] for a, b in zip(this, base_runs, strict=True)]
    return {
        "base": args.base,
        "captchas": args.overhead_captchas,
        "pairs_dropped": dropped,
        "solves_per_s_this": [round(run[0]) for run in this],
        "solves_per_s_base": [round(run[0]) for run in base_runs],
        "cpu_us_per_solve_this": [round(run[1]) for run in this],
        "cpu_us_per_solve_base": [round(run[1]) for run in base_runs],
        "median_solves_per_s_ratio": round(statistics.median(rate_ratios), 3),
        "median_cpu_per_solve_ratio": round(statistics.median(cpu_ratios), 3),
        "solves_per_s_ratios": [round(r, 3) for r in rate_ratios],
        "cpu_per_solve_ratios": [round(r, 3) for r in cpu_ratios],
    }


def middleware_run(package_root: Path, params: dict[str, Any]) -> tuple[float, float] | None:
    """One middleware run with the package under ``package_root``: solves/s and CPU µs per
    solve; None if it did not solve every captcha (a run the loaded machine broke, shown in
    the result as dropped)."""
    env = {**os.environ, "PYTHONPATH": str(package_root)}
    run = subprocess.run(
        [sys.executable, str(SCENARIOS), "middleware", json.dumps(params)],
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    try:
        measured = json.loads(run.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return None
    if measured.get("solved") != params["captchas"]["count"]:
        return None
    solved = measured["solved"]
    return solved / measured["solve_span"], measured["cpu"] * 1e6 / solved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crawl", help=argparse.SUPPRESS)
    parser.add_argument("--part", choices=["outage", "overhead", "both"], default="both")
    parser.add_argument("--captchas", type=int, default=500)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--cooldown", type=float, default=2.0)
    parser.add_argument("--down", type=float, default=3.0)
    parser.add_argument(
        "--no-unanswered",
        dest="unanswered",
        action="store_false",
        help="CAPSOLVER_FAILOVER_UNANSWERED = False: tasks lost with the service fail",
    )
    parser.add_argument("--base", default="main", help="git revision of the baseline")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--overhead-captchas", type=int, default=2000)
    parser.add_argument("--write", action="store_true")
    parser.add_argument("--keep", help="keep the logs in this directory")
    args = parser.parse_args()
    if args.crawl:
        crawl(args.crawl)
        return
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as directory:
        if args.keep:
            directory = args.keep
            Path(directory).mkdir(parents=True, exist_ok=True)
        if args.part in ("outage", "both"):
            results["outage"] = outage(args, Path(directory))
        if args.part in ("overhead", "both"):
            results["overhead"] = overhead(args, Path(directory))
    text = json.dumps(results, indent=1)
    print(text)
    if args.write:
        # Each part replaces its own figures: the parts can be run apart.
        path = ROOT / "docs" / "failover-benchmarks.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps({**saved, **results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
