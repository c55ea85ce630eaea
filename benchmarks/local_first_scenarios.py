"""The login crawls of ``bench_local_first.py``, each in a fresh process:

    python benchmarks/local_first_scenarios.py logins 'JSON parameters'

logs in ``logins`` times on the demo site (page mode: the middleware solves the login page's
captcha, puts the answer into the form, and starts over with a fresh captcha when the site
refuses it), ``at_once`` sessions at a time, each login in its own cookie session, and prints
one JSON object on the last line of stdout: how each login went (who answered each of its
captchas) and the crawl's ``capsolver/*`` stats. Parameters: ``site``, ``api``, ``key``,
``logins``, ``at_once``, ``settings`` (more Scrapy settings).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

CREDENTIALS = {"username": "demo", "password": "demo"}
WRONG_CAPTCHA = "Wrong captcha"


def run_logins(params: dict[str, Any]) -> dict[str, Any]:
    import scrapy
    from form2request import form2request
    from scrapy.crawler import CrawlerProcess
    from scrapy.http import Response
    from twisted.python.failure import Failure

    site = params["site"]
    logins = int(params["logins"])

    class LoginsSpider(scrapy.Spider):
        """Starts ``at_once`` logins, and a new one whenever one ends."""

        name = "logins"

        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.started = 0
            self.answered_by: dict[int, list[str]] = {}
            self.succeeded: set[int] = set()
            self.errors: dict[int, str] = {}

        async def start(self) -> AsyncIterator[scrapy.Request]:
            for _ in range(min(int(params["at_once"]), logins)):
                yield self.begin()

        def begin(self) -> scrapy.Request:
            login, self.started = self.started, self.started + 1
            return scrapy.Request(
                f"{site}/login",
                meta={"cookiejar": login, "solve_image": {"selector": "#captcha-image"}},
                callback=self.form,
                errback=self.failed,
                cb_kwargs={"login": login},
                dont_filter=True,
            )

        def form(self, response: Response, login: int) -> scrapy.Request:
            self.answered_by.setdefault(login, []).append(response.meta["captcha_solution"].solver)
            request = form2request(response.css("#login-form"), CREDENTIALS)
            return request.to_scrapy(
                callback=self.landed,
                errback=self.failed,
                meta={
                    "cookiejar": login,
                    "captcha_field": "captcha",
                    "captcha_retry_if": WRONG_CAPTCHA,
                },
                cb_kwargs={"login": login},
                dont_filter=True,
            )

        def landed(self, response: Response, login: int) -> Iterator[scrapy.Request]:
            if urlsplit(response.url).path == "/items":
                self.succeeded.add(login)
            else:
                self.errors[login] = f"landed on {response.url}"
            yield from self.next_login()

        def failed(self, failure: Failure) -> Iterator[scrapy.Request]:
            request: Any = failure.request  # type: ignore[attr-defined]
            self.errors[request.cb_kwargs["login"]] = repr(failure.value)
            yield from self.next_login()

        def next_login(self) -> Iterator[scrapy.Request]:
            if self.started < logins:
                yield self.begin()

    settings: dict[str, Any] = {
        "ADDONS": {"scrapy_capsolver_ocr.Addon": 500},
        "CAPSOLVER_API_URL": params["api"],
        "CAPSOLVER_API_KEY": params["key"],
        "CAPSOLVER_MAX_ATTEMPTS": 5,
        "CAPSOLVER_LOGSTATS_INTERVAL": 0,
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        **params.get("settings", {}),
    }
    process = CrawlerProcess(settings)
    crawler = process.create_crawler(LoginsSpider)
    started = time.perf_counter()
    process.crawl(crawler)
    process.start()
    seconds = time.perf_counter() - started
    spider: Any = crawler.spider
    stats = crawler.stats.get_stats() if crawler.stats is not None else {}
    return {
        "logins": logins,
        "succeeded": len(spider.succeeded),
        "errors": list(spider.errors.values())[:5],
        "answered_by": [spider.answered_by.get(login, []) for login in range(logins)],
        "stats": {
            name: value
            for name, value in stats.items()
            if name.startswith("capsolver/") and isinstance(value, (int, float))
        },
        "seconds": seconds,
    }


def main() -> None:
    # The plugin's tests and benchmarks talk to 127.0.0.1 only: no public suffix download.
    os.environ.setdefault("TLDEXTRACT_PUBLIC_SUFFIX_LIST_URLS", "")
    kind, params = sys.argv[1], json.loads(sys.argv[2])
    if kind != "logins":
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(run_logins(params)), flush=True)


if __name__ == "__main__":
    main()
