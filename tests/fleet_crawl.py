"""One crawl process of a fleet, for the fleet tests: ``python fleet_crawl.py JOB.json``.

The job gives the settings and the URLs; the crawl requests each URL with ``solve_image``,
and writes how every request ended, its ``capsolver/*`` stats and its finish reason to the
job's ``result`` path. The log goes to the job's ``log`` path.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from crawling import RecordingSpider
from scrapy.crawler import CrawlerProcess
from scrapy.http import Response
from twisted.python.failure import Failure


class TimedSpider(RecordingSpider):
    """Also notes when the first and the last request ended (for the benchmark)."""

    first_end = last_end = 0.0

    def _ended(self) -> None:
        now = time.time()
        self.first_end = self.first_end or now
        self.last_end = now

    async def parse(self, response: Response) -> AsyncIterator[Any]:
        self._ended()
        async for item in super().parse(response):
            yield item

    def failed(self, failure: Failure) -> None:
        self._ended()
        super().failed(failure)


def main(job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    settings: dict[str, Any] = {**job["settings"], "LOG_FILE": job["log"]}
    process = CrawlerProcess(settings, install_root_handler=True)
    crawler = process.create_crawler(TimedSpider)
    process.crawl(crawler, urls=job["urls"])
    process.start()
    spider: Any = crawler.spider
    assert crawler.stats is not None
    stats = crawler.stats.get_stats()
    result = {
        "finish_reason": stats.get("finish_reason"),
        "first_end": spider.first_end,
        "last_end": spider.last_end,
        "ended": dict(spider.ended),
        "texts": spider.texts,
        "errors": {
            url: {"class": type(error).__name__, "message": str(error)}
            for url, error in spider.errors.items()
        },
        "stats": {
            name: value
            for name, value in stats.items()
            if name.startswith("capsolver/") and isinstance(value, (int, float, str))
        },
    }
    Path(job["result"]).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
