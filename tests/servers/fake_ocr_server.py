"""The local OCR server with a stand-in engine, to test its HTTP layer without OCR.

The engine answers ``<module>:<number of image bytes>``. With ``--parties N`` every call
waits until N calls are in progress at once, so requests only succeed if the server reads
N images in parallel. Run: ``python tests/servers/fake_ocr_server.py [--parties N]``.
"""

from __future__ import annotations

import argparse
import threading

from scrapy_capsolver_ocr import ocr_server

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
    parser.add_argument("--workers", type=int, default=ocr_server.DEFAULT_WORKERS)
    parser.add_argument("--require-key")
    args = parser.parse_args()
    ocr_server.serve(
        BarrierEngine(args.parties), workers=args.workers, require_key=args.require_key
    )


if __name__ == "__main__":
    main()
