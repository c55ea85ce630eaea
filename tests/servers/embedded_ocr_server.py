"""The bundled OCR server (every dialect: ``scrapy-capsolver-ocr serve``) with a stand-in
engine that reads the answer image_site.py and the demo site embed in their PNGs, so crawls
through each dialect get exact answers without OCR.

The engine answers the embedded text (``blurred``: no text, which the server answers as
unsolvable), only its digits for the ``number`` module, always with ``--confidence``
(default 0.85). Every other option is one of ``scrapy-capsolver-ocr serve``. Run:
``python tests/servers/embedded_ocr_server.py [--confidence C] [serve options]``.
"""

from __future__ import annotations

import argparse

from png_text import embedded_answer

from scrapy_capsolver_ocr.cli import commands as cli
from scrapy_capsolver_ocr.engines.local.gate import Reading
from scrapy_capsolver_ocr.server import app as ocr_server

UNREADABLE = "blurred"


class EmbeddedAnswerEngine:
    def __init__(self, confidence: float) -> None:
        self._confidence = confidence

    def recognize(self, image: bytes, module: str) -> Reading:
        text = embedded_answer(image) or ""
        if text == UNREADABLE:
            text = ""
        if module == "number":
            text = "".join(char for char in text if char.isdigit())
        return Reading(text, self._confidence)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--confidence", type=float, default=0.85)
    args, serve_argv = parser.parse_known_args()
    serve_args = cli.build_parser().parse_args(["serve", *serve_argv])
    ocr_server.serve(EmbeddedAnswerEngine(args.confidence), **cli.serve_options(serve_args))


if __name__ == "__main__":
    main()
