"""Solving at scale, measured: concurrency, the official SDK side by side, the per-solve
overhead, the crawl moving during slow solves (with room made for them, and with Scrapy's
default settings), memory over many solves, the scaling curve.

    pip install matplotlib capsolver          # the plot; the SDK for the side-by-side runs
    python benchmarks/bench_solving.py        # about 10 minutes on 2 cores
    python benchmarks/bench_solving.py --quick

It starts the CapSolver mock (tests/servers/capsolver_mock.py) and the image site
(tests/servers/image_site.py) on 127.0.0.1, runs every measured crawl in a fresh process
(benchmarks/solving_scenarios.py) and writes docs/benchmarks.md, the plot
docs/benchmarks-scaling.png and the raw measurements docs/benchmarks.json
(benchmarks/solving_report.py). ``--profile FILE`` also writes a pyinstrument profile of the
middleware's solving path (``pip install pyinstrument``); ``--report-from JSON`` writes the
report again from saved measurements. Nothing leaves the machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(HERE))
from servers.process import start_server, stop_server  # noqa: E402
from solving_report import write_report  # noqa: E402

SCENARIOS = HERE / "solving_scenarios.py"
SERVERS = ROOT / "tests" / "servers"
API_KEY = "CAP-benchmark-key-0000000000000000"
#: A request waiting for its solve holds one of Scrapy's CONCURRENT_REQUESTS; this many
#: more leave room for the downloads themselves.
DOWNLOAD_ROOM = 16
RUN_TIMEOUT = 600


@dataclass(frozen=True)
class Plan:
    """The sizes of every measurement."""

    repeat: int = 3
    captchas: int = 200
    latency: float = 0.5
    concurrency: int = 50
    sdk_captchas: int = 200
    overhead_solves: int = 2000
    overhead_concurrency: int = 16
    pages: int = 1000
    slow_solves: int = 200
    default_pages: int = 1000
    default_solves: int = 200
    default_latency: float = 3.0
    memory_solves: int = 10_000
    image_size: int = 30_000
    scaling: tuple[int, ...] = (1, 4, 16, 64, 256)
    scaling_latency: float = 0.2
    scaling_rounds: int = 8

    def scaling_solves(self, concurrency: int) -> int:
        return max(10, self.scaling_rounds * concurrency)

    @property
    def pool_size(self) -> int:
        """Distinct captcha pictures needed: every solve in a run is of a new image."""
        return max(
            self.captchas,
            self.sdk_captchas,
            self.overhead_solves,
            self.slow_solves,
            self.default_solves,
            *(self.scaling_solves(c) for c in self.scaling),
        )


QUICK = Plan(
    repeat=2,
    sdk_captchas=50,
    overhead_solves=500,
    pages=300,
    slow_solves=100,
    default_pages=300,
    default_solves=60,
    memory_solves=2000,
    scaling_rounds=4,
)


def captchas(count: int) -> dict[str, Any]:
    return {"kind": "captcha", "count": count}


def room(concurrency: int) -> dict[str, int]:
    """Settings that let ``concurrency`` solves be in flight while pages still download."""
    return {
        "CAPSOLVER_CONCURRENCY": concurrency,
        "CONCURRENT_REQUESTS": concurrency + DOWNLOAD_ROOM,
        "CONCURRENT_REQUESTS_PER_DOMAIN": DOWNLOAD_ROOM,
    }


class Bench:
    """Runs measured processes against one mock and one image site."""

    def __init__(self, plan: Plan, mock_url: str, site_url: str, log_dir: Path) -> None:
        self.plan = plan
        self.mock_url = mock_url
        self.site_url = site_url
        self.log_dir = log_dir
        self.runs = 0

    def _control(self, path: str, data: dict[str, Any] | None = None) -> Any:
        body = None if data is None else json.dumps(data).encode()
        with urllib.request.urlopen(self.mock_url + path, data=body, timeout=30) as answer:
            return json.loads(answer.read() or b"null")

    def reset_mock(self, latency: float) -> None:
        """Fresh counters; ``latency`` seconds on createTask only (the balance reads at the
        start and end of a crawl stay instant, as they do not depend on solving)."""
        self._control("/_reset", {})
        faults = [{"fault": "latency", "method": "createTask", "seconds": latency}]
        self._control("/_config", {"balance": 1e9, "faults": faults if latency else []})

    def run(self, kind: str, **params: Any) -> dict[str, Any]:
        """One measured process; its last stdout line is the JSON of its measurements."""
        params.update(site=self.site_url, api=self.mock_url, key=API_KEY)
        self.runs += 1
        log = self.log_dir / f"{self.runs:03d}-{kind}-{params.get('solve', '')}.log"
        argv = [sys.executable, str(SCENARIOS), kind, json.dumps(params)]
        with open(log, "w") as stderr:
            done = subprocess.run(
                argv, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=RUN_TIMEOUT
            )
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            raise RuntimeError(f"{kind} run failed (exit {done.returncode}); see {log}")
        result: dict[str, Any] = json.loads(lines[-1])
        result["log"] = str(log)
        return result

    def measured(
        self, kind: str, latency: float = 0.0, call_times: bool = False, **params: Any
    ) -> dict[str, Any]:
        """A run against a freshly reset mock, with the most calls the mock saw at once
        and, with ``call_times``, when each createTask call reached the mock (seconds
        after the first)."""
        self.reset_mock(latency)
        result = self.run(kind, **params)
        result["api_max_in_flight"] = self._control("/_stats")["max_in_flight"]
        if call_times:
            times = sorted(c["at"] for c in self._control("/_calls") if c["method"] == "createTask")
            result["call_times"] = [t - times[0] for t in times]
        return result

    def repeated(self, kind: str, key: str, **params: Any) -> dict[str, Any]:
        """The fastest of ``plan.repeat`` runs by ``key`` (other processes on a shared
        machine only ever slow a run down), with every run's value kept."""
        return self.interleaved(kind, key, {"": params})[""]

    def interleaved(
        self, kind: str, key: str, variants: dict[str, dict[str, Any]]
    ) -> dict[str, dict[str, Any]]:
        """:meth:`repeated` for each variant, the runs taken in turns (one of each,
        ``plan.repeat`` times) so that the variants compared meet the same load."""
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in variants}
        for _ in range(self.plan.repeat):
            for name, params in variants.items():
                runs[name].append(self.measured(kind, **params))
        best = {}
        for name, results in runs.items():
            best[name] = min(results, key=lambda r: r[key])
            best[name]["all_" + key] = [r[key] for r in results]
        return best


def say(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else math.inf


# The measurements, one function each; each returns plain data for the report.


def concurrency(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    common: dict[str, Any] = {"latency": plan.latency, "captchas": captchas(plan.captchas)}
    best = bench.repeated(
        "crawl", "solve_span", settings=room(plan.concurrency), call_times=True, **common
    )
    # Scrapy's own defaults (CONCURRENT_REQUESTS = 16), which the add-on raises.
    defaults = bench.measured(
        "crawl", settings={"CAPSOLVER_CONCURRENCY": plan.concurrency}, **common
    )
    # Neither the add-on's room nor lent slots: at most 16 solves can be in flight.
    no_room = bench.measured(
        "crawl",
        settings={"CAPSOLVER_CONCURRENCY": plan.concurrency, "CAPSOLVER_ADD_REQUEST_SLOTS": False},
        **common,
    )
    return {
        "captchas": plan.captchas,
        "latency": plan.latency,
        "concurrency": plan.concurrency,
        "ideal": math.ceil(plan.captchas / plan.concurrency) * plan.latency,
        "plugin": best,
        "scrapy_defaults": defaults,
        "no_request_slots": no_room,
    }


def side_by_side(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    common: dict[str, Any] = {"latency": plan.latency, "captchas": captchas(plan.sdk_captchas)}
    common["call_times"] = True
    settings = room(plan.concurrency)
    sized = {**settings, "REACTOR_THREADPOOL_MAXSIZE": plan.concurrency}
    rows = bench.interleaved(
        "crawl",
        "wall",
        {
            "plugin": {"settings": settings, **common},
            "sdk_thread_pool": {"solve": "sdk_thread", "settings": settings, **common},
            "sdk_thread_pool_sized": {"solve": "sdk_thread", "settings": sized, **common},
        },
    )
    # Once: it takes captchas x latency seconds, and a busy machine barely changes that.
    rows["sdk_blocking"] = bench.measured("crawl", solve="sdk", settings=settings, **common)
    return {
        "captchas": plan.sdk_captchas,
        "latency": plan.latency,
        "concurrency": plan.concurrency,
        "sdk_version": package_version("capsolver"),
        "rows": rows,
    }


def overhead(bench: Bench, profile: str | None) -> dict[str, Any]:
    """Solves/s through the middleware against a bare treq loop; with pyinstrument
    installed, also where the middleware run's time goes."""
    plan = bench.plan
    count, conc = plan.overhead_solves, plan.overhead_concurrency
    common: dict[str, Any] = {"captchas": captchas(count), "concurrency": conc}
    bare: list[dict[str, Any]] = []
    middleware: list[dict[str, Any]] = []
    for _ in range(plan.repeat):  # interleaved, so that both meet the same load
        bare.append(bench.measured("bare", **common))
        middleware.append(
            bench.measured("middleware", settings={"CAPSOLVER_CONCURRENCY": conc}, **common)
        )
    crawl_settings = room(conc)
    solved = bench.repeated("crawl", "solve_span", settings=crawl_settings, **common)
    downloaded = bench.repeated(
        "crawl", "solve_span", solve="none", settings=crawl_settings, **common
    )
    # Scrapy 2.19 starts CONCURRENT_ITEMS (100) tasks for every callback's output.
    few_items = bench.repeated(
        "crawl",
        "solve_span",
        solve="none",
        settings={**crawl_settings, "CONCURRENT_ITEMS": 1},
        **common,
    )
    profiled: dict[str, Any] = {}
    if profile:
        profiled = bench.measured(
            "middleware", settings={"CAPSOLVER_CONCURRENCY": conc}, profile=profile, **common
        )
    return {
        "solves": count,
        "concurrency": conc,
        "bare": fastest(bare),
        "middleware": fastest(middleware),
        "crawl_solved": solved,
        "crawl_downloaded": downloaded,
        "crawl_downloaded_one_item": few_items,
        "profile_parts": profiled.get("profile_parts"),
    }


def fastest(runs: list[dict[str, Any]]) -> dict[str, Any]:
    best = dict(min(runs, key=lambda r: r["solve_span"]))
    best["all_solve_span"] = [r["solve_span"] for r in runs]
    best["median_cpu"] = statistics.median(r["cpu"] for r in runs)
    return best


def crawl_moves(bench: Bench) -> dict[str, Any]:
    """Pages per second while slow solves wait, against the same crawl whose captcha
    images are downloaded but not solved (the control), and against pages alone."""
    plan = bench.plan
    settings = room(plan.slow_solves)
    common: dict[str, Any] = {"pages": plan.pages, "settings": settings}
    # The pages start once every captcha image is downloaded (its solve sent).
    after: dict[str, Any] = {"captchas": captchas(plan.slow_solves), "pages_after_captchas": True}
    pages_only = bench.repeated("crawl", "page_span", **common)
    control = bench.repeated("crawl", "page_span", solve="none", **after, **common)
    # Slow enough that every solve is still in flight when the last page arrives.
    slow = max(3.0, math.ceil(3 * statistics.median(control["all_page_span"]) * 2) / 2)
    loaded = bench.repeated("crawl", "page_span", latency=slow, **after, **common)
    return {
        "pages": plan.pages,
        "slow_solves": plan.slow_solves,
        "latency": slow,
        "pages_only": pages_only,
        "control": control,
        "with_solves": loaded,
    }


def defaults(bench: Bench) -> dict[str, Any]:
    """Pages per second while slow solves wait, with Scrapy's and the plugin's default
    settings (only the add-on enabled): the pages and the captchas mixed in one crawl,
    against the same crawl whose captchas are downloaded but not solved."""
    plan = bench.plan
    pages, solves = plan.default_pages, plan.default_solves
    common: dict[str, Any] = {"pages": pages, "settings": {}}
    mixed: dict[str, Any] = {"captchas": captchas(solves), "captcha_every": pages // solves}
    runs = bench.interleaved(
        "crawl",
        "page_span",
        {
            "pages_only": common,
            "control": {"solve": "none", **mixed, **common},
            "with_solves": {"latency": plan.default_latency, **mixed, **common},
        },
    )
    # Neither the add-on's room nor lent slots: every solve holds one of Scrapy's 16 request
    # slots. Once: the pages then crawl at the pace of the solves.
    no_room = bench.measured(
        "crawl",
        latency=plan.default_latency,
        pages=pages,
        settings={"CAPSOLVER_ADD_REQUEST_SLOTS": False},
        **mixed,
    )
    return {
        "pages": pages,
        "solves": solves,
        "latency": plan.default_latency,
        **runs,
        "no_request_slots": no_room,
    }


def memory(bench: Bench) -> dict[str, Any]:
    """The same crawl with the solution cache at its default size and turned off: if the
    cache kept images, the first would grow by 1,024 of them."""
    plan = bench.plan
    runs = {}
    for name, cache_size in (("default", 1024), ("cache_off", 0)):
        runs[name] = bench.measured(
            "crawl",
            captchas={"kind": "noise", "count": plan.memory_solves, "size": plan.image_size},
            rss_every=max(1, plan.memory_solves // 20),
            settings={
                **room(plan.overhead_concurrency),
                "CAPSOLVER_CACHE_SIZE": cache_size,
                "CAPSOLVER_LOGSTATS_INTERVAL": 2,
            },
        )
    runs["default"]["progress_lines"] = progress_lines(Path(runs["default"]["log"]))
    return {
        "solves": plan.memory_solves,
        "image_size": plan.image_size,
        "concurrency": plan.overhead_concurrency,
        "run": runs["default"],
        "cache_off": runs["cache_off"],
    }


def progress_lines(log: Path, limit: int = 3) -> list[str]:
    """The plugin's periodic progress lines from a crawl's log, as a reader sees them."""
    lines = [line.rstrip() for line in log.read_text().splitlines() if "Captchas: " in line]
    return lines[:limit]


def scaling(bench: Bench) -> dict[str, Any]:
    plan = bench.plan
    points = []
    for conc in plan.scaling:
        count = plan.scaling_solves(conc)
        best = bench.repeated(
            "crawl",
            "solve_span",
            latency=plan.scaling_latency,
            captchas=captchas(count),
            settings=room(conc),
        )
        points.append({"concurrency": conc, "solves": count, "run": best})
        say(f"  concurrency {conc}: {rate(count, best['solve_span']):.1f} solves/s")
    return {"latency": plan.scaling_latency, "points": points}


# Setting up, and the facts of the machine.


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    mock, mock_url = start_server([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY])
    try:
        site, site_url = start_server([str(SERVERS / "image_site.py")])
        try:
            yield mock_url, site_url
        finally:
            stop_server(site)
    finally:
        stop_server(mock)


def warm_site(site_url: str, count: int) -> None:
    """Have the image site draw every captcha once, so that no measured run waits for the
    drawing (about 4 ms a picture) rather than for the download."""

    def fetch(index: int) -> None:
        with urllib.request.urlopen(f"{site_url}/captcha/b{index:05d}.png", timeout=60) as a:
            a.read()

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fetch, range(count)))


def profile_path(args: argparse.Namespace, log_dir: Path) -> str | None:
    """Where the middleware's profile goes: ``--profile``, else beside the run logs when
    pyinstrument is installed (the page shows the breakdown either way)."""
    if args.profile:
        return str(Path(args.profile).resolve())
    if package_version("pyinstrument") is None:
        return None
    return str(log_dir / "middleware-profile.txt")


def package_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def machine_facts() -> dict[str, Any]:
    cpu_model = ""
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {
            name: package_version(name)
            for name in ("scrapy", "twisted", "treq", "scrapy-capsolver-ocr", "capsolver")
        },
        "load_before": os.getloadavg(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


STEPS: dict[str, Callable[[Bench, argparse.Namespace], dict[str, Any]]] = {
    "concurrency": lambda bench, args: concurrency(bench),
    "side_by_side": lambda bench, args: side_by_side(bench),
    "overhead": lambda bench, args: overhead(bench, profile_path(args, bench.log_dir)),
    "crawl_moves": lambda bench, args: crawl_moves(bench),
    "defaults": lambda bench, args: defaults(bench),
    "memory": lambda bench, args: memory(bench),
    "scaling": lambda bench, args: scaling(bench),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs, fewer repeats")
    parser.add_argument("--repeat", type=int, help="runs of each short measurement")
    parser.add_argument("--only", nargs="+", choices=sorted(STEPS), help="measure only these")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--profile", help="write a pyinstrument profile of the middleware here")
    parser.add_argument(
        "--report-from", type=Path, help="measure nothing: write the report from this JSON"
    )
    args = parser.parse_args()
    if args.report_from:
        for path in write_report(json.loads(args.report_from.read_text()), args.out):
            say(f"wrote {path}")
        return
    plan = QUICK if args.quick else Plan()
    if args.repeat:
        plan = replace(plan, repeat=args.repeat)
    if package_version("capsolver") is None and "side_by_side" in (args.only or STEPS):
        parser.error("the side-by-side runs need the official SDK: pip install capsolver")

    facts = machine_facts()
    command = "python benchmarks/bench_solving.py " + shlex.join(sys.argv[1:])
    results: dict[str, Any] = {"command": command.strip(), "plan": asdict(plan), "facts": facts}
    started = time.perf_counter()
    logs = Path(tempfile.mkdtemp(prefix="bench-solving-"))
    with servers() as urls:
        bench = Bench(plan, *urls, log_dir=logs)
        say(f"warming the image site ({plan.pool_size} captchas)")
        warm_site(bench.site_url, plan.pool_size)
        for name in args.only or STEPS:
            say(f"measuring: {name}")
            results[name] = STEPS[name](bench, args)
    facts["load_after"] = os.getloadavg()
    facts["total_seconds"] = time.perf_counter() - started
    for path in write_report(results, args.out):
        say(f"wrote {path}")
    # Kept when a run fails (the error names its log); not needed once all went well.
    shutil.rmtree(logs)


if __name__ == "__main__":
    main()
