"""Soak: one long crawl of many captcha solves against the CapSolver mock with random faults
on a share of the API calls. It checks that no request is lost (each ends exactly once, in
its callback or its errback) and that the crawl's memory stays flat.

    python benchmarks/soak.py                        # 10,000 solves, 5 % faults
    python benchmarks/soak.py --solves 2000 --json soak.json

It starts the mock (tests/servers/capsolver_mock.py) and the image site
(tests/servers/image_site.py) on 127.0.0.1; every image is distinct (the image site's
``/noise`` pictures), so every solve is a paid call. The faults are the transient, task and
transport faults of docs/faults.md, each with the same chance; account faults are left out
(they end a crawl by design). The resident memory (RSS) of the crawl's process is sampled
twice a second. Exit status 1 when a request was lost or ended twice, or when the memory
grew by more than ``--max-growth`` MiB over the second half of the run.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import scrapy
from scrapy import signals
from scrapy.crawler import Crawler, CrawlerProcess
from scrapy.http import Response
from twisted.python.failure import Failure

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from servers.process import start_server, stop_server  # noqa: E402

from scrapy_capsolver_ocr import CaptchaSolveError  # noqa: E402

SERVERS = ROOT / "tests" / "servers"
API_KEY = "CAP-soak-key-000000000000000000000000"
IMAGE_SIZE = 3000  # bytes: small pictures keep the image site from being the bottleneck
FAULTS: list[dict[str, Any]] = [
    {"fault": "http", "status": 503},
    {"fault": "http", "status": 500},
    {"fault": "http", "status": 429},
    {"fault": "reset"},
    {"fault": "drop_mid"},
    {"fault": "not_json"},
    {"fault": "no_error_id"},
    {"fault": "no_solution"},
    {"fault": "empty_text"},
    {"fault": "huge"},
    {"fault": "latency", "seconds": 3},  # past CAPSOLVER_TIMEOUT
    {"fault": "error", "code": "ERROR_SERVICE_UNAVALIABLE"},
    {"fault": "error", "code": "ERROR_RATE_LIMIT", "status": 429},
    {"fault": "error", "code": "ERROR_CAPTCHA_UNSOLVABLE"},
    {"fault": "error", "code": "ERROR_INVALID_IMAGE"},
]


def rss_mib() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    return pages * resource.getpagesize() / 1_048_576


class SoakSpider(scrapy.Spider):
    """Asks for ``count`` distinct captchas and counts how each request ended."""

    name = "soak"

    def __init__(self, site: str, count: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.count = count
        self.ended = [0] * count
        self.solved = 0
        self.failed: dict[str, int] = {}

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for number in range(self.count):
            yield scrapy.Request(
                f"{self.site}/noise/{number}.png?size={IMAGE_SIZE}",
                meta={"solve_image": True, "number": number},
                callback=self.parse,
                errback=self.failed_solve,
                dont_filter=True,
            )

    def parse(self, response: Response) -> None:
        self.ended[response.meta["number"]] += 1
        expected = f"n{response.meta['number']}"
        if response.meta.get("captcha_text") != expected:
            self.failed["wrong text"] = self.failed.get("wrong text", 0) + 1
        else:
            self.solved += 1

    def failed_solve(self, failure: Failure) -> None:
        request: Any = failure.request  # type: ignore[attr-defined]
        self.ended[request.meta["number"]] += 1
        # The public class: a few errors are private subclasses of CaptchaTaskError.
        kind = next(c.__name__ for c in type(failure.value).__mro__ if c.__name__[0] != "_")
        if not failure.check(CaptchaSolveError):
            kind = f"not a CaptchaSolveError: {kind}"
        self.failed[kind] = self.failed.get(kind, 0) + 1

    @property
    def done(self) -> int:
        return sum(1 for ended in self.ended if ended)


@dataclass
class Sampler:
    """RSS and progress, sampled on the crawl's reactor every ``interval`` seconds."""

    crawler: Crawler
    interval: float = 0.5
    samples: list[tuple[float, int, float]] = field(default_factory=list)
    started: float = 0.0

    def start(self) -> None:
        from twisted.internet import task

        self.started = time.monotonic()
        self._loop = task.LoopingCall(self.sample)
        self._loop.start(self.interval)

    def sample(self) -> None:
        spider: Any = self.crawler.spider
        done = spider.done if spider is not None else 0
        self.samples.append((round(time.monotonic() - self.started, 2), done, round(rss_mib(), 1)))

    def stop(self) -> None:
        if self._loop.running:
            self._loop.stop()
        self.sample()


@dataclass
class Result:
    requests: int
    ended_once: int
    lost: int
    ended_twice: int
    solved: int
    failed: dict[str, int]
    stats: dict[str, Any]
    faults_applied: int
    fault_share: float
    seconds: float
    rss_mib_by_progress: dict[str, float]
    rss_peak_mib: float
    rss_growth_second_half_mib: float
    samples: list[tuple[float, int, float]]


def rss_at(samples: list[tuple[float, int, float]], done: int) -> float:
    """The RSS of the first sample taken once ``done`` requests had ended."""
    return next(rss for _, ended, rss in samples if ended >= done)


def mock_stats(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/_stats", timeout=10) as answer:
        return dict(json.loads(answer.read()))


def configure_mock(url: str, share: float) -> None:
    # The mock tries the rules in turn: each with this chance makes ``share`` in all.
    chance = 1 - (1 - share) ** (1 / len(FAULTS))
    faults = [{**rule, "probability": chance} for rule in FAULTS]
    request = urllib.request.Request(
        url + "/_config", data=json.dumps({"faults": faults}).encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()


def run(solves: int, share: float, concurrency: int) -> Result:
    mock, mock_url = start_server([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY])
    site, site_url = start_server([str(SERVERS / "image_site.py")])
    try:
        configure_mock(mock_url, share)
        settings = {
            "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
            "CAPSOLVER_API_KEY": API_KEY,
            "CAPSOLVER_API_URL": mock_url,
            "CAPSOLVER_CONCURRENCY": concurrency,
            "CAPSOLVER_TIMEOUT": 1.5,
            "CAPSOLVER_BACKOFF_BASE": 0.05,
            "CAPSOLVER_BACKOFF_MAX": 0.5,
            "CAPSOLVER_LOGSTATS_INTERVAL": 30,
            "CONCURRENT_REQUESTS": concurrency * 2,
            "CONCURRENT_REQUESTS_PER_DOMAIN": concurrency * 2,
            "RETRY_ENABLED": False,
            "TELNETCONSOLE_ENABLED": False,
            "LOG_LEVEL": "INFO",
            "LOGSTATS_INTERVAL": 30,
        }
        process = CrawlerProcess(settings)
        crawler = process.create_crawler(SoakSpider)
        sampler = Sampler(crawler)
        crawler.signals.connect(sampler.start, signal=signals.engine_started)
        process.crawl(crawler, site=site_url, count=solves)
        process.start()
        gc.collect()
        sampler.stop()
        applied = sum(mock_stats(mock_url)["applied"])
    finally:
        stop_server(mock)
        stop_server(site)

    spider: Any = crawler.spider
    assert crawler.stats is not None
    stats = {k: v for k, v in crawler.stats.get_stats().items() if k.startswith("capsolver/")}
    samples = sampler.samples
    marks = {f"{p} %": rss_at(samples, solves * p // 100) for p in (1, 10, 25, 50, 75, 100)}
    calls = int(stats.get("capsolver/task_count", 0))
    return Result(
        requests=solves,
        ended_once=sum(1 for ended in spider.ended if ended == 1),
        lost=sum(1 for ended in spider.ended if ended == 0),
        ended_twice=sum(1 for ended in spider.ended if ended > 1),
        solved=spider.solved,
        failed=dict(sorted(spider.failed.items())),
        stats=dict(sorted(stats.items())),
        faults_applied=applied,
        fault_share=round(applied / calls, 4) if calls else 0.0,
        seconds=samples[-1][0],
        rss_mib_by_progress=marks,
        rss_peak_mib=max(rss for _, _, rss in samples),
        rss_growth_second_half_mib=round(marks["100 %"] - marks["50 %"], 1),
        samples=samples,
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--solves", type=int, default=10_000)
    parser.add_argument("--faults", type=float, default=0.05, help="share of faulty calls")
    parser.add_argument("--concurrency", type=int, default=32, help="CAPSOLVER_CONCURRENCY")
    parser.add_argument("--max-growth", type=float, default=10.0, help="MiB, second half")
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()

    result = run(args.solves, args.faults, args.concurrency)
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=1) + "\n")
    summary = {k: v for k, v in asdict(result).items() if k != "samples"}
    print(json.dumps(summary, indent=1))
    ok = (
        result.lost == 0
        and result.ended_twice == 0
        and result.ended_once == result.requests
        and result.rss_growth_second_half_mib <= args.max_growth
    )
    print("OK" if ok else "FAILED", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
