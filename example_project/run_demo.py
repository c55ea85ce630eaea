"""The demo: captcha logins on a local website, solved by a local OCR server, in one command.

Starts the demo site (``demo_site/server.py``) and, without a CapSolver key, the local
CapSolver-compatible OCR server (``scrapy-capsolver-ocr serve``), each on a free loopback
port; runs the example project's spiders for ``--logins`` logins each; prints a summary;
and stops both servers whatever happens. With ``CAPSOLVER_API_KEY`` in the environment the
same spiders solve through CapSolver's cloud (or ``CAPSOLVER_API_URL``) instead, and only
the demo site is started.

    python example_project/run_demo.py [--logins 5] [--digits] [--browser] [--spider NAME]
                                       [--local-first]
    python example_project/run_demo.py --fleet 3 [--logins 12] [--redis-url URL]
    python example_project/run_demo.py --failover [--logins 30] [--outage 1.5]

``--local-first`` reads each captcha on this machine first (``CAPSOLVER_LOCAL_OCR``) and
sends only the ones it is not sure of to the API (the local OCR server standing in for
CapSolver, or CapSolver itself with a key); the summary says how many were free.
``--fleet N`` runs the fleet example instead: N ``scrapy crawl fleet_login`` processes share
login jobs from a scrapy-redis queue and one captcha budget (``fleet_demo.py``).
``--failover`` starts two local OCR servers, one answering CapSolver's dialect and one
Anti-Captcha's (at ``/anticaptcha/``), lists both in ``CAPSOLVER_PROVIDERS``, kills the
preferred one partway through the crawl and starts it again ``--outage`` seconds later; the
summary shows the calls and answers of each service and when tasks moved back
(``failover_demo.py``).

``bash scripts/demo.sh`` sets up a virtual environment and runs this.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import logging
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

PROJECT_DIR = Path(__file__).resolve().parent
DEMO_SITE = PROJECT_DIR / "demo_site" / "server.py"
# Scrapy's cookie middleware looks up the public suffix list online the first time it runs
# in an environment; the demo promises no traffic beyond loopback, so it uses the copy that
# ships with tldextract.
os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
SETTINGS_MODULE = "demo_crawler.settings"
#: A healthy server prints its URL within a second or two; the OCR model takes longest.
STARTUP_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
#: The example project's spiders, and how each one solves its captchas.
PATTERNS = {
    "image_login": "image request, spider retries",
    "page_login": "page mode, injection, captcha_retry_if",
    "browser_login": "Playwright page, element screenshot",
}
#: --failover's logins per spider: the crawl lasts past the outage, so the return shows.
FAILOVER_LOGINS = 30
#: The spiders that need scrapy-playwright and a Chromium: run with --browser.
BROWSER_SPIDERS = ("browser_login",)
#: Scrapy's start-up lines (versions, settings, middlewares...), hidden unless --verbose.
STARTUP_LOGGERS = (
    "scrapy.addons",
    "scrapy.crawler",
    "scrapy.extensions.remote_control",
    "scrapy.middleware",
    "scrapy.utils.log",
)


class DemoError(Exception):
    """The demo cannot go on; the message says why."""


# Servers


@dataclass
class Server:
    name: str
    process: subprocess.Popen[bytes]
    url: str
    log: Path


def _server_signals() -> None:
    """Run in each server process before it starts: the demo alone stops its servers."""
    # Ctrl-C reaches every process of the terminal's group: the servers must outlive it
    # until the crawl that uses them has stopped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Linux: the server gets SIGTERM if the demo dies without stopping it (kill -9).
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGTERM)


@contextmanager
def running(
    name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run ``argv`` (a server that prints its URL first on stdout); stop it on leaving."""
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            env=env,
            preexec_fn=_server_signals,  # safe: runs before any thread or reactor starts
        )
    try:
        assert process.stdout is not None
        url = _first_line(process.stdout, STARTUP_TIMEOUT)
        if not url.startswith("http://"):
            raise DemoError(f"The {name} did not start:\n{_tail(log)}")
        yield Server(name, process, url, log)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _first_line(stream: IO[bytes], timeout: float) -> str:
    lines: queue.Queue[bytes] = queue.Queue()

    def read() -> None:
        with stream:
            lines.put(stream.readline())
            for _ in stream:  # keeps the pipe drained
                pass

    threading.Thread(target=read, daemon=True).start()
    try:
        return lines.get(timeout=timeout).decode().strip()
    except queue.Empty:
        return ""


def _tail(log: Path, lines: int = 5) -> str:
    text = log.read_text(errors="replace").strip().splitlines()
    return "\n".join(f"    {line}" for line in text[-lines:]) or "    (no output)"


# Crawling


@dataclass
class SpiderResult:
    pattern: str
    finish_reason: str
    seconds: float
    logins: int
    logins_succeeded: int
    captchas_solved: int
    wrong_answers: int
    wrong_answers_retried: int
    most_attempts: int
    items: int
    spent_usd: float
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: Captchas the local engine answered (local-first), and createTask calls made.
    local_answers: int = 0
    paid_answers: int = 0
    #: Fleet mode: createTask calls of this process, and of the whole fleet at its end.
    api_tasks: int = 0
    fleet_api_tasks: int | None = None


@dataclass
class Summary:
    solver: str  # "local" or "cloud"
    api_url: str
    captchas: str  # "noisy" or "digits"
    max_attempts: int
    local_first: bool = False
    seconds: float = 0.0
    spiders: dict[str, SpiderResult] = field(default_factory=dict)
    #: --failover: each service's calls and answers, and the outage's moments.
    failover: dict[str, Any] | None = None

    @property
    def logins(self) -> int:
        return sum(result.logins for result in self.spiders.values())

    @property
    def logins_succeeded(self) -> int:
        return sum(result.logins_succeeded for result in self.spiders.values())


def crawl(
    spiders: Sequence[str],
    logins: int,
    overrides: dict[str, Any],
    verbose: bool,
    on_start: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run ``spiders`` side by side with the project's settings plus ``overrides``; return
    each spider's crawler once all have finished. ``on_start`` gets the crawlers just before
    the crawl starts."""
    sys.path.insert(0, str(PROJECT_DIR))
    from scrapy.crawler import CrawlerProcess
    from scrapy.settings import Settings

    settings = Settings()
    settings.setmodule(SETTINGS_MODULE, priority="project")
    settings.setdict(overrides, priority="cmdline")
    if not verbose:
        for name in STARTUP_LOGGERS:
            # A filter, not a level: Scrapy resets the levels of its loggers at crawl start.
            logging.getLogger(name).addFilter(_warnings_only)
    process = CrawlerProcess(settings)
    crawlers = {}
    for name in spiders:
        crawler = process.create_crawler(name)
        process.crawl(crawler, logins=logins)
        crawlers[name] = crawler
    if on_start is not None:
        on_start(crawlers)
    process.start()
    return crawlers


def _warnings_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING


def spider_result(name: str, crawler: Any) -> SpiderResult:
    stats = crawler.stats.get_stats()
    records = crawler.spider.records
    elapsed = stats.get("elapsed_time_seconds", 0.0)
    return SpiderResult(
        pattern=PATTERNS.get(name, ""),
        finish_reason=str(stats.get("finish_reason", "")),
        seconds=round(elapsed, 2),
        logins=len(records),
        logins_succeeded=sum(1 for record in records.values() if record.succeeded),
        captchas_solved=stats.get("capsolver/solved", 0),
        wrong_answers=sum(record.wrong_answers for record in records.values()),
        # Every attempt after a login's first follows a refused answer.
        wrong_answers_retried=sum(max(record.attempts - 1, 0) for record in records.values()),
        most_attempts=max((record.attempts for record in records.values()), default=0),
        items=stats.get("item_scraped_count", 0),
        spent_usd=stats.get("capsolver/spent", 0.0),
        local_answers=stats.get("capsolver/local/solved", 0),
        paid_answers=stats.get("capsolver/task_count", 0),
        records={
            login: {**asdict(record), "attempts": record.attempts}
            for login, record in records.items()
        },
    )


def print_summary(summary: Summary) -> None:
    if summary.failover is not None:
        solver = f"{summary.api_url} (ddddocr on this machine, no account)"
    elif summary.solver == "local":
        solver = f"local OCR server at {summary.api_url} (ddddocr on this machine, no account)"
    else:
        spent = sum(result.spent_usd for result in summary.spiders.values())
        solver = f"{summary.api_url} with CAPSOLVER_API_KEY; {spent:.4f} USD spent"
    if summary.captchas == "digits":
        style = "4 digits, little distortion (demo site --digits)"
    else:
        style = "4 noisy letters and digits (the captcha package's default look)"
    header = ("spider", "how", "logins ok", "captchas solved", "local", "paid", "saved")
    rows = [(*header, "wrong answers", "retried", "most tries", "items", "time")]
    for name, result in summary.spiders.items():
        rows.append(
            (
                name,
                result.pattern,
                f"{result.logins_succeeded} of {result.logins}",
                str(result.captchas_solved),
                str(result.local_answers),
                str(result.paid_answers),
                _share(result.local_answers, result.captchas_solved),
                str(result.wrong_answers),
                str(result.wrong_answers_retried),
                f"{result.most_attempts} of {summary.max_attempts}",
                str(result.items),
                f"{result.seconds:.1f} s",
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    print("\n== Demo summary")
    print(f"Solver:   {solver}")
    print(f"Captchas: {style}\n")
    for row in rows:
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        print("  " + "  ".join(cells).rstrip())
    for name, result in summary.spiders.items():
        if result.finish_reason != "finished":
            print(f"  {name} stopped early: {result.finish_reason}")
    answered = sum(result.captchas_solved for result in summary.spiders.values())
    refused = sum(result.wrong_answers for result in summary.spiders.values())
    if answered:
        right = answered - refused
        print(f"\nAnswers the site accepted: {right} of {answered} ({right / answered:.0%}).")
    if summary.local_first:
        local = sum(result.local_answers for result in summary.spiders.values())
        paid = sum(result.paid_answers for result in summary.spiders.values())
        stand_in = " (answered by the local OCR server standing in for CapSolver)"
        print(
            f"Local first: {local} captchas read on this machine for free, {paid} sent to the "
            f"API{stand_in if summary.solver == 'local' else ''}: "
            f"{_share(local, local + paid)} of the paid calls saved."
        )
    if summary.failover is not None:
        from failover_demo import failover_lines

        print("\n".join(failover_lines(summary.failover)))
    fleet = [r.fleet_api_tasks for r in summary.spiders.values() if r.fleet_api_tasks is not None]
    if fleet:
        own = ", ".join(str(result.api_tasks) for result in summary.spiders.values())
        print(
            f"One fleet, one budget: {max(fleet)} API tasks in all ({own} by each process; "
            "an image is paid for once in the whole fleet)."
        )
    print(
        f"{summary.logins_succeeded} of {summary.logins} logins succeeded; "
        f"{summary.seconds:.1f} s in all, servers included."
    )


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


# The demo


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--logins",
        type=int,
        help="logins per spider (default: 5; with --failover 30, so that the crawl outlasts "
        "the outage)",
    )
    parser.add_argument(
        "--spider",
        action="append",
        choices=sorted(PATTERNS),
        help="run this spider (repeatable; default: all but the browser ones)",
    )
    parser.add_argument(
        "--browser",
        action="store_true",
        help="also log in in a real browser (needs scrapy-playwright and a Chromium)",
    )
    parser.add_argument(
        "--digits",
        action="store_true",
        help="4-digit captchas, which offline OCR reads 97 %% of the time (default: the "
        "captcha package's noisy letters and digits, about 60 %%)",
    )
    parser.add_argument(
        "--local-first",
        action="store_true",
        help="read each captcha locally first (CAPSOLVER_LOCAL_OCR) and pay only for the "
        "ones the engine is not sure of",
    )
    parser.add_argument(
        "--fleet",
        type=int,
        default=0,
        metavar="N",
        help="fleet mode: N `scrapy crawl fleet_login` processes take --logins login jobs "
        "from one scrapy-redis queue and share one captcha budget in Redis",
    )
    parser.add_argument(
        "--redis-url", help="the fleet's Redis (default: a redis-server of the demo's own)"
    )
    parser.add_argument(
        "--failover",
        action="store_true",
        help="two local OCR servers in CAPSOLVER_PROVIDERS (CapSolver's and Anti-Captcha's "
        "dialects); the preferred one is killed partway through the crawl, then started again",
    )
    parser.add_argument(
        "--outage",
        type=float,
        default=1.5,
        metavar="SECONDS",
        help="--failover: how long the preferred server stays down (default: 1.5)",
    )
    parser.add_argument("--workers", type=int, default=2, help="OCR threads (default: 2)")
    parser.add_argument("--summary-json", type=Path, help="also write the summary here")
    parser.add_argument("-v", "--verbose", action="store_true", help="Scrapy's whole log")
    args = parser.parse_args(argv)
    if args.logins is None:
        args.logins = FAILOVER_LOGINS if args.failover else 5
    if args.logins < 1:
        parser.error("--logins must be at least 1")
    if args.fleet < 0 or (args.fleet and (args.spider or args.browser)):
        parser.error("--fleet N runs N fleet_login processes: give no --spider or --browser")
    if args.failover and (args.fleet or args.local_first):
        parser.error("--failover runs on its own: give no --fleet or --local-first")
    if args.outage <= 0:
        parser.error("--outage must be more than 0")
    return args


def check_browser_support() -> None:
    try:
        import scrapy_playwright  # noqa: F401
    except ImportError:
        raise DemoError(
            'Logging in in a browser needs scrapy-playwright: pip install ".[playwright]" '
            "(bash scripts/demo.sh --browser installs it), and a Chromium: "
            "`playwright install chromium`, Debian's chromium, or CHROMIUM_PATH."
        ) from None


def run(args: argparse.Namespace, logs: Path) -> Summary:
    spiders = args.spider or [name for name in PATTERNS if name not in BROWSER_SPIDERS]
    if args.browser:
        spiders += [name for name in BROWSER_SPIDERS if name not in spiders]
    if any(name in BROWSER_SPIDERS for name in spiders):
        check_browser_support()
    cloud_key = os.environ.get("CAPSOLVER_API_KEY")
    overrides: dict[str, Any] = {
        "LOG_LEVEL": "DEBUG" if args.verbose else "INFO",
        "LOG_FORMAT": "%(asctime)s [%(name)s] %(message)s",
        "LOG_DATEFORMAT": "%H:%M:%S",
        "STATS_DUMP": args.verbose,
    }
    if args.digits:
        overrides["CAPSOLVER_MODULE"] = "number"
    if args.local_first:
        # The demo site's answers have 4 characters: read locally from the first captcha
        # on (the characters are learnt from the answers the site accepts).
        overrides.update(CAPSOLVER_LOCAL_OCR=True, CAPSOLVER_LOCAL_LENGTH=4)
    site_argv = [sys.executable, str(DEMO_SITE), "--host", "127.0.0.1", "--port", "0"]
    if args.digits:
        site_argv.append("--digits")
    started = time.perf_counter()
    with ExitStack() as servers:
        site = servers.enter_context(running("demo site", site_argv, logs / "demo_site.log"))
        overrides["DEMO_SITE_URL"] = site.url
        print(f"Demo site:        {site.url}  (log in as demo / demo)", flush=True)
        outage = None
        if args.failover:
            from failover_demo import FailoverServers

            solver = "local"
            outage = servers.enter_context(FailoverServers(args, logs, running, overrides))
            api_url = outage.describe()
        elif cloud_key:
            solver = "cloud"
            api_url = os.environ.get("CAPSOLVER_API_URL") or "https://api.capsolver.com"
            print(f"Captcha solving:  {api_url}, with the key in CAPSOLVER_API_KEY", flush=True)
        else:
            solver = "local"
            # The plugin always sends a key; a fresh one the server requires keeps other
            # programs on this machine from using it meanwhile.
            key = secrets.token_urlsafe(24)
            env = {**os.environ, "CAPSOLVER_OCR_REQUIRE_KEY": key}
            ocr_argv = [sys.executable, "-m", "scrapy_capsolver_ocr", "serve", "--port", "0"]
            ocr_argv += ["--workers", str(args.workers)]
            ocr = servers.enter_context(
                running("local OCR server", ocr_argv, logs / "ocr_server.log", env)
            )
            api_url = ocr.url
            overrides.update(CAPSOLVER_API_URL=api_url, CAPSOLVER_API_KEY=key)
            print(
                f"Local OCR server: {api_url}  (no CAPSOLVER_API_KEY: solving locally)", flush=True
            )
        failover = None
        if args.fleet:
            results = fleet(args, overrides, logs, servers)
        else:
            print(f"Crawling: {', '.join(spiders)}, {args.logins} logins each\n", flush=True)
            watch = outage.watch if outage is not None else None
            crawlers = crawl(spiders, args.logins, overrides, args.verbose, watch)
            results = {name: spider_result(name, crawler) for name, crawler in crawlers.items()}
            failover = outage.summary(crawlers) if outage is not None else None
    return Summary(
        solver=solver,
        api_url=api_url,
        captchas="digits" if args.digits else "noisy",
        max_attempts=project_setting("CAPSOLVER_MAX_ATTEMPTS"),
        local_first=args.local_first,
        seconds=round(time.perf_counter() - started, 2),
        spiders=results,
        failover=failover,
    )


def project_setting(name: str) -> Any:
    sys.path.insert(0, str(PROJECT_DIR))
    from demo_crawler import settings

    return getattr(settings, name)


def fleet(
    args: argparse.Namespace, overrides: dict[str, Any], logs: Path, servers: ExitStack
) -> dict[str, SpiderResult]:
    """``--fleet N``: the fleet example's processes, each summed up as a spider's run."""
    from fleet_demo import FleetDemoError, demo_fleet

    try:
        processes = demo_fleet(args, overrides, logs, servers)
    except FleetDemoError as exc:
        raise DemoError(str(exc)) from None
    return {f"fleet_login #{n}": SpiderResult(**fields) for n, fields in enumerate(processes, 1)}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # Before the crawl starts, Ctrl-C and a plain kill still stop the servers on the way out
    # (a background job of a script starts with Ctrl-C ignored: scripts/demo.sh runs this
    # one so); during the crawl, Scrapy's own handlers stop it gracefully.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    logs = Path(tempfile.mkdtemp(prefix="scrapy-capsolver-demo-"))
    finished = ok = False
    try:
        summary = run(args, logs)
        print_summary(summary)
        if args.summary_json:
            totals = {"logins": summary.logins, "logins_succeeded": summary.logins_succeeded}
            data = asdict(summary) | totals
            args.summary_json.write_text(json.dumps(data, indent=2) + "\n")
        finished = all(result.finish_reason == "finished" for result in summary.spiders.values())
        ok = finished and summary.logins_succeeded > 0
    except DemoError as exc:
        print(f"demo: {exc}", file=sys.stderr)
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
    finally:
        # The servers' logs matter only when something stopped the demo halfway.
        if finished:
            shutil.rmtree(logs, ignore_errors=True)
        else:
            print(f"The servers' logs are kept in {logs}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
