"""The local OCR engine on real images (ddddocr's model), and the threads it reads in."""

from __future__ import annotations

import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import pytest_twisted
from labelled_captchas import demo_maker, fixed_captchas
from PIL import Image
from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import deferLater

from scrapy_capsolver_ocr.engines.local.engine import InvalidImageError, OcrEngine, model_input
from scrapy_capsolver_ocr.engines.local.gate import (
    Reading,
    passes,
    second_opinion,
    wants_second_opinion,
)
from scrapy_capsolver_ocr.engines.local.workers import (
    NICENESS,
    WorkerProcessDied,
    WorkerProcesses,
    WorkerThreads,
)
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
    drawn = fixed_captchas("digits", 40)
    answers = [answer for answer, _ in drawn]
    readings = [engine.read(image, DIGITS) for _, image in drawn]
    right = [reading.text == answer for reading, answer in zip(readings, answers, strict=True)]
    # About 97 % are read right and 9 in 10 pass the default gate (docs/local-first.md).
    assert sum(right) >= 32
    sure = [passes(r, {4}, DEFAULT_LOCAL_MIN_CONFIDENCE) for r in readings]
    assert sum(sure) >= 28
    assert all(r.text.isdigit() for r in readings)


def test_the_gate_declines_most_of_a_style_the_engine_reads_badly(engine: OcrEngine) -> None:
    drawn = fixed_captchas("gvcode", 60)
    answers = [answer for answer, _ in drawn]
    readings = [engine.read(image, demo_maker("gvcode").alphabet) for _, image in drawn]
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
        sessions.append(engine.first.session())

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
    assert fresh.first.loaded is None
    maker = demo_maker("digits")
    fresh.read(maker.render("1234"), DIGITS)
    assert fresh.first.loaded is not None


def test_the_second_model_is_asked_only_about_unsure_readings() -> None:
    fresh = OcrEngine()
    assert fresh.second is not None
    blank = fresh.read(png(Image.new("RGB", (160, 60), "white")), DIGITS)
    assert blank == Reading("", 0.0)
    assert fresh.second.loaded is None  # no text: nothing to ask about, nothing loaded
    maker = demo_maker("noisy")
    unsure = []
    for _ in range(60):
        body = maker.render(maker.new_answer())
        first = fresh.first.read(model_input(body), maker.alphabet)
        if wants_second_opinion(first):
            unsure.append((body, first))
    assert len(unsure) >= 10  # about half of the noisy captchas (docs/local-first.md)
    for body, first in unsure[:10]:
        second = fresh.second.read(model_input(body), maker.alphabet)
        assert fresh.read(body, maker.alphabet) == second_opinion(first, second)
    assert fresh.second.loaded is not None


def test_without_a_second_opinion_the_first_model_alone_answers() -> None:
    alone = OcrEngine(second_opinion=False)
    assert alone.second is None
    maker = demo_maker("noisy")
    for _ in range(10):
        body = maker.render(maker.new_answer())
        assert alone.read(body, maker.alphabet) == alone.first.read(
            model_input(body), maker.alphabet
        )


# Reading in worker processes


def test_worker_processes_read_as_the_thread_would(engine: OcrEngine) -> None:
    in_processes = OcrEngine(processes=1)
    maker = demo_maker("digits")
    try:
        for _ in range(5):
            body = maker.render(maker.new_answer())
            assert in_processes.read(body, DIGITS) == engine.read(body, DIGITS)
        with pytest.raises(InvalidImageError):
            in_processes.read(b"not an image", DIGITS)
        assert in_processes.processes is not None
        [pid] = in_processes.processes.processes
    finally:
        in_processes.close()
    assert process_ended(pid)
    with pytest.raises(RuntimeError, match="stopped"):
        in_processes.read(maker.render("1234"), DIGITS)


@pytest.fixture
def scripted_workers(monkeypatch: pytest.MonkeyPatch) -> Iterator[WorkerProcesses]:
    """Worker processes running :func:`worker_readers.scripted`."""
    tests = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")]))
    workers = WorkerProcesses(2, "worker_readers.scripted", {"exit_code": 3})
    yield workers
    workers.close()


def process_ended(pid: int, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


def test_a_worker_process_that_dies_while_reading_fails_that_read_only(
    scripted_workers: WorkerProcesses,
) -> None:
    first_pid = scripted_workers.call("pid")
    started = time.monotonic()
    with pytest.raises(WorkerProcessDied, match=r"exited \(code 3\) while reading"):
        scripted_workers.call("crash")
    assert time.monotonic() - started < 10  # an error, not a hang
    assert process_ended(first_pid)
    # The next read gets a new process.
    assert scripted_workers.call("pid") != first_pid
    assert scripted_workers.call("image", 1) == ("image", 1)


def test_a_worker_process_killed_while_idle_is_replaced_unnoticed(
    scripted_workers: WorkerProcesses,
) -> None:
    pid = scripted_workers.call("pid")
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.2)
    assert scripted_workers.call("pid") != pid
    assert process_ended(pid)  # and the dead one was collected, not left a zombie


def test_errors_and_prints_in_a_worker_process(scripted_workers: WorkerProcesses) -> None:
    with pytest.raises(ValueError, match="no such image"):
        scripted_workers.call("fail")
    assert scripted_workers.call("print") == ("print",)  # its print did not corrupt the pipe
    assert scripted_workers.call("again") == ("again",)


def test_at_most_the_given_number_of_worker_processes_read_at_once(
    scripted_workers: WorkerProcesses,
) -> None:
    with ThreadPoolExecutor(6) as pool:
        pids = set(pool.map(lambda _: scripted_workers.call("pid"), range(12)))
        list(pool.map(lambda _: scripted_workers.call("sleep"), range(4)))
    assert 1 <= len(pids) <= 2
    assert len(scripted_workers.processes) <= 2


def test_closing_waits_for_a_read_in_progress_then_stops_its_process(
    scripted_workers: WorkerProcesses,
) -> None:
    pid = scripted_workers.call("pid")
    with ThreadPoolExecutor(1) as pool:
        sleeping = pool.submit(scripted_workers.call, "sleep")
        time.sleep(0.2)
        scripted_workers.close()
        assert sleeping.result(timeout=10) == ("sleep",)
    assert process_ended(pid)
    assert scripted_workers.processes == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-thread nice is Linux's")
def test_worker_processes_yield_the_cpu_to_the_crawl(scripted_workers: WorkerProcesses) -> None:
    assert scripted_workers.call("nice") == os.getpriority(os.PRIO_PROCESS, 0) + NICENESS


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
