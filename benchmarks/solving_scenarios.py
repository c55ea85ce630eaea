"""The measured runs of ``bench_solving.py``, each in a fresh process, so that the timings,
the reactor and the memory of one run never leak into the next:

    python benchmarks/solving_scenarios.py KIND 'JSON parameters'

prints the measurements as one JSON object on the last line of stdout (Scrapy logs to
stderr). Kinds:

- ``crawl``: a real Scrapy crawl (``CrawlerProcess``, asyncio reactor) of captcha images
  and/or ordinary pages; the captchas are solved by this plugin (``solve_image`` meta), by
  the official ``capsolver`` SDK called in the callback (blocking), by the SDK in Scrapy's
  thread pool (``deferToThread``), or not at all (downloads only).
- ``middleware``: a crawl whose one callback drives ``CaptchaSolverMiddleware.process_response``
  directly with images already in memory: the plugin's whole solving path, no downloads.
- ``bare``: a bare treq loop posting the same createTask JSON at the same concurrency.

Times are ``time.perf_counter()`` seconds from the start of the run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MB = 1024 * 1024
#: The solver's own bookkeeping, sampled at the end of a memory run.
SOLUTION_BYTES_TYPES = (bytes, bytearray, memoryview)


def rss_mb() -> float:
    """Resident memory of this process now, in MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE_SIZE / MB


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def captcha_urls(site: str, spec: dict[str, Any] | None) -> list[str]:
    """``{"kind": "captcha", "count": n}``: distinct captcha pictures (the benchmark warms
    the site's cache of them first); ``{"kind": "noise", "count": n, "size": b}``: distinct
    PNGs of about b bytes."""
    if not spec:
        return []
    count = int(spec["count"])
    if spec["kind"] == "noise":
        return [f"{site}/noise/{i}.png?size={spec['size']}" for i in range(count)]
    return [f"{site}/captcha/b{i:05d}.png" for i in range(count)]


def fetch_all(urls: list[str]) -> list[bytes]:
    def fetch(url: str) -> bytes:
        with urllib.request.urlopen(url, timeout=30) as answer:
            return bytes(answer.read())

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(fetch, urls))


def sdk_task(image: bytes) -> dict[str, str]:
    return {"type": "ImageToTextTask", "body": base64.b64encode(image).decode("ascii")}


@dataclass
class Marks:
    """When things happened during a crawl (perf_counter seconds)."""

    rss_every: int = 0
    first_image: float | None = None
    solved: list[float] = field(default_factory=list)
    pages: list[float] = field(default_factory=list)
    failed: int = 0
    rss: list[tuple[int, float]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: The most requests Scrapy's downloader allowed at once (CONCURRENT_REQUESTS and the
    #: slots the plugin lent to waiting solves), sampled at each response.
    request_slots: int = 0

    def image_downloaded(self) -> None:
        if self.first_image is None:
            self.first_image = time.perf_counter()

    def solve_ended(self) -> None:
        self.solved.append(time.perf_counter())
        if self.rss_every and len(self.solved) % self.rss_every == 0:
            self.rss.append((len(self.solved), rss_mb()))

    def summary(self) -> dict[str, Any]:
        last_page = self.pages[-1] if self.pages else None
        result: dict[str, Any] = {
            "solved": len(self.solved),
            "failed": self.failed,
            "pages": len(self.pages),
            "errors": self.errors[:5],
            "rss": self.rss,
            "request_slots": self.request_slots,
        }
        if self.solved and self.first_image is not None:
            result["solve_span"] = self.solved[-1] - self.first_image
        if len(self.pages) > 1:
            result["page_span"] = self.pages[-1] - self.pages[0]
        if last_page is not None:
            result["solved_before_last_page"] = sum(1 for t in self.solved if t <= last_page)
        return result


def make_spider_class() -> type[Any]:
    # Scrapy is imported inside: the ``bare`` kind installs its reactor before any import.
    import scrapy
    from scrapy import signals
    from scrapy.http import Request, Response
    from scrapy.utils.defer import maybe_deferred_to_future
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread
    from twisted.python.failure import Failure

    class BenchSpider(scrapy.Spider):
        """Requests captcha images first, then ordinary pages, and marks when each ends."""

        name = "bench"
        custom_settings: dict[str, Any] = {}

        def __init__(
            self,
            captcha_urls: list[str],
            page_urls: list[str],
            solve: str,
            marks: Marks,
            pages_after_captchas: bool = False,
            captcha_every: int = 0,
            **kwargs: Any,
        ) -> None:
            super().__init__(**kwargs)
            self.captcha_urls = captcha_urls
            self.page_urls = page_urls
            self.solve = solve
            self.marks = marks
            self.pages_after_captchas = pages_after_captchas
            self.captcha_every = captcha_every
            self.images_downloaded = 0
            self.all_images: Deferred[None] = Deferred()

        @classmethod
        def from_crawler(cls, crawler: Any, *args: Any, **kwargs: Any) -> BenchSpider:
            spider = super().from_crawler(crawler, *args, **kwargs)
            crawler.signals.connect(spider.downloaded, signal=signals.response_downloaded)
            return spider  # type: ignore[no-any-return]

        def downloaded(self, response: Response, request: Request, spider: Any) -> None:
            downloader = self.crawler.engine.downloader
            self.marks.request_slots = max(self.marks.request_slots, downloader.total_concurrency)
            if "bench_captcha" in request.meta:
                self.marks.image_downloaded()
                self.images_downloaded += 1
                if self.images_downloaded == len(self.captcha_urls):
                    self.all_images.callback(None)

        async def start(self) -> AsyncIterator[Request]:
            callbacks: dict[str, Callable[..., Any]] = {
                "plugin": self.solved,
                "none": self.solved,
                "sdk": self.solve_blocking,
                "sdk_thread": self.solve_in_thread,
            }
            meta: dict[str, Any] = {"bench_captcha": True}
            if self.solve == "plugin":
                meta["solve_image"] = True
            # Mixed in among the pages, a captcha has their priority; else it goes first.
            priority = 0 if self.captcha_every else 1
            captchas = (
                Request(
                    url,
                    meta=dict(meta),
                    callback=callbacks[self.solve],
                    errback=self.failed,
                    dont_filter=True,
                    priority=priority,
                )
                for url in self.captcha_urls
            )
            pages = (
                Request(url, callback=self.page, errback=self.failed, dont_filter=True)
                for url in self.page_urls
            )
            if self.captcha_every:
                # A captcha after every captcha_every pages, as a crawl meets them.
                for index, page in enumerate(pages, 1):
                    yield page
                    captcha = next(captchas, None) if index % self.captcha_every == 0 else None
                    if captcha is not None:
                        yield captcha
                for captcha in captchas:
                    yield captcha
                return
            for captcha in captchas:
                yield captcha
            if self.pages_after_captchas and self.captcha_urls:
                # The pages then crawl entirely while the solves are in flight.
                await maybe_deferred_to_future(self.all_images)
            for page in pages:
                yield page

        def solved(self, response: Response) -> None:
            if self.solve == "plugin" and "captcha_text" not in response.meta:
                self.marks.errors.append(f"no captcha_text for {response.url}")
            self.marks.solve_ended()

        def solve_blocking(self, response: Response) -> None:
            import capsolver

            # What the SDK's users write: the reactor waits for the whole API call.
            capsolver.solve(sdk_task(response.body))
            self.marks.solve_ended()

        async def solve_in_thread(self, response: Response) -> None:
            import capsolver

            await maybe_deferred_to_future(deferToThread(capsolver.solve, sdk_task(response.body)))
            self.marks.solve_ended()

        def page(self, response: Response) -> None:
            self.marks.pages.append(time.perf_counter())

        def failed(self, failure: Failure) -> None:
            self.marks.failed += 1
            self.marks.errors.append(repr(failure.value))

    return BenchSpider


def base_settings(params: dict[str, Any]) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "LOG_LEVEL": "INFO",
        "TELNETCONSOLE_ENABLED": False,
        "CAPSOLVER_API_KEY": params["key"],
        "CAPSOLVER_API_URL": params["api"],
    }
    if params.get("solve") not in ("sdk", "sdk_thread"):
        settings["ADDONS"] = {"scrapy_capsolver_ocr.Addon": 500}
    settings.update(params.get("settings", {}))
    return settings


#: Where a profiled run's time goes, by the file of the code that spent it (first match).
PROFILE_PARTS = (
    ("scrapy_capsolver_ocr", "the plugin's own code"),
    ("/json/", "JSON"),
    ("base64", "base64"),
    ("hashlib", "SHA-256"),
    ("/logging/", "logging"),
    ("/twisted/", "Twisted (HTTP client, reactor)"),
    ("/treq/", "Twisted (HTTP client, reactor)"),
    ("/asyncio/", "asyncio event loop"),
    ("selectors.py", "asyncio event loop"),
    ("/scrapy/", "Scrapy (requests, URLs, stats)"),
    ("/w3lib/", "Scrapy (requests, URLs, stats)"),
    ("/urllib/", "Scrapy (requests, URLs, stats)"),
    ("solving_scenarios", "the benchmark's driver"),
)
IDLE = "waiting for I/O (idle)"


def profile_parts(root: Any) -> dict[str, float]:
    """Seconds of self time by part; built-in (C) calls count for the code calling them,
    except the event loop's poll, which is idle time."""
    parts: dict[str, float] = {}

    def walk(frame: Any, inherited: str) -> None:
        path = frame.file_path or ""
        if path.startswith("<built-in>") or frame.is_synthetic:
            part = IDLE if frame.function.endswith(".poll") else inherited
        else:
            part = next((name for key, name in PROFILE_PARTS if key in path), "other")
        if not frame.is_synthetic:
            parts[part] = parts.get(part, 0.0) + frame.total_self_time
        for child in frame.children:
            walk(child, part)

    walk(root, "other")
    return parts


@contextlib.contextmanager
def profiled(path: str | None, into: dict[str, Any]) -> Iterator[None]:
    """Profile the block with pyinstrument into ``path`` (text) and put the seconds spent
    by part into ``into["profile_parts"]``, when a path is given."""
    if not path:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.0005)
    profiler.start()
    try:
        yield
    finally:
        session = profiler.stop()
        with open(path, "w") as out:
            out.write(profiler.output_text(unicode=True, show_all=True))
        root = session.root_frame()
        if root is not None:
            into["profile_parts"] = profile_parts(root)


def run_crawler(
    settings: dict[str, Any],
    spider_kwargs: dict[str, Any],
    profile: str | None,
) -> tuple[Any, float, float]:
    """Run one crawl to its end; return the crawler, the crawl's wall time and the CPU
    time this process spent in it."""
    from scrapy.crawler import CrawlerProcess

    process = CrawlerProcess(settings)
    crawler = process.create_crawler(make_spider_class())
    ended: list[float] = []
    done = process.crawl(crawler, **spider_kwargs)
    done.addBoth(lambda result: ended.append(time.perf_counter()) or result)
    with profiled(profile, {}):
        started = time.perf_counter()
        cpu = time.process_time()
        process.start()
        cpu = time.process_time() - cpu
    return crawler, ended[0] - started, cpu


def solver_state(crawler: Any) -> dict[str, Any]:
    """What the solver still holds after the crawl: solutions only, never image bytes."""
    from scrapy_capsolver_ocr import get_solver

    try:
        solver = get_solver(crawler)
    except RuntimeError:
        return {}
    state = solver.state  # a benchmark may look inside: this is what it checks
    cache = [solution for solution, _ in state._answers.values()]
    holds_bytes = any(
        isinstance(getattr(solution, f.name), SOLUTION_BYTES_TYPES)
        for solution in cache
        for f in fields(solution)
    )
    return {
        "cached_solutions": len(cache),
        "cache_holds_bytes": holds_bytes,
        "shared_calls_left": len(state._claims),
    }


def live_objects() -> dict[str, int]:
    """Requests and responses still alive (Scrapy's trackref), by class."""
    from scrapy.utils.trackref import live_refs

    return {cls.__name__: len(refs) for cls, refs in live_refs.items() if len(refs)}


def capsolver_stats(crawler: Any) -> dict[str, Any]:
    stats = crawler.stats.get_stats()
    return {k: v for k, v in stats.items() if k.startswith("capsolver/")}


def run_crawl(params: dict[str, Any]) -> dict[str, Any]:
    if params.get("solve") in ("sdk", "sdk_thread"):
        import capsolver

        capsolver.api_base = params["api"]
        capsolver.api_key = params["key"]
    site = params["site"]
    marks = Marks(rss_every=int(params.get("rss_every", 0)))
    spider_kwargs = {
        "captcha_urls": captcha_urls(site, params.get("captchas")),
        "page_urls": [f"{site}/page/{i}" for i in range(1, int(params.get("pages", 0)) + 1)],
        "solve": params.get("solve", "plugin"),
        "marks": marks,
        "pages_after_captchas": bool(params.get("pages_after_captchas")),
        "captcha_every": int(params.get("captcha_every", 0)),
    }
    rss_before = rss_mb()
    if marks.rss_every:
        marks.rss.append((0, rss_before))
    crawler, wall, cpu = run_crawler(base_settings(params), spider_kwargs, params.get("profile"))
    result = marks.summary()
    result.update(
        wall=wall,
        rss_before=rss_before,
        rss_after=rss_mb(),
        peak_rss=peak_rss_mb(),
        live=live_objects(),
        stats=capsolver_stats(crawler),
        finish_reason=crawler.stats.get_value("finish_reason"),
        concurrent_requests=crawler.settings.getint("CONCURRENT_REQUESTS"),
        cpu=cpu,
        **solver_state(crawler),
    )
    return result


def run_middleware(params: dict[str, Any]) -> dict[str, Any]:
    """Solve in-memory images through ``process_response`` at a fixed concurrency."""
    import scrapy
    from scrapy.http import Request, Response

    from scrapy_capsolver_ocr import CaptchaSolverMiddleware

    urls = captcha_urls(params["site"], params["captchas"])
    images = list(zip(urls, fetch_all(urls), strict=True))
    concurrency = int(params["concurrency"])
    measured: dict[str, Any] = {}

    class DriveSpider(scrapy.Spider):
        name = "drive"

        async def start(self) -> AsyncIterator[Request]:
            yield Request(f"{params['site']}/page/0", callback=self.drive, dont_filter=True)

        async def drive(self, response: Response) -> None:
            assert self.crawler.engine is not None
            middleware = next(
                m
                for m in self.crawler.engine.downloader.middleware.middlewares
                if isinstance(m, CaptchaSolverMiddleware)
            )
            work: Iterator[tuple[str, bytes]] = iter(images)
            solved = 0

            async def worker() -> None:
                nonlocal solved
                for url, image in work:
                    request = Request(url, meta={"solve_image": True})
                    response = Response(url, body=image, request=request)
                    await middleware.process_response(request=request, response=response)
                    solved += "captcha_text" in request.meta

            started, cpu = time.perf_counter(), time.process_time()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            measured.update(
                solve_span=time.perf_counter() - started,
                cpu=time.process_time() - cpu,
                solved=solved,
            )

    from scrapy.crawler import CrawlerProcess

    process = CrawlerProcess(base_settings(params))
    crawler = process.create_crawler(DriveSpider)
    process.crawl(crawler)
    with profiled(params.get("profile"), measured):
        process.start()
    measured.update(stats=capsolver_stats(crawler))
    return measured


def run_bare(params: dict[str, Any]) -> dict[str, Any]:
    """The least any client must do per solve: base64, JSON, one POST, parse the answer."""
    from scrapy.utils.reactor import install_reactor

    install_reactor("twisted.internet.asyncioreactor.AsyncioSelectorReactor")
    import treq
    from twisted.internet import task
    from twisted.internet.defer import ensureDeferred, gatherResults
    from twisted.web.client import Agent, HTTPConnectionPool

    images = fetch_all(captcha_urls(params["site"], params["captchas"]))
    concurrency = int(params["concurrency"])
    url = f"{params['api']}/createTask"
    measured: dict[str, Any] = {}

    async def main(reactor: Any) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = concurrency
        http = treq.client.HTTPClient(Agent(reactor, pool=pool))
        work = iter(images)
        solved = 0

        async def worker() -> None:
            nonlocal solved
            for image in work:
                body = json.dumps({"clientKey": params["key"], "task": sdk_task(image)}).encode()
                response = await http.post(
                    url, data=body, headers={"Content-Type": "application/json"}
                )
                answer = json.loads(await response.content())
                solved += answer.get("errorId") == 0

        started, cpu = time.perf_counter(), time.process_time()
        await gatherResults([ensureDeferred(worker()) for _ in range(concurrency)])
        measured.update(
            solve_span=time.perf_counter() - started,
            cpu=time.process_time() - cpu,
            solved=solved,
        )
        await pool.closeCachedConnections()

    # react() always ends in sys.exit(); the measurements are in hand by then.
    with contextlib.suppress(SystemExit):
        task.react(lambda reactor: ensureDeferred(main(reactor)))
    return measured


KINDS: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
    "crawl": run_crawl,
    "middleware": run_middleware,
    "bare": run_bare,
}


def main() -> None:
    kind, raw = sys.argv[1], sys.argv[2]
    result = KINDS[kind](json.loads(raw))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
