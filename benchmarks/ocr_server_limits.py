"""What image bombs and idle connections cost the local OCR server (Linux: reads /proc).

Each case starts ``scrapy-capsolver-ocr serve`` (ddddocr, 2 workers) in a fresh process,
sends its requests and prints how long the answers took and the server's memory: resident
once started, and at its peak (``VmHWM``). The cases: a 160x60 captcha for reference, a
274-byte PNG declaring 50000x50000 pixels, a 657 KB PNG of 13000x13000 blank pixels, two of
those at once, a 4 KB PNG of 100000x10 (within a 1,000,000-pixel cap, but a thin strip);
then N idle connections (plain sockets that send nothing) opened before one createTask,
with the server's open-file limit at 1024, a common default.

    python benchmarks/ocr_server_limits.py [--idle 1100] [--tree DIR]

``--tree DIR`` serves the package found in DIR instead of the installed one, e.g. an older
checkout (``git archive REV scrapy_capsolver_ocr | tar -x -C DIR``) for a before and after.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from servers.image_bombs import png_bomb  # noqa: E402

SERVER_FILES_LIMIT = 1024


@contextmanager
def serving(tree: Path | None, files_limit: int | None = None) -> Iterator[tuple[str, int]]:
    """A fresh server; yields its URL and process id."""
    env = dict(os.environ)
    if tree is not None:
        env["PYTHONPATH"] = str(tree)

    def limit_files() -> None:
        if files_limit is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (files_limit, files_limit))

    command = [sys.executable, "-m", "scrapy_capsolver_ocr", "serve", "--log-level", "ERROR"]
    with subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tree or REPO,
        preexec_fn=limit_files,
    ) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url:
                raise SystemExit(f"the server did not start (status {server.wait()})")
            yield url, server.pid
        finally:
            server.terminate()


def memory_mib(pid: int) -> dict[str, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) / 1024
    return fields


def create_task(url: str, image: bytes) -> tuple[str, float]:
    """The answer's text or error code, and the seconds it took."""
    body = json.dumps(
        {"clientKey": "benchmark", "task": {"type": "ImageToTextTask", "body": b64(image)}}
    ).encode()
    request = urllib.request.Request(f"{url}/createTask", data=body)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            outcome = f"read {json.load(response)['solution']['text']!r}"
    except urllib.error.HTTPError as error:
        with error:
            outcome = f"HTTP {error.code} {json.load(error)['errorCode']}"
    except OSError as error:
        outcome = f"no answer: {error!r}"
    return outcome, time.perf_counter() - started


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb_case(tree: Path | None, name: str, image: bytes, at_once: int) -> str:
    with serving(tree) as (url, pid):
        started = memory_mib(pid)["VmRSS"]
        with ThreadPoolExecutor(at_once) as executor:
            results = list(executor.map(lambda _: create_task(url, image), range(at_once)))
        peak = memory_mib(pid)["VmHWM"]
    outcomes = ", ".join(sorted({outcome for outcome, _ in results}))
    slowest_ms = max(seconds for _, seconds in results) * 1000
    return (
        f"| {name} | {len(image):,} B | {at_once} | {outcomes} | {slowest_ms:,.0f} ms "
        f"| {started:,.0f} MiB | {peak:,.0f} MiB |"
    )


def idle_case(tree: Path | None, idle: int, captcha: bytes) -> str:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < idle + 64:  # this process holds the idle sockets
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, idle + 64), hard))
    with serving(tree, SERVER_FILES_LIMIT) as (url, _):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        sockets = []
        try:
            for _ in range(idle):
                sockets.append(socket.create_connection((host, int(port)), timeout=10))
            outcome, seconds = create_task(url, captcha)
        finally:
            for sock in sockets:
                sock.close()
    return (
        f"| {idle} idle connections, open-file limit {SERVER_FILES_LIMIT} | {outcome} "
        f"| {seconds * 1000:,.0f} ms |"
    )


def reference_captcha() -> bytes:
    from captcha.image import ImageCaptcha

    return ImageCaptcha(width=160, height=60).generate("4821", format="PNG").getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", type=int, default=1100, help="idle connections to open")
    parser.add_argument("--tree", type=Path, help="serve the package found in this folder")
    args = parser.parse_args()
    tree = args.tree.resolve() if args.tree else None
    captcha = reference_captcha()
    huge = png_bomb(13000, 13000)
    cases = [
        ("160x60 captcha", captcha, 1),
        ("PNG declaring 50000x50000", png_bomb(50000, 50000, rows=1), 1),
        ("PNG of 13000x13000", huge, 1),
        ("PNG of 13000x13000", huge, 2),
        ("PNG of 100000x10", png_bomb(100_000, 10), 1),
    ]
    print(f"server: {tree or 'installed package'}")
    print("| image | size | at once | answer | slowest answer | RSS started | peak RSS |")
    print("|---|---|---|---|---|---|---|")
    for name, image, at_once in cases:
        print(bomb_case(tree, name, image, at_once), flush=True)
    print()
    print("| connections | createTask | took |")
    print("|---|---|---|")
    print(idle_case(tree, args.idle, captcha), flush=True)


if __name__ == "__main__":
    main()
