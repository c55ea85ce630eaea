"""The internals of Scrapy and Twisted the plugin still needs (scrapy_capsolver_ocr/compat.py),
each checked against the installed versions so that a move fails here, by name; Scrapy's
reactorless mode refused at start; and the import paths users name, old and new."""

from __future__ import annotations

import base64
import importlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_twisted
import scrapy
from conftest import CapSolverMock
from crawling import RecordingSpider, crawl, solver_settings
from packaging.version import Version
from scrapy import signals
from scrapy.http import Response
from scrapy.settings import Settings
from scrapy.utils.defer import maybe_deferred_to_future
from scrapy.utils.test import get_crawler
from servers.image_site import captcha_image
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web import resource, server
from twisted.web.http import HTTPChannel

import scrapy_capsolver_ocr
from scrapy_capsolver_ocr import compat
from scrapy_capsolver_ocr.settings import ApiKey, mask_api_key

SCRAPY_VERSION = Version(scrapy.__version__)
HAS_REACTORLESS_MODE = Version("2.15") <= SCRAPY_VERSION
REACTORLESS_MESSAGE = "TWISTED_REACTOR_ENABLED=False is not supported by scrapy-capsolver-ocr"


async def sleep(seconds: float) -> None:
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await maybe_deferred_to_future(deferLater(reactor, seconds, lambda: None))  # type: ignore[arg-type]


# ExecutionEngine._slot.nextcall and Downloader.total_concurrency (RequestSlots)


class HoldingSpider(scrapy.Spider):
    """Two pages with one request slot: the first is held in the downloader while the second
    waits in the scheduler; then the first lends a slot and wakes the engine, as
    RequestSlots does for a solve waiting its turn."""

    name = "holding"
    custom_settings = {"CONCURRENT_REQUESTS": 1, "CONCURRENT_REQUESTS_PER_DOMAIN": 2}
    HOLD = 3.0

    def __init__(self, site: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.site = site
        self.scheduled: list[str] = []
        self.entered: dict[str, float] = {}
        self.woke_at = 0.0
        self.lifted = self.woke = self.given_back = False
        self.limit_at_close: int | None = None

    @classmethod
    def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> HoldingSpider:
        spider: HoldingSpider = super().from_crawler(crawler, *args, **kwargs)
        crawler.signals.connect(spider.on_scheduled, signal=signals.request_scheduled)
        return spider

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for number in (1, 2):
            yield scrapy.Request(f"{self.site}/page/{number}", meta={"number": number})

    def on_scheduled(self, request: scrapy.Request, spider: Any) -> None:
        self.scheduled.append(request.url)

    async def hold(self, request: scrapy.Request) -> None:
        self.entered[request.url] = time.monotonic()
        if request.meta["number"] != 1:
            return
        while len(self.scheduled) < 2:  # the second page is waiting in the scheduler
            await sleep(0.02)
        await sleep(0.1)
        self.lifted = compat.change_request_limit(self.crawler, +1)
        self.woke = compat.wake_engine(self.crawler)
        self.woke_at = time.monotonic()
        await sleep(self.HOLD)
        self.given_back = compat.change_request_limit(self.crawler, -1)

    def parse(self, response: Response) -> None:
        pass

    def closed(self, reason: str) -> None:
        assert self.crawler.engine is not None
        self.limit_at_close = self.crawler.engine.downloader.total_concurrency


class HoldingMiddleware:
    """Hands every request to the spider's ``hold`` before it is downloaded."""

    def __init__(self, crawler: Any) -> None:
        self.crawler = crawler

    @classmethod
    def from_crawler(cls, crawler: Any) -> HoldingMiddleware:
        return cls(crawler)

    async def process_request(self, request: scrapy.Request, spider: Any = None) -> None:
        await self.crawler.spider.hold(request)


@pytest_twisted.ensureDeferred
async def test_a_lent_request_slot_starts_the_waiting_request_at_once(image_site: str) -> None:
    settings = solver_settings(
        None,
        ADDONS={},
        DOWNLOADER_MIDDLEWARES={f"{__name__}.HoldingMiddleware": 1},
    )
    crawler = await crawl(HoldingSpider, settings, site=image_site)
    spider: Any = crawler.spider

    assert spider.lifted, (
        "compat.change_request_limit() found no int Downloader.total_concurrency: Scrapy "
        "moved the downloader's running request limit, and RequestSlots lends no slot"
    )
    assert spider.woke, (
        "compat.wake_engine() found no ExecutionEngine._slot.nextcall.schedule(): Scrapy "
        "moved it, and a lent request slot waits for the engine's 5 s heartbeat"
    )
    assert spider.given_back
    assert spider.limit_at_close == 1
    second = f"{image_site}/page/2"
    assert second in spider.entered, f"the waiting request never started: {spider.entered}"
    waited = spider.entered[second] - spider.woke_at
    # Without the wake it would start on the heartbeat or when the first page ends (3 s).
    assert waited < 1.0, (
        f"the waiting request started {waited:.2f} s after the slot was lent and the engine "
        "woken: ExecutionEngine._slot.nextcall no longer starts scheduled requests, or "
        "Downloader.total_concurrency no longer limits them"
    )


def test_no_slot_is_lent_and_no_engine_woken_before_the_crawl_starts() -> None:
    crawler = get_crawler(scrapy.Spider)
    assert compat.change_request_limit(crawler, +1) is False
    assert compat.wake_engine(crawler) is False


# BaseSettings.frozen (mask_api_key for the middleware enabled alone)


def test_a_frozen_setting_can_be_replaced_and_stays_frozen() -> None:
    settings = Settings({"CAPSOLVER_API_KEY": "k" * 32}, priority="project")
    settings.freeze()
    with pytest.raises(TypeError):
        settings.set("CAPSOLVER_API_KEY", "other", priority="project")

    compat.replace_frozen_setting(settings, "CAPSOLVER_API_KEY", ApiKey("k" * 32), "project")

    assert isinstance(settings["CAPSOLVER_API_KEY"], ApiKey), (
        "compat.replace_frozen_setting() could not change a frozen setting: Scrapy no longer "
        "keeps BaseSettings.frozen as the flag its setters check"
    )
    assert settings.getpriority("CAPSOLVER_API_KEY") == 20  # "project", as it was
    assert settings.frozen, "the settings must be frozen again after the change"
    with pytest.raises(TypeError):
        settings.set("CAPSOLVER_API_KEY", "other", priority="project")


def test_the_add_on_masks_the_key_before_scrapy_freezes_the_settings() -> None:
    """The add-on's path needs no internal: the settings are not frozen yet."""
    settings = Settings({"CAPSOLVER_API_KEY": " " + "k" * 32 + " "}, priority="spider")
    mask_api_key(settings)
    assert settings["CAPSOLVER_API_KEY"] == ApiKey("k" * 32)
    assert settings.getpriority("CAPSOLVER_API_KEY") == 30
    assert not settings.frozen


# HTTPChannel._respondToBadRequestAndDisconnect (the local OCR server)


def record_refusal(channel: RecordingChannel) -> None:
    channel.refusals.append(True)
    channel.transport.loseConnection()  # type: ignore[union-attr]


@compat.answer_malformed_requests(record_refusal)
class RecordingChannel(HTTPChannel):
    refusals: list[bool]


@pytest.mark.parametrize(
    "data",
    [
        b"NOT-HTTP\r\n\r\n",
        b"POST /createTask HTTP/1.1\r\nno colon here\r\n\r\n",
        b"POST /createTask HTTP/1.1\r\nContent-Length: many\r\n\r\n",
        b"POST /createTask HTTP/1.1\r\n" + b"X-Pad: %s\r\n" % (b"a" * 6_000) * 3 + b"\r\n",
        b"POST /createTask HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["request-line", "header-line", "content-length", "headers-too-large", "chunk"],
)
def test_twisted_refuses_malformed_requests_through_the_channel_hook(data: bytes) -> None:
    channel = RecordingChannel()
    channel.refusals = []
    transport = StringTransport()
    channel.makeConnection(transport)
    try:
        channel.dataReceived(data)
    finally:
        channel.connectionLost(Failure(ConnectionError("test over")))
    assert channel.refusals == [True], (
        f"Twisted did not call HTTPChannel.{compat.TWISTED_REFUSAL}() to refuse a malformed "
        "request: the local OCR server now answers it with Twisted's bare 400 instead of "
        "CapSolver's JSON"
    )
    assert b"400 Bad Request" not in transport.value()


# scrapy.utils.reactorless.is_reactorless (Scrapy 2.15+)


def test_scrapy_reactorless_helper_is_where_compat_looks() -> None:
    if HAS_REACTORLESS_MODE:
        module = importlib.import_module("scrapy.utils.reactorless")
        assert callable(getattr(module, "is_reactorless", None)), (
            f"Scrapy {scrapy.__version__} has no scrapy.utils.reactorless.is_reactorless(): "
            "compat.is_reactorless() would never see reactorless mode"
        )
    else:
        with pytest.raises(ImportError):
            importlib.import_module("scrapy.utils.reactorless")
    # This test runs on a Twisted reactor.
    assert compat.is_reactorless() is False


@pytest.mark.skipif(
    not HAS_REACTORLESS_MODE, reason="Scrapy before 2.15 has no reactorless mode to detect"
)
def test_compat_sees_reactorless_mode_where_scrapy_does() -> None:
    code = (
        "import asyncio\n"
        "from scrapy_capsolver_ocr.compat import is_reactorless\n"
        "async def main():\n"
        "    return is_reactorless()\n"
        "print(is_reactorless(), asyncio.run(main()))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    # Before any loop runs Scrapy cannot tell; inside a loop with no reactor it is that mode.
    assert done.stdout.split() == ["False", "True"]


REACTORLESS_SPIDER = """
import scrapy

class Reactorless(scrapy.Spider):
    name = "reactorless"

    async def start(self):
        yield scrapy.Request("{url}")

    def parse(self, response):
        pass
"""


@pytest.mark.skipif(
    not HAS_REACTORLESS_MODE, reason="Scrapy before 2.15 has no reactorless mode to refuse"
)
@pytest.mark.parametrize(
    "enable",
    [
        ["-s", 'ADDONS={"scrapy_capsolver_ocr.Addon": 500}'],
        ["-s", 'DOWNLOADER_MIDDLEWARES={"scrapy_capsolver_ocr.CaptchaSolverMiddleware": 543}'],
    ],
    ids=["add-on", "middleware-alone"],
)
def test_a_reactorless_crawl_is_refused_at_start(
    image_site: str, tmp_path: Path, enable: list[str]
) -> None:
    spider = tmp_path / "reactorless.py"
    spider.write_text(REACTORLESS_SPIDER.format(url=f"{image_site}/page/1"))
    done = subprocess.run(
        [
            *(sys.executable, "-m", "scrapy", "runspider", str(spider), *enable),
            *("-s", "TWISTED_REACTOR_ENABLED=False", "-s", "CAPSOLVER_API_KEY=" + "k" * 32),
            *("-s", "TELNETCONSOLE_ENABLED=False"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
        check=False,
    )
    assert "Using AsyncCrawlerProcess" in done.stderr  # the crawl was reactorless indeed
    assert done.returncode == 1, done.stderr
    assert REACTORLESS_MESSAGE in done.stderr
    assert "Remove the setting or set it to True" in done.stderr
    assert "Spider opened" not in done.stderr  # refused before anything was crawled
    assert "k" * 32 not in done.stderr


# HttpProxyMiddleware's _auth_proxy meta key, no longer copied by page mode


class ProxiedSite(resource.Resource):
    """An HTTP proxy that is also the only site behind it: it answers the absolute-URI
    requests a client sends to a proxy, and records each path with its credentials."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, bytes | None]] = []

    def render_GET(self, request: Any) -> bytes:
        path = urlsplit(request.uri.decode()).path
        self.seen.append((path, request.getHeader(b"Proxy-Authorization")))
        if path == "/login":
            return b'<html><body><img id="captcha-image" src="/captcha.png"></body></html>'
        request.setHeader(b"Content-Type", b"image/png")
        return captcha_image("px42")


@pytest_twisted.ensureDeferred
async def test_page_mode_fetches_the_captcha_through_the_pages_proxy_and_credentials(
    capsolver: CapSolverMock,
) -> None:
    from twisted.internet import reactor

    site = ProxiedSite()
    port: Any = reactor.listenTCP(0, server.Site(site), interface="127.0.0.1")  # type: ignore[attr-defined]
    address = f"127.0.0.1:{port.getHost().port}"
    try:
        crawler = await crawl(
            RecordingSpider,
            solver_settings(capsolver),
            urls=[f"http://{address}/login"],
            meta={
                "solve_image": {"selector": "#captcha-image"},
                "proxy": f"http://user:s%40cret@{address}",
            },
        )
    finally:
        stopped = port.stopListening()
        if stopped is not None:
            await stopped
    spider: Any = crawler.spider

    assert spider.errors == {}
    assert spider.texts == {f"http://{address}/login": "px42"}
    credentials = b"Basic " + base64.b64encode(b"user:s@cret")
    assert site.seen == [("/login", credentials), ("/captcha.png", credentials)]


# Import paths users and the example project name


#: ``scrapy_capsolver_ocr.__all__`` before the package moved into subpackages, with the
#: module each name was defined in then (git show 8d7da02:scrapy_capsolver_ocr/__init__.py).
OLD_PUBLIC_NAMES = {
    "Addon": "scrapy_capsolver_ocr.addon",
    "solve_page_captcha": "scrapy_capsolver_ocr.browser_captcha",
    "CaptchaSolverMiddleware": "scrapy_capsolver_ocr.middleware",
    "CaptchaSolution": "scrapy_capsolver_ocr.solution",
    "CaptchaSolver": "scrapy_capsolver_ocr.solver",
    "get_solver": "scrapy_capsolver_ocr",
    **{
        name: "scrapy_capsolver_ocr.errors"
        for name in (
            "CaptchaAccountError",
            "CaptchaApiError",
            "CaptchaBlockedError",
            "CaptchaBudgetError",
            "CaptchaCrawlClosingError",
            "CaptchaFleetError",
            "CaptchaImageError",
            "CaptchaInjectionError",
            "CaptchaNotFoundError",
            "CaptchaOptionsError",
            "CaptchaRejectedError",
            "CaptchaSolveError",
            "CaptchaTaskError",
            "CaptchaTimeoutError",
            "CaptchaTransientError",
        )
    },
}

#: Paths a settings file, a spider or a JOBDIR queue may name -> where the object lives now.
OLD_PATHS = {
    "scrapy_capsolver_ocr.Addon": "scrapy_capsolver_ocr.integration.addon.Addon",
    "scrapy_capsolver_ocr.addon.Addon": "scrapy_capsolver_ocr.integration.addon.Addon",
    "scrapy_capsolver_ocr.CaptchaSolverMiddleware": (
        "scrapy_capsolver_ocr.integration.middleware.CaptchaSolverMiddleware"
    ),
    "scrapy_capsolver_ocr.middleware.CaptchaSolverMiddleware": (
        "scrapy_capsolver_ocr.integration.middleware.CaptchaSolverMiddleware"
    ),
    "scrapy_capsolver_ocr.injection.BoundAnswer": (
        "scrapy_capsolver_ocr.integration.injection.BoundAnswer"
    ),
    # The page method a queued scrapy-playwright request pickles by name.
    "scrapy_capsolver_ocr.browser_captcha.capture_element": (
        "scrapy_capsolver_ocr.integration.playwright_pages.capture_element"
    ),
    # Pickled into JOBDIR queues, and named by spiders' imports: not moved.
    **{
        path: path
        for path in (
            "scrapy_capsolver_ocr.solution.CaptchaSolution",
            "scrapy_capsolver_ocr.errors.CaptchaSolveError",
        )
    },
}


def resolve(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


@pytest.mark.parametrize(("old", "new"), sorted(OLD_PATHS.items()))
def test_old_import_paths_resolve_to_the_moved_objects(old: str, new: str) -> None:
    # Scrapy's own loader, as for ADDONS and DOWNLOADER_MIDDLEWARES.
    from scrapy.utils.misc import load_object

    assert load_object(old) is resolve(new), f"{old} no longer resolves to {new}"


def test_every_public_name_is_still_public_and_the_same_object() -> None:
    assert set(OLD_PUBLIC_NAMES) <= set(scrapy_capsolver_ocr.__all__), (
        "names dropped from scrapy_capsolver_ocr.__all__: "
        f"{sorted(set(OLD_PUBLIC_NAMES) - set(scrapy_capsolver_ocr.__all__))}"
    )
    for name in scrapy_capsolver_ocr.__all__:
        public = getattr(scrapy_capsolver_ocr, name)
        home = importlib.import_module(public.__module__)
        assert getattr(home, public.__name__) is public, f"{name} is not its module's object"
        old_module = OLD_PUBLIC_NAMES.get(name)
        if old_module is not None and old_module != "scrapy_capsolver_ocr":
            try:
                old = getattr(importlib.import_module(old_module), name)
            except ImportError:
                continue  # an internal module that moved (solver, browser_captcha): only
                # the package path was ever documented for these names
            assert old is public, f"{old_module}.{name} is another object than the public one"
