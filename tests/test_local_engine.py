"""The local OCR engine on real images (ddddocr's model), and the threads it reads in."""

from __future__ import annotations

import io
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from labelled_captchas import demo_maker
from PIL import Image
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import deferLater

from scrapy_capsolver_ocr.engines.local.engine import InvalidImageError, OcrEngine, model_input
from scrapy_capsolver_ocr.engines.local.gate import passes
from scrapy_capsolver_ocr.engines.local.workers import NICENESS, WorkerThreads
from scrapy_capsolver_ocr.settings import DEFAULT_LOCAL_MIN_CONFIDENCE, default_local_workers

DIGITS = "0123456789"


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine()


def png(picture: Image.Image) -> bytes:
    out = io.BytesIO()
    picture.save(out, format="PNG")
    return out.getvalue()


def test_input_is_grey_64_high_and_scaled_to_minus_one_to_one() -> None:
    picture = Image.new("RGB", (160, 60), "white")
    picture.paste((0, 0, 0), (0, 0, 80, 60))  # left half black
    values = model_input(png(picture))
    assert values.shape == (1, 1, 64, int(160 * 64 / 60))
    assert values.dtype == np.float32
    assert values[0, 0, 32, 10] == pytest.approx(-1.0)
    assert values[0, 0, 32, -10] == pytest.approx(1.0)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P"])
def test_transparency_is_white_background(mode: str) -> None:
    picture = Image.new("RGBA", (120, 40), (0, 0, 0, 0))  # transparent black
    if mode != "RGBA":
        picture = picture.convert(mode)
        if mode == "P":
            picture.info["transparency"] = 0
    values = model_input(png(picture))
    assert values.min() == pytest.approx(1.0)


def test_a_palette_image_is_read_in_colour() -> None:
    picture = Image.new("RGB", (100, 50), "white").convert("P")
    assert model_input(png(picture)).min() == pytest.approx(1.0)


@pytest.mark.parametrize(
    "body", [b"not an image", png(Image.new("RGB", (4000, 2), "white"))], ids=["junk", "strip"]
)
def test_what_is_no_captcha_image_is_refused(engine: OcrEngine, body: bytes) -> None:
    with pytest.raises(InvalidImageError):
        engine.read(body, DIGITS)


def test_the_demo_digit_captchas_are_read_and_most_are_sure(engine: OcrEngine) -> None:
    maker = demo_maker("digits")
    answers = [maker.new_answer() for _ in range(40)]
    readings = [engine.read(maker.render(answer), DIGITS) for answer in answers]
    right = [reading.text == answer for reading, answer in zip(readings, answers, strict=True)]
    # About 97 % are read right and 9 in 10 pass the default gate (docs/local-first.md).
    assert sum(right) >= 32
    sure = [passes(r, {4}, DEFAULT_LOCAL_MIN_CONFIDENCE) for r in readings]
    assert sum(sure) >= 28
    assert all(r.text.isdigit() for r in readings)


def test_the_gate_declines_most_of_a_style_the_engine_reads_badly(engine: OcrEngine) -> None:
    maker = demo_maker("gvcode")
    answers = [maker.new_answer() for _ in range(60)]
    readings = [engine.read(maker.render(answer), maker.alphabet) for answer in answers]
    sure = [
        (reading, answer)
        for reading, answer in zip(readings, answers, strict=True)
        if passes(reading, {4}, DEFAULT_LOCAL_MIN_CONFIDENCE)
    ]
    # About 12 % pass the gate (a quarter of them wrong); the rest goes to CapSolver.
    assert len(sure) <= 18


def test_each_thread_has_its_own_single_threaded_session(engine: OcrEngine) -> None:
    sessions = []

    def load() -> None:
        sessions.append(engine._session())

    threads = [threading.Thread(target=load) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sessions[0] is not sessions[1]
    for session in sessions:
        assert session.get_session_options().intra_op_num_threads == 1


def test_engine_loads_nothing_before_its_first_read(tmp_path: Path) -> None:
    fresh = OcrEngine()
    assert fresh._model is None
    maker = demo_maker("digits")
    fresh.read(maker.render("1234"), DIGITS)
    assert fresh._model is not None


# The worker threads: awaited as Scrapy awaits them (in an asyncio task on that reactor)


@pytest_twisted.ensureDeferred
async def test_reads_run_off_the_reactor_thread_and_stop_waits_for_them() -> None:
    from twisted.internet import reactor

    workers = WorkerThreads(2, reactor)
    reactor_thread = threading.get_ident()
    ran_in: list[int] = []

    def slow(value: int) -> int:
        ran_in.append(threading.get_ident())
        time.sleep(0.05)
        return value * 2

    assert await deferred_from_coro(workers.run(slow, 21)) == 42
    assert ran_in and reactor_thread not in ran_in

    pending = deferred_from_coro(workers.run(slow, 1))
    await deferLater(reactor, 0.01, lambda: None)  # the call has started
    assert workers.busy == 1
    await deferred_from_coro(workers.stop())
    assert pending.called  # it ended before the threads stopped
    assert await pending == 2
    assert workers.busy == 0
    with pytest.raises(RuntimeError, match="stopped"):
        await deferred_from_coro(workers.run(slow, 3))
    await deferred_from_coro(workers.stop())  # twice is harmless


@pytest_twisted.ensureDeferred
async def test_an_error_in_a_worker_reaches_the_caller() -> None:
    from twisted.internet import reactor

    workers = WorkerThreads(1, reactor)

    def broken() -> None:
        raise ValueError("no such image")

    try:
        with pytest.raises(ValueError, match="no such image"):
            await deferred_from_coro(workers.run(broken))
    finally:
        await deferred_from_coro(workers.stop())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
@pytest_twisted.ensureDeferred
async def test_reading_threads_yield_the_cpu_to_the_crawl() -> None:
    from twisted.internet import reactor

    workers = WorkerThreads(1, reactor)

    def niceness() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    try:
        assert await deferred_from_coro(workers.run(niceness)) == niceness() + NICENESS
    finally:
        await deferred_from_coro(workers.stop())


def test_one_reading_thread_on_a_small_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert default_local_workers() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert default_local_workers() == 2
