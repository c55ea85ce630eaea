"""The longest reactor stall of a crawl that learns: it stores labels, trains a model in a
child process and then reads with it.

    python benchmarks/learn_stall.py                      # the demo site's digits style
    python benchmarks/learn_stall.py --style noisy --min-labels 1000 --learnt 100
    python benchmarks/learn_stall.py --baseline --max-logins 1500   # the same, not learning

Starts the CapSolver mock (it answers every demo captcha right) and the demo site on
127.0.0.1, crawls logins with ``CAPSOLVER_LEARN`` on and a low ``CAPSOLVER_LEARN_MIN_LABELS``
until the learnt model has answered ``--learnt`` captchas, and meanwhile runs a
``LoopingCall`` every 10 ms on the crawl's reactor that records how late each tick ran.
Prints the figures (the longest stall while training, and over the whole crawl) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT / "tests"))
from conftest import API_KEY  # noqa: E402
from learning_spiders import LearningLoginSpider  # noqa: E402
from scrapy import signals  # noqa: E402
from scrapy.crawler import CrawlerProcess  # noqa: E402
from servers.process import start_server, stop_server  # noqa: E402

TICK = 0.010
DEMO_SITE = ROOT / "example_project" / "demo_site" / "server.py"
MOCK = ROOT / "tests" / "servers" / "capsolver_mock.py"


class LeanLearningSpider(LearningLoginSpider):
    """The learning crawl without the test spider's records of every request and login:
    Python's full garbage collections walk everything a crawl keeps, and their pauses grow
    with it; the crawl measured keeps what a spider would, not what a test checks."""

    def reached(self, request: Any, spider: Any) -> None:
        pass

    async def logged_in(self, response: Any) -> Any:  # type: ignore[override]
        jar = response.meta.get("cookiejar")
        async for request in super().logged_in(response):
            yield request
        for records in (self.solved, self.solutions, self.landed, self.items):
            records.pop(jar, None)


class StallMeter:
    """How late each 10 ms tick of the reactor ran, and whether a training was running."""

    def __init__(self) -> None:
        #: (seconds since the start, lateness, whether a training was running) per tick.
        self.late: list[tuple[float, float, bool]] = []
        self.spider: Any = None

    def start(self, spider: Any) -> None:
        from twisted.internet import task

        self.spider = spider
        self._started = time.monotonic()
        self._due = self._started + TICK
        self._loop = task.LoopingCall(self._tick)
        self._loop.start(TICK, now=False)

    def _tick(self) -> None:
        now = time.monotonic()
        training = self.spider.training
        self.late.append((now - self._started, max(0.0, now - self._due), training))
        self._due = now + TICK

    def stop(self, spider: Any) -> None:
        if self._loop.running:
            self._loop.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--style", default="digits", choices=("noisy", "digits", "gvcode"))
    parser.add_argument("--min-labels", type=int, default=300)
    parser.add_argument("--learnt", type=int, default=50, help="learnt answers to end at")
    parser.add_argument("--max-logins", type=int, default=3000)
    parser.add_argument(
        "--baseline",
        action="store_true",
        help="the same crawl without learning, for --max-logins logins: the machine's own stalls",
    )
    args = parser.parse_args()
    load_before = os.getloadavg()

    site_argv = [str(DEMO_SITE), "--port", "0", "--embed-answers", "--style", args.style]
    site, site_url = start_server(site_argv)
    mock, mock_url = start_server([str(MOCK), "--key", API_KEY])
    meter = StallMeter()
    started = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="learn-stall-") as learn_dir:
            settings = {
                "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
                "CAPSOLVER_API_KEY": API_KEY,
                "CAPSOLVER_API_URL": mock_url,
                "CAPSOLVER_LEARN": not args.baseline,
                "CAPSOLVER_LEARN_DIR": learn_dir,
                "CAPSOLVER_LEARN_MIN_LABELS": args.min_labels,
                "LOG_LEVEL": "INFO",
                "TELNETCONSOLE_ENABLED": False,
                "RETRY_ENABLED": False,
            }
            process = CrawlerProcess(settings)
            crawler = process.create_crawler(LeanLearningSpider)
            crawler.signals.connect(meter.start, signal=signals.spider_opened)
            crawler.signals.connect(meter.stop, signal=signals.spider_closed)
            process.crawl(
                crawler,
                site=site_url,
                sessions=4,
                max_logins=args.max_logins,
                learnt=args.learnt,
                pause=0.5,
            )
            process.start()
    finally:
        stop_server(site)
        stop_server(mock)
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    during = [late for _, late, training in meter.late if training]
    every = [late for _, late, _ in meter.late]
    worst = sorted(meter.late, key=lambda tick: tick[1], reverse=True)[:5]
    result = {
        "learning": not args.baseline,
        "style": args.style,
        "load_average_before": [round(load, 2) for load in load_before],
        "load_average_after": [round(load, 2) for load in os.getloadavg()],
        "min_labels": args.min_labels,
        "seconds": round(time.monotonic() - started, 1),
        "logins": len(meter.spider.answered_by),
        "learnt_answers": stats.get("capsolver/learn/local_answers", 0),
        "refused_learnt": stats.get("capsolver/learn/refused", 0),
        "labels_stored": stats.get("capsolver/learn/labels_stored", 0),
        "models_trained": stats.get("capsolver/learn/models_trained", 0),
        "trainings_failed": stats.get("capsolver/learn/trainings_failed", 0),
        "ticks": len(every),
        "ticks_while_training": len(during),
        "max_stall_ms": round(max(every, default=0) * 1000, 1),
        "max_stall_while_training_ms": round(max(during, default=0) * 1000, 1),
        "p99_stall_ms": round(_p99(every) * 1000, 1),
        "p99_stall_while_training_ms": round(_p99(during) * 1000, 1),
        "worst_stalls": [
            {"at_s": round(at, 1), "ms": round(late * 1000, 1), "training": training}
            for at, late, training in worst
        ],
    }
    print(json.dumps(result, indent=2))


def _p99(values: list[float]) -> float:
    if len(values) < 2:
        return max(values, default=0.0)
    return statistics.quantiles(values, n=100)[98]


if __name__ == "__main__":
    main()
