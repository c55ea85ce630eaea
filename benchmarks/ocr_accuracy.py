"""How well and how fast the local OCR server reads the demo site's captchas.

Starts ``scrapy-capsolver-ocr serve`` in a subprocess, sends it N captchas of each demo-site
style (drawn by the site's own generator), and prints the share read right (ignoring case,
as the site does), the mean and 95th-percentile time of one createTask call seen by a
client, the throughput with several clients at once, and for comparison the time of the
OCR engine alone, called in this process.

    python benchmarks/ocr_accuracy.py [-n 200] [--clients 2] [--workers 2]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# The demo site is a script directory, not a package: import its generator from there.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "example_project" / "demo_site"))
from captchas import CaptchaMaker

from scrapy_capsolver_ocr.server.app import DdddOcrEngine

STYLES = {
    # style: (generator, module sent to the server)
    "noisy (default)": (CaptchaMaker.noisy, None),
    "digits (--digits)": (CaptchaMaker.digits, "number"),
}


def solve(url: str, png: bytes, module: str | None) -> tuple[str, float]:
    """Return the text read (empty if refused) and the seconds the call took."""
    task = {"type": "ImageToTextTask", "body": base64.b64encode(png).decode()}
    if module:
        task["module"] = module
    body = json.dumps({"clientKey": "benchmark", "task": task}).encode()
    request = urllib.request.Request(
        f"{url}/createTask", data=body, headers={"Content-Type": "application/json"}
    )
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            text = json.load(response)["solution"]["text"]
    except urllib.error.HTTPError as error:
        error.close()
        text = ""
    return text, time.perf_counter() - started


def engine_ms(engine: DdddOcrEngine, images: list[bytes], module: str | None) -> float:
    started = time.perf_counter()
    for png in images:
        engine.recognize(png, module or "common")
    return (time.perf_counter() - started) * 1000 / len(images)


def measure(url: str, engine: DdddOcrEngine, style: str, count: int, clients: int) -> str:
    make, module = STYLES[style]
    maker = make()
    answers = [maker.new_answer() for _ in range(count)]
    images = [maker.render(answer) for answer in answers]
    results = [solve(url, png, module) for png in images]
    right = sum(
        text.casefold() == answer.casefold()
        for (text, _), answer in zip(results, answers, strict=True)
    )
    times_ms = [seconds * 1000 for _, seconds in results]
    p95_ms = statistics.quantiles(times_ms, n=20)[-1]
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as executor:
        list(executor.map(lambda png: solve(url, png, module), images))
    throughput = count / (time.perf_counter() - started)
    return (
        f"{style:<18} {right / count:6.1%} right of {count}, "
        f"{statistics.fmean(times_ms):5.1f} ms/image (p95 {p95_ms:5.1f}), "
        f"{throughput:5.1f} images/s with {clients} clients; "
        f"engine alone {engine_ms(engine, images, module):5.1f} ms/image"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=200, help="captchas per style")
    parser.add_argument("--clients", type=int, default=2, help="clients for the throughput run")
    parser.add_argument("--workers", type=int, default=2, help="the server's OCR threads")
    args = parser.parse_args()
    command = [sys.executable, "-m", "scrapy_capsolver_ocr", "serve", "--port", "0"]
    command += ["--workers", str(args.workers), "--log-level", "WARNING"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as server:
        try:
            assert server.stdout is not None
            url = server.stdout.readline().strip()
            if not url:
                raise SystemExit(f"the server did not start (status {server.wait()})")
            print(f"server: {url}, {args.workers} workers")
            engine = DdddOcrEngine()
            for style in STYLES:
                print(measure(url, engine, style, args.count, args.clients), flush=True)
        finally:
            server.terminate()


if __name__ == "__main__":
    main()
