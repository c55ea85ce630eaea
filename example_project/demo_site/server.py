"""A demo website with image captchas, to try scrapy-capsolver-ocr on (and to test it).

Run ``python example_project/demo_site/server.py --port 0``: the first line on stdout is the
site's URL, printed once the port is bound. Log in with demo / demo and the captcha's text.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from captchas import CaptchaMaker
from pages import DemoSite, build_root
from twisted.web.server import Site


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="default: %(default)s")
    parser.add_argument("--port", type=int, default=8080, help="0: a free port (default: 8080)")
    parser.add_argument(
        "--style",
        choices=("noisy", "digits", "gvcode"),
        default="noisy",
        help=(
            "noisy letters and digits (default); 4 digits with little distortion; or "
            "letters and digits drawn by gvcode (pip install gvcode), which offline OCR "
            "reads badly"
        ),
    )
    parser.add_argument(
        "--digits",
        action="store_const",
        dest="style",
        const="digits",
        help="the same as --style digits",
    )
    parser.add_argument(
        "--reject-first",
        type=int,
        default=0,
        metavar="N",
        help="refuse the first N captcha answers of each session, even right ones",
    )
    parser.add_argument(
        "--embed-answers",
        action="store_true",
        help="write each answer into its PNG (tEXt chunk 'captcha-answer'), for tests",
    )
    args = parser.parse_args(argv)
    if args.reject_first < 0:
        parser.error("--reject-first must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    from twisted.internet import reactor
    from twisted.logger import globalLogBeginner, textFileLogObserver

    args = parse_args(argv)
    maker = CaptchaMaker.of_style(args.style)
    site = DemoSite(maker, reject_first=args.reject_first, embed_answers=args.embed_answers)
    # Logs to stderr: stdout carries the URL line only.
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    port = reactor.listenTCP(args.port, Site(build_root(site)), interface=args.host)
    print(f"http://{args.host}:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
