"""The fleet part of the demo (``run_demo.py --fleet N``): N ``scrapy crawl fleet_login``
processes take login jobs from one scrapy-redis queue and share one solving state.

Starts its own ``redis-server`` on a free loopback port unless ``--redis-url`` names one,
pushes the login jobs, runs the processes side by side, and returns what each one did.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from argparse import Namespace
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from push_logins import push_logins

from scrapy_capsolver_ocr.cli import fleet_commands

PROJECT_DIR = Path(__file__).resolve().parent
CRAWL_TIMEOUT = 600.0


class FleetDemoError(Exception):
    """The fleet demo cannot run; the message says why."""


@contextmanager
def redis_server(logs: Path) -> Iterator[str]:
    """A ``redis-server`` of the demo's own (``REDIS_SERVER`` or Debian's), stopped after."""
    binary = os.environ.get("REDIS_SERVER") or shutil.which("redis-server")
    if not binary:
        raise FleetDemoError(
            "The fleet demo needs Redis: install redis-server (apt-get install redis-server) "
            "or give --redis-url."
        )
    for _ in range(5):
        with socket.socket() as probe:  # redis-server cannot bind port 0 and say which
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", str(logs)]
        with (logs / "redis.log").open("ab") as log:
            process = subprocess.Popen(argv, stdout=log, stderr=log)
        if _answers(port, process):
            break
        process.wait()  # the port was taken meanwhile: try another
    else:
        raise FleetDemoError(f"redis-server did not start: see {logs / 'redis.log'}")
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        process.terminate()
        process.wait(10)


def _answers(port: int, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and process.poll() is None:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                if connection.recv(16).startswith(b"+PONG"):
                    return True
        except OSError:
            time.sleep(0.05)
    return False


def run_fleet(
    processes: int,
    logins: int,
    redis_url: str,
    fleet: str,
    env: dict[str, str],
    logs: Path,
    settings: dict[str, Any],
    verbose: bool,
) -> list[dict[str, Any]]:
    """Push ``logins`` jobs, run ``processes`` crawls of ``fleet_login``; their summaries."""
    push_logins(redis_url, logins)
    env = {**env, "REDIS_URL": redis_url}
    crawls = []
    for number in range(1, processes + 1):
        summary = logs / f"fleet_login_{number}.json"
        argv = [sys.executable, "-m", "scrapy", "crawl", "fleet_login"]
        argv += ["-s", f"CAPSOLVER_FLEET={fleet}", "-s", f"DEMO_SUMMARY_PATH={summary}"]
        for name, value in settings.items():
            argv += ["-s", f"{name}={value}"]
        if not verbose:
            argv += ["-s", f"LOG_FILE={logs / f'fleet_login_{number}.log'}"]
        crawls.append((subprocess.Popen(argv, cwd=PROJECT_DIR, env=env), summary))
    results = []
    for process, summary in crawls:
        try:
            process.wait(CRAWL_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.terminate()
            process.wait()
        if not summary.exists():
            raise FleetDemoError(f"A fleet_login process failed: see the logs in {logs}")
        results.append(json.loads(summary.read_text()))
    return results


def result_fields(summary: dict[str, Any]) -> dict[str, Any]:
    """One process's summary as the fields of ``run_demo.SpiderResult``."""
    records = summary["records"]
    stats = summary["stats"]
    attempts = [len(record["answers"]) for record in records.values()]
    return {
        "pattern": "scrapy-redis jobs, shared budget",
        "finish_reason": summary["finish_reason"],
        "seconds": round(stats.get("elapsed_time_seconds", 0.0), 2),
        "logins": len(records),
        "logins_succeeded": sum(1 for record in records.values() if record["succeeded"]),
        "captchas_solved": stats.get("capsolver/solved", 0),
        "wrong_answers": sum(record["wrong_answers"] for record in records.values()),
        "wrong_answers_retried": sum(max(count - 1, 0) for count in attempts),
        "most_attempts": max(attempts, default=0),
        "items": stats.get("item_scraped_count", 0),
        "spent_usd": stats.get("capsolver/spent", 0.0),
        "records": {
            int(login): {**record, "attempts": len(record["answers"])}
            for login, record in records.items()
        },
        "api_tasks": stats.get("capsolver/task_count", 0),
        "local_answers": stats.get("capsolver/local/solved", 0),
        "paid_answers": stats.get("capsolver/task_count", 0),
    }


def demo_fleet(
    args: Namespace, overrides: dict[str, Any], logs: Path, servers: ExitStack
) -> list[dict[str, Any]]:
    """What ``run_demo.py --fleet N`` runs once its servers are up: the fields of each
    process's ``SpiderResult``. A fleet of this run's own: a budget counted by an earlier
    run does not carry over."""
    redis_url = args.redis_url or servers.enter_context(redis_server(logs))
    print(f"Redis:            {redis_url}  (the queue and the fleet's solving state)")
    print(f"Crawling: {args.fleet} fleet_login processes, {args.logins} login jobs\n", flush=True)
    env = {
        **os.environ,
        "DEMO_SITE_URL": overrides["DEMO_SITE_URL"],
        "CAPSOLVER_API_URL": overrides.get("CAPSOLVER_API_URL", ""),
        "CAPSOLVER_API_KEY": overrides.get("CAPSOLVER_API_KEY", ""),
    }
    for name in ("CAPSOLVER_API_URL", "CAPSOLVER_API_KEY"):
        if not env[name]:  # cloud solving: the environment's own, or the default
            env[name] = os.environ.get(name, "")
            if not env[name]:
                del env[name]
    settings = {
        name: overrides[name] for name in ("LOG_LEVEL", "CAPSOLVER_MODULE") if name in overrides
    }
    fleet = f"demo-{uuid.uuid4().hex[:8]}"
    summaries = run_fleet(
        args.fleet, args.logins, redis_url, fleet, env, logs, settings, args.verbose
    )
    # The fleet's own count, now that every process has ended.
    figures = fleet_commands.run(
        redis_url, lambda client: fleet_commands.fleet_figures(client, fleet)
    )
    return [
        {**result_fields(summary), "fleet_api_tasks": figures.tasks_used} for summary in summaries
    ]
