"""PNG image bombs: files that declare far more pixels than their size suggests, to test the
limits of the local OCR server. Standard library only, and built without holding the
pixels in memory.

``png_bomb(50000, 50000, rows=1)`` is a complete file of about 270 bytes that declares
50000x50000 pixels; ``png_bomb(13000, 13000)`` is a real 13000x13000 blank image of about
660 KB that takes gigabytes to decode.
"""

from __future__ import annotations

import struct
import zlib

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_RGBA = 6


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bomb(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A PNG of ``width`` x ``height`` transparent RGBA pixels.

    With ``rows``, the image data holds only that many rows: the file stays tiny whatever
    size it declares, and a decoder finds it truncated only after allocating the picture.
    """
    header = struct.pack(">IIBBBBB", width, height, 8, _RGBA, 0, 0, 0)
    blank_row = bytes(1 + 4 * width)  # filter byte "none", then the pixels
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(blank_row) for _ in range(height if rows is None else rows))
    data += compressor.flush()
    return PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")
