"""A crawl paused and resumed with JOBDIR keeps the answers bound to its queued forms, and
the captcha requests to send again when the site refuses one; a JOBDIR written before the
package moved into subpackages resumes too."""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import scrapy
from conftest import CapSolverMock
from crawling import crawl, solver_settings, stat
from scrapy import signals
from scrapy.http import Response
from scrapy.utils.defer import deferred_from_coro
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaRejectedError

SESSIONS = 4
#: A JOBDIR paused by the flat layout (before the subpackages, commit 8d7da02): see
#: data/write_flat_layout_jobdir.py.
FLAT_LAYOUT_JOBDIR = Path(__file__).parent / "data" / "flat-layout-jobdir"
#: Both the newest Scrapy and 2.13 read that queue; their defaults differ.
PRIORITY_QUEUE = "scrapy.pqueues.ScrapyPriorityQueue"


class PausingLoginSpider(scrapy.Spider):
    """Solves one captcha per session, then sends a form with ``captcha_field``.

    The first run pauses the crawl once every form is scheduled, before any is sent (as
    Ctrl-C would, between two requests); the second run resumes it from the JOBDIR."""

    name = "pausing_login"

    def __init__(self, site: str, resume: bool, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.resume = resume
        self.captchas: dict[int, list[tuple[int, str]]] = {}
        self.forms: dict[int, dict[str, str]] = {}
        self.errors: dict[int, BaseException] = {}
        self.forms_scheduled = 0

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> PausingLoginSpider:
        spider: PausingLoginSpider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.scheduled, signal=signals.request_scheduled)
        return spider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        if self.resume:
            return
        for session in range(SESSIONS):
            yield scrapy.Request(
                f"{self.site}/captcha/jd{session}.png",
                meta={"solve_image": True, "cookiejar": session},
                callback=self.captcha,
                errback=self.failed,
                dont_filter=True,
            )

    def captcha(self, response: Response) -> Any:
        session = response.meta["cookiejar"]
        entry = (response.meta["captcha_attempt"], response.meta["captcha_text"])
        self.captchas.setdefault(session, []).append(entry)
        if not self.resume and len(self.captchas) < SESSIONS:
            return []
        sessions = range(SESSIONS) if not self.resume else [session]
        return [
            scrapy.Request(
                # Session 0's answers are all refused: its chain is resumed from the JOBDIR.
                f"{self.site}/form?user=u{number}" + ("&reject=1" if number == 0 else ""),
                meta={
                    "captcha_field": "captcha",
                    "captcha_retry_if": "Wrong captcha",
                    "cookiejar": number,
                },
                callback=self.logged_in,
                errback=self.failed,
            )
            for number in sessions
        ]

    def scheduled(self, request: scrapy.Request, spider: Any) -> None:
        if self.resume or "captcha_field" not in request.meta:
            return
        assert self.crawler.engine is not None
        self.forms_scheduled += 1
        if self.forms_scheduled == 1:
            self.crawler.engine.pause()  # nothing more leaves the scheduler
        if self.forms_scheduled == SESSIONS:
            from twisted.internet import reactor

            reactor.callLater(0, self.stop_crawl)  # type: ignore[attr-defined]

    def stop_crawl(self) -> None:
        if hasattr(self.crawler, "stop_async"):
            deferred_from_coro(self.crawler.stop_async())
        else:  # Scrapy 2.13
            self.crawler.stop()

    def logged_in(self, response: Response) -> None:
        self.forms[response.meta["cookiejar"]] = response.json()["fields"]

    def failed(self, failure: Failure) -> None:
        self.errors[failure.request.meta.get("cookiejar")] = failure.value  # type: ignore[attr-defined]


# Scrapy 2.13's disk queue leaves a queue file open when it resumes (fixed in later Scrapy).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*requests.queue:pytest.PytestUnraisableExceptionWarning"
)
@pytest_twisted.ensureDeferred
async def test_forms_queued_in_a_jobdir_keep_their_answers_across_a_resume(
    capsolver: CapSolverMock, image_site: str, tmp_path: Path
) -> None:
    settings = solver_settings(capsolver, JOBDIR=str(tmp_path / "job"), CAPSOLVER_MAX_ATTEMPTS=2)
    first = await crawl(PausingLoginSpider, settings, site=image_site, resume=False)
    paused: Any = first.spider

    assert stat(first, "finish_reason") == "shutdown"
    assert paused.forms == {} and paused.errors == {}
    assert sorted(paused.captchas) == list(range(SESSIONS))
    # Every form went to the disk queue: none was kept in memory for want of pickling.
    assert stat(first, "scheduler/unserializable") == 0
    assert stat(first, "scheduler/enqueued/disk") >= SESSIONS

    second = await crawl(PausingLoginSpider, settings, site=image_site, resume=True)
    solved = {session: texts[0][1] for session, texts in paused.captchas.items()}
    assert_resumed_as_paused(second, solved)


def assert_resumed_as_paused(crawler: Any, solved: dict[int, str]) -> None:
    """The resumed crawl sent every queued form with the answer bound to it; session 0's
    answer was refused, so the captcha request its BoundAnswer kept came back from the
    JOBDIR as attempt 2, whose answer was refused too (CAPSOLVER_MAX_ATTEMPTS)."""
    resumed: Any = crawler.spider
    for session in range(1, SESSIONS):
        assert resumed.forms[session] == {"user": f"u{session}", "captcha": solved[session]}
    assert 0 not in resumed.forms
    assert resumed.captchas == {0: [(2, solved[0])]}
    assert isinstance(resumed.errors.pop(0), CaptchaRejectedError)
    assert resumed.errors == {}
    assert stat(crawler, "capsolver/injected") == SESSIONS + 1
    assert stat(crawler, "capsolver/rejected") == 2


class SiteMovedMiddleware:
    """Sends the requests a JOBDIR names on the site that wrote it (``TEST_OLD_SITE``) to
    the site of this run (``TEST_NEW_SITE``): the test servers get a new port every run."""

    def __init__(self, old: str, new: str) -> None:
        self.old = old
        self.new = new

    @classmethod
    def from_crawler(cls, crawler: Any) -> SiteMovedMiddleware:
        return cls(crawler.settings["TEST_OLD_SITE"], crawler.settings["TEST_NEW_SITE"])

    def process_request(self, request: scrapy.Request, spider: Any = None) -> scrapy.Request | None:
        if not request.url.startswith(self.old + "/"):
            return None
        return request.replace(url=self.new + request.url[len(self.old) :])


@pytest.mark.filterwarnings(
    "ignore:Exception ignored in.*requests.queue:pytest.PytestUnraisableExceptionWarning"
)
@pytest_twisted.ensureDeferred
async def test_a_jobdir_written_before_the_move_into_subpackages_resumes(
    capsolver: CapSolverMock, image_site: str, tmp_path: Path
) -> None:
    written = json.loads((FLAT_LAYOUT_JOBDIR / "written.json").read_text())
    solved = {int(session): text for session, text in written["answers"].items()}
    queue = (FLAT_LAYOUT_JOBDIR / "job" / "requests.queue" / "0").read_bytes()
    # The forms' answers are pickled under the module paths of that layout.
    assert queue.count(b"scrapy_capsolver_ocr.injection\x94") == SESSIONS
    assert queue.count(b"scrapy_capsolver_ocr.solution\x94") == SESSIONS
    assert b"scrapy_capsolver_ocr.integration" not in queue
    job = tmp_path / "job"
    shutil.copytree(FLAT_LAYOUT_JOBDIR / "job", job)  # a resume consumes the queue
    settings = solver_settings(
        capsolver,
        JOBDIR=str(job),
        CAPSOLVER_MAX_ATTEMPTS=2,
        SCHEDULER_PRIORITY_QUEUE=PRIORITY_QUEUE,
        DOWNLOADER_MIDDLEWARES={f"{__name__}.SiteMovedMiddleware": 1},
        TEST_OLD_SITE=written["site"],
        TEST_NEW_SITE=image_site,
    )

    crawler = await crawl(PausingLoginSpider, settings, site=image_site, resume=True)

    assert stat(crawler, "scheduler/dequeued/disk") >= SESSIONS
    assert_resumed_as_paused(crawler, solved)
    reported = [call["body"]["taskId"] for call in capsolver.calls("feedbackTask")]
    assert len(reported) == 2 and reported[0] != reported[1], reported
    assert str(reported[0]).encode() in queue  # the task of the answer pickled by the flat layout
