"""Crawl processes of one fleet, started side by side (``fleet_crawl.py``), for the fleet
tests and the fleet benchmark."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

RUNNER = Path(__file__).with_name("fleet_crawl.py")
#: A safety net for a crawl that hangs; a healthy test crawl takes seconds.
CRAWL_TIMEOUT = 180.0


@dataclass
class CrawlProcess:
    """One running (or finished) crawl process and where it writes."""

    process: subprocess.Popen[bytes]
    result_path: Path
    log_path: Path
    started: float = field(default_factory=time.time)

    @property
    def pid(self) -> int:
        return self.process.pid

    def wait(self, timeout: float = CRAWL_TIMEOUT) -> dict[str, Any]:
        """Wait for the crawl to end; its result (see fleet_crawl.py)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"crawl {self.pid} hung; log:\n{self.log_tail()}") from None
        if not self.result_path.exists():
            raise AssertionError(
                f"crawl {self.pid} ended ({self.process.returncode}) without a result; "
                f"log:\n{self.log_tail()}"
            )
        return dict(json.loads(self.result_path.read_text()))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def kill(self) -> None:
        """SIGKILL, as a lost machine would: nothing is given back."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def start_crawl(
    directory: Path,
    name: str,
    settings: dict[str, Any],
    urls: Sequence[str],
    runner: Path = RUNNER,
) -> CrawlProcess:
    """Start one crawl process of ``urls`` with ``settings`` (``runner``: fleet_crawl.py or
    a script that prepares the process and then calls it)."""
    job = {
        "settings": settings,
        "urls": list(urls),
        "result": str(directory / f"{name}.json"),
        "log": str(directory / f"{name}.log"),
    }
    job_path = directory / f"{name}.job.json"
    job_path.write_text(json.dumps(job))
    env = {**os.environ, "TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS": ""}
    env.pop("CAPSOLVER_API_KEY", None)
    with open(directory / f"{name}.stderr", "wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, str(runner), str(job_path)],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
            cwd=runner.parent,
        )
    return CrawlProcess(process, Path(job["result"]), Path(job["log"]))


def run_fleet(
    directory: Path, settings: dict[str, Any], url_lists: Sequence[Sequence[str]]
) -> list[dict[str, Any]]:
    """One crawl process per list of URLs, all at once; their results once all ended."""
    crawls = [
        start_crawl(directory, f"crawl{number}", settings, urls)
        for number, urls in enumerate(url_lists)
    ]
    return [crawl.wait() for crawl in crawls]
