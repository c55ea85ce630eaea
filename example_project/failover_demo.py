"""``run_demo.py --failover``: one crawl, two solving services, and an outage of the first.

Two local OCR servers stand in for two paid services: the preferred one answers CapSolver's
dialect at its root, the other Anti-Captcha's under ``/anticaptcha/``, each with a key of its
own; ``CAPSOLVER_PROVIDERS`` lists both, CapSolver first. Once the crawl has sent the
preferred server a few answers, a thread kills it (SIGKILL: an outage, not a shutdown), so
tasks move to Anti-Captcha; ``--outage`` seconds later it starts it again on the same port,
and after the cool-down one task probes it and the crawl is back on it. The summary counts
each service's calls (``capsolver/provider/<name>/task_count``) and answers (the spiders'
``demo/answers/<name>``), and says when each moment came.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PREFERRED, BACKUP = "capsolver", "anticaptcha"
#: Answers the preferred service gives before its outage (more with more logins).
ANSWERS_BEFORE_OUTAGE = 3
#: Seconds a failed service rests before one task tries it again: short, for a demo.
COOLDOWN = 1.0
POLL = 0.05

#: ``run_demo.running``: starts a server, yields it, stops it on leaving.
Running = Callable[..., AbstractContextManager[Any]]


class FailoverServers:
    """The two servers, the settings that name them, and the outage of the first."""

    def __init__(
        self, args: argparse.Namespace, logs: Path, running: Running, overrides: dict[str, Any]
    ) -> None:
        self._args, self._logs, self._running = args, logs, running
        self._overrides = overrides
        self._stack = ExitStack()
        self._again = ExitStack()  # the preferred server once started again
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._started = 0.0
        self._crawlers: dict[str, Any] = {}
        #: Seconds from the crawl's start: killed, started again, first backup answer, back.
        self.moments: dict[str, float] = {}
        self.answers_before_outage = max(ANSWERS_BEFORE_OUTAGE, args.logins // 4)

    def __enter__(self) -> FailoverServers:
        keys = {name: secrets.token_urlsafe(24) for name in (PREFERRED, BACKUP)}
        self._keys = keys
        self.preferred = self._stack.enter_context(self._serve(PREFERRED, 0, "ocr_server.log"))
        backup = self._stack.enter_context(self._serve(BACKUP, 0, "ocr_server_backup.log"))
        self.urls = {PREFERRED: self.preferred.url, BACKUP: f"{backup.url}/{BACKUP}"}
        self._overrides.update(
            CAPSOLVER_PROVIDERS=[
                {"name": name, "api_key": keys[name], "api_url": self.urls[name]}
                for name in (PREFERRED, BACKUP)
            ],
            CAPSOLVER_FAILOVER_COOLDOWN=COOLDOWN,
            # A killed server refuses connections at once; one that hangs is given 5 s (the
            # local engine reads a captcha in well under that, even on a busy machine).
            CAPSOLVER_TIMEOUT=5.0,
            # Tasks in flight when a service dies move to the other one once it refuses
            # connections (CAPSOLVER_FAILOVER_UNANSWERED); a few slots show the queue moving.
            CAPSOLVER_CONCURRENCY=4,
        )
        print(f"Preferred:        {self.urls[PREFERRED]}  (CapSolver's dialect)", flush=True)
        print(f"Backup:           {self.urls[BACKUP]}  (Anti-Captcha's dialect)", flush=True)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop_watching()
        self._again.close()
        self._stack.close()

    def _serve(self, name: str, port: int, log: str) -> AbstractContextManager[Any]:
        argv = [sys.executable, "-m", "scrapy_capsolver_ocr", "serve", "--port", str(port)]
        argv += ["--workers", str(self._args.workers)]
        env = {**os.environ, "CAPSOLVER_OCR_REQUIRE_KEY": self._keys[name]}
        return self._running(f"local OCR server ({name})", argv, self._logs / log, env)

    def describe(self) -> str:
        return (
            f"two local OCR servers in CAPSOLVER_PROVIDERS: {PREFERRED} at "
            f"{self.urls[PREFERRED]}, then {BACKUP} at {self.urls[BACKUP]}"
        )

    # The outage, in a thread beside the crawl

    def watch(self, crawlers: dict[str, Any]) -> None:
        """Called as the crawl starts: the outage follows the crawl's own figures."""
        self._crawlers = crawlers
        self._started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._outage, name="outage", daemon=True),
            threading.Thread(target=self._note_moments, name="moments", daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _outage(self) -> None:
        answers = f"demo/answers/{PREFERRED}"
        if not self._wait_for(lambda: self._total(answers) >= self.answers_before_outage):
            return
        self.preferred.process.send_signal(signal.SIGKILL)
        self.preferred.process.wait()
        self._moment("killed")
        print(f"\n-- {PREFERRED}'s server killed: an outage", flush=True)
        if self._wait_for(lambda: self._since("killed") >= self._args.outage):
            port = urlsplit(self.urls[PREFERRED]).port or 0
            self._again.enter_context(self._serve(PREFERRED, port, "ocr_server_again.log"))
            self._moment("started_again")
            print(f"\n-- {PREFERRED}'s server started again", flush=True)
            # Linux ends a server whose starting thread ends (run_demo's PR_SET_PDEATHSIG
            # follows the thread): this one lives until the crawl is over.
            self._done.wait()

    def _note_moments(self) -> None:
        """The first answer of the backup service, and the return to the preferred one."""
        backup = f"demo/answers/{BACKUP}"
        if self._wait_for(lambda: self._total(backup) > 0):
            self._moment("first_backup_answer")
        closed = f"capsolver/provider/{PREFERRED}/breaker_closed"
        if self._wait_for(lambda: self._total(closed) > 0):
            self._moment("back_on")

    def _wait_for(self, condition: Callable[[], bool]) -> bool:
        """Wait until ``condition`` holds (True) or the crawl is over (False)."""
        while not self._done.is_set():
            if condition():
                return True
            self._done.wait(POLL)
        return False

    def _total(self, stat: str) -> int:
        total = 0
        for crawler in list(self._crawlers.values()):
            stats = getattr(crawler, "stats", None)
            if stats is not None:
                total += int(stats.get_value(stat, 0))
        return total

    def _moment(self, name: str) -> None:
        self.moments[name] = round(time.monotonic() - self._started, 2)

    def _since(self, name: str) -> float:
        return time.monotonic() - self._started - self.moments[name]

    def _stop_watching(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join()

    # The summary

    def summary(self, crawlers: dict[str, Any]) -> dict[str, Any]:
        """Each service's calls and answers, and the outage's moments (JSON-ready)."""
        self._stop_watching()
        services = {}
        for name in (PREFERRED, BACKUP):
            stats = [crawler.stats.get_stats() for crawler in crawlers.values()]
            services[name] = {
                "url": self.urls[name],
                "calls": sum(s.get(f"capsolver/provider/{name}/task_count", 0) for s in stats),
                "answers": sum(s.get(f"demo/answers/{name}", 0) for s in stats),
                "failovers": sum(s.get(f"capsolver/provider/{name}/failovers", 0) for s in stats),
            }
        return {
            "services": services,
            "failed": sum(c.stats.get_value("capsolver/failed", 0) for c in crawlers.values()),
            "answers_before_outage": self.answers_before_outage,
            "outage": self._args.outage,
            "cooldown": COOLDOWN,
            "moments": dict(self.moments),
        }


def failover_lines(failover: dict[str, Any]) -> Iterator[str]:
    """The summary's failover lines."""
    yield "\nFailover (calls: createTask sent; answers: captchas answered to the spiders):"
    for number, (name, service) in enumerate(failover["services"].items(), 1):
        yield (
            f"  {number}. {name:<12} {service['calls']:>4} calls  {service['answers']:>4} "
            f"answers  {service['failovers']:>3} tasks moved on  ({service['url']})"
        )
    moments = failover["moments"]
    if failover["failed"]:
        yield (
            f"  {failover['failed']} captchas failed (their errors are in the log above: a "
            "task may take longer than CAPSOLVER_TIMEOUT on a busy machine)."
        )
    if "killed" not in moments:
        before = failover["answers_before_outage"]
        yield f"  The crawl ended before {PREFERRED} gave {before} answers: no outage."
        return
    said = [f"{PREFERRED} killed at {moments['killed']:.1f} s"]
    if "first_backup_answer" in moments:
        said.append(f"first {BACKUP} answer at {moments['first_backup_answer']:.1f} s")
    if "started_again" in moments:
        said.append(f"started again at {moments['started_again']:.1f} s")
    if "back_on" in moments:
        said.append(
            f"tasks back on {PREFERRED} at {moments['back_on']:.1f} s "
            f"(cool-down {failover['cooldown']:g} s, then one probe)"
        )
    else:
        said.append(f"the crawl ended before tasks went back to {PREFERRED}")
    yield "  " + "; ".join(said) + "."
