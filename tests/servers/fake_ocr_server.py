"""The local OCR server with a stand-in engine, to test its HTTP layer without OCR.

The engine answers ``<module>:<number of image bytes>``. With ``--parties N`` every call
waits until N calls are in progress at once, so requests only succeed if the server reads
N images in parallel. ``--open-files N`` lowers the process's open-file limit first, as on
machines where it is 1024 or less. Every other option is one of ``scrapy-capsolver-ocr
serve``. Run: ``python tests/servers/fake_ocr_server.py [--parties N] [serve options]``.
"""

from __future__ import annotations

import argparse
import resource
import threading

from scrapy_capsolver_ocr.cli import commands as cli
from scrapy_capsolver_ocr.server import app as ocr_server

# Reached only when the server does not run the calls in parallel: the test then fails.
BARRIER_TIMEOUT = 30.0


class BarrierEngine:
    def __init__(self, parties: int) -> None:
        self._barrier = threading.Barrier(parties, timeout=BARRIER_TIMEOUT)

    def recognize(self, image: bytes, module: str) -> str:
        self._barrier.wait()
        return f"{module}:{len(image)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--parties", type=int, default=1)
    parser.add_argument("--open-files", type=int)
    args, serve_argv = parser.parse_known_args()
    if args.open_files:
        resource.setrlimit(resource.RLIMIT_NOFILE, (args.open_files, args.open_files))
    serve_args = cli.build_parser().parse_args(["serve", *serve_argv])
    ocr_server.serve(BarrierEngine(args.parties), **cli.serve_options(serve_args))


if __name__ == "__main__":
    main()
