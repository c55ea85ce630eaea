"""Writes tests/data/flat-layout-jobdir: a JOBDIR paused by the package's flat layout (before
the subpackages, commit 8d7da02: ``scrapy_capsolver_ocr.injection.BoundAnswer`` pickled into
the queue), for tests/test_jobdir.py to resume with today's code.

Run it from a checkout of that layout (commit 8d7da02), with its own tests on the path, and
this checkout's virtualenv (no bytecode written into the old checkout)::

    cd OLD_CHECKOUT && PYTHONDONTWRITEBYTECODE=1 PYTHONPATH=$PWD:$PWD/tests \
        NEW_CHECKOUT/.venv/bin/python NEW_CHECKOUT/tests/data/write_flat_layout_jobdir.py

It runs the first half of that layout's own JOBDIR test (four forms scheduled with their
answers bound, then the crawl paused before any is sent) against its CapSolver mock and image
site, and records the site's address beside the JOBDIR: the resuming test sends the queued
requests to the image site it runs instead.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "flat-layout-jobdir"
#: Both the newest Scrapy and 2.13 read this queue; their defaults differ.
PRIORITY_QUEUE = "scrapy.pqueues.ScrapyPriorityQueue"


def main() -> None:
    import scrapy_capsolver_ocr

    package = Path(scrapy_capsolver_ocr.__file__).parent
    if (package / "integration").exists() or not (package / "injection.py").exists():
        sys.exit(f"{package} is not the flat layout: run this from an old checkout")

    from scrapy.utils.reactor import install_reactor

    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    from conftest import API_KEY, SERVERS, CapSolverMock
    from crawling import solver_settings
    from scrapy.crawler import CrawlerRunner
    from servers.process import running_server
    from test_jobdir import SESSIONS, PausingLoginSpider
    from twisted.internet import reactor

    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir(parents=True)
    with (
        running_server([str(SERVERS / "capsolver_mock.py"), "--key", API_KEY]) as capsolver_url,
        running_server([str(SERVERS / "image_site.py")]) as site,
    ):
        settings = solver_settings(
            CapSolverMock(capsolver_url),
            JOBDIR=str(OUT / "job"),
            CAPSOLVER_MAX_ATTEMPTS=2,
            SCHEDULER_PRIORITY_QUEUE=PRIORITY_QUEUE,
            LOG_LEVEL="INFO",
        )
        crawler = CrawlerRunner(settings).create_crawler(PausingLoginSpider)
        done = crawler.crawl(site=site, resume=False)
        done.addBoth(lambda _: reactor.stop())  # type: ignore[attr-defined]
        reactor.run()  # type: ignore[attr-defined]

    stats: Any = crawler.stats
    spider: Any = crawler.spider
    assert stats.get_value("finish_reason") == "shutdown", stats.get_value("finish_reason")
    assert stats.get_value("scheduler/enqueued/disk") >= SESSIONS
    assert stats.get_value("scheduler/unserializable", 0) == 0
    answers = {session: texts[0][1] for session, texts in spider.captchas.items()}
    (OUT / "written.json").write_text(
        json.dumps({"site": site, "answers": answers}, indent=2, sort_keys=True) + "\n"
    )
    print(f"Wrote {OUT}: answers {answers}")


if __name__ == "__main__":
    main()
