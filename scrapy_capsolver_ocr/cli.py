"""The ``scrapy-capsolver-ocr`` command, also run as ``python -m scrapy_capsolver_ocr``.

``serve`` runs the local CapSolver-compatible OCR server (:mod:`scrapy_capsolver_ocr.ocr_server`).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import cast

from scrapy_capsolver_ocr import ocr_server

#: Read by ``serve`` when ``--require-key`` is not given: a key on the command line would show
#: in the process list.
REQUIRE_KEY_ENV = "CAPSOLVER_OCR_REQUIRE_KEY"

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default: ``sys.argv[1:]``); return the exit status."""
    args = build_parser().parse_args(argv)
    status: int = args.run(args)
    return status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scrapy-capsolver-ocr",
        description="Tools for scrapy-capsolver-ocr, the Scrapy captcha solver.",
    )
    commands = parser.add_subparsers(title="commands", required=True, metavar="COMMAND")
    _add_serve(commands)
    return parser


def _add_serve(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = commands.add_parser(
        "serve",
        help="run a local CapSolver-compatible server that reads image captchas offline",
        description=(
            "Serve CapSolver's createTask (ImageToTextTask), getBalance and feedbackTask "
            "on this machine, reading images with ddddocr. The first line on stdout is "
            "the server's URL, printed once the port is bound."
        ),
    )
    serve.add_argument("--host", default=ocr_server.DEFAULT_HOST, help="default: %(default)s")
    serve.add_argument(
        "--port",
        type=_port,
        default=ocr_server.DEFAULT_PORT,
        help="default: %(default)s, a free port",
    )
    serve.add_argument(
        "--workers",
        type=_positive_int,
        default=ocr_server.DEFAULT_WORKERS,
        help="images read at the same time, in threads (default: %(default)s)",
    )
    serve.add_argument(
        "--require-key",
        metavar="KEY",
        default=os.environ.get(REQUIRE_KEY_ENV) or None,
        help=(
            "answer ERROR_KEY_DENIED_ACCESS to requests with another clientKey "
            f"(default: ${REQUIRE_KEY_ENV}; unset: any key is accepted)"
        ),
    )
    serve.add_argument("--log-level", choices=_LOG_LEVELS, default="INFO")
    serve.set_defaults(run=_serve)


def _serve(args: argparse.Namespace) -> int:
    try:
        engine = ocr_server.DdddOcrEngine()
    except ocr_server.OcrUnavailableError as exc:
        print(f"scrapy-capsolver-ocr serve: {exc}", file=sys.stderr)
        return 1
    _configure_logging(args.log_level)
    from twisted.internet.error import CannotListenError

    try:
        ocr_server.serve(
            engine,
            host=args.host,
            port=args.port,
            workers=args.workers,
            require_key=args.require_key,
        )
    except CannotListenError as exc:
        print(f"scrapy-capsolver-ocr serve: {exc}", file=sys.stderr)
        return 1
    return 0


def _configure_logging(level: str) -> None:
    from twisted.logger import ILogObserver, STDLibLogObserver, globalLogBeginner

    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s [%(name)s] %(levelname)s: %(message)s"
    )
    # Twisted's own messages then go to stderr like ours; stdout stays for the URL line.
    observer = cast(ILogObserver, STDLibLogObserver())  # a zope interface, opaque to mypy
    globalLogBeginner.beginLoggingTo([observer], redirectStandardIO=False)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be 0 (a free port) to 65535, got {value}")
    return value
