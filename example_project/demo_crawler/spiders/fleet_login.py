"""Many crawl processes, one budget: page-mode logins taken from a scrapy-redis queue.

Login jobs are pushed into a Redis list (``push_logins.py``); every ``scrapy crawl
fleet_login`` process takes a few at a time until the queue stays empty, and all of them
share one solving state in the same Redis (``CAPSOLVER_REDIS_URL``): one createTask per
distinct image, one ``CAPSOLVER_MAX_TASKS`` budget, one pause when CapSolver blocks the key.

    python push_logins.py 30
    scrapy crawl fleet_login   # as many times, on as many machines, as you like

Each login keeps its cookie session in the process that took it: only the jobs are shared,
not the requests of a login (a session cannot move between processes).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import scrapy
from scrapy_redis.spiders import RedisSpider

from .logins import LoginRecord
from .page_login import PageLoginSpider

#: The Redis of the queue and of the solving state (scrapy-redis reads REDIS_URL).
REDIS_URL = os.environ.get("REDIS_URL") or "redis://127.0.0.1:6379/0"
QUEUE = "fleet_login:logins"


class FleetLoginSpider(RedisSpider, PageLoginSpider):
    name = "fleet_login"
    redis_key = QUEUE
    #: Jobs taken at a time: small, so that every process gets its share.
    redis_batch_size = 3
    custom_settings = {
        "REDIS_URL": REDIS_URL,
        # Fleet mode, in one line: the processes of this spider share one solving state.
        "CAPSOLVER_REDIS_URL": REDIS_URL,
        # Close once the queue has stayed empty this long (seconds).
        "MAX_IDLE_TIME_BEFORE_CLOSE": 3,
    }

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(logins=1, **kwargs)
        self.records = {}  # filled from the queue

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for request in self.next_requests():
            yield request

    def make_request_from_data(self, data: bytes) -> scrapy.Request:
        login = int(json.loads(data)["login"])
        self.records[login] = LoginRecord()
        return self.start_login(login)

    def closed(self, reason: str) -> None:
        super().closed(reason)
        # run_demo.py --fleet N reads what each process did from here.
        summary_path = self.settings.get("DEMO_SUMMARY_PATH")
        if summary_path:
            stats = self.crawler.stats.get_stats()
            started = stats["start_time"]
            now = datetime.now(started.tzinfo)
            summary = {
                "finish_reason": reason,
                "records": {login: vars(record) for login, record in self.records.items()},
                "stats": {
                    name: value
                    for name, value in stats.items()
                    if name.startswith(("capsolver/", "item_scraped_count"))
                }
                | {"elapsed_time_seconds": (now - started).total_seconds()},
            }
            Path(summary_path).write_text(json.dumps(summary, indent=1))
