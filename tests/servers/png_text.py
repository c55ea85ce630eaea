"""Read the text chunks of a PNG, such as the answer the demo site embeds with
``--embed-answers`` (keyword ``captcha-answer``). Standard library only."""

from __future__ import annotations

import struct

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ANSWER_KEYWORD = "captcha-answer"


def read_png_text(png: bytes, keyword: str) -> str | None:
    """The value of the first ``tEXt`` chunk named ``keyword``, or None."""
    if not png.startswith(PNG_SIGNATURE):
        return None
    position = len(PNG_SIGNATURE)
    while position + 8 <= len(png):
        length, kind = struct.unpack(">I4s", png[position : position + 8])
        data = png[position + 8 : position + 8 + length]
        if kind == b"tEXt":
            name, _, value = data.partition(b"\0")
            if name == keyword.encode("latin-1"):
                return value.decode("latin-1")
        if kind == b"IEND":
            break
        position += 12 + length  # length, type, data, CRC
    return None


def embedded_answer(png: bytes) -> str | None:
    """The captcha answer the demo site wrote into ``png``, if it did."""
    return read_png_text(png, ANSWER_KEYWORD)
