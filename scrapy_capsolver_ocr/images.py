"""Checks that a body is a complete raster image before any API call is paid for.

The type is judged by magic bytes only: captcha URLs often lie in their extension and
Content-Type, and the common failure is an HTML block page served with status 200.
"""

from __future__ import annotations

import struct

from .errors import CaptchaImageError

#: ``CAPSOLVER_MAX_IMAGE_PIXELS``: a captcha has far fewer; an image bomb declares far more.
DEFAULT_MAX_IMAGE_PIXELS = 1_000_000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"


def image_type(body: bytes) -> str | None:
    """The image format named by the body's magic bytes, or None."""
    if body.startswith(_PNG_SIGNATURE):
        return "png"
    if body.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if body.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if body.startswith(b"BM") and len(body) >= 14:
        return "bmp"
    if body.startswith(b"RIFF") and body[8:12] == b"WEBP":
        return "webp"
    return None


def _is_complete(kind: str, body: bytes) -> bool:
    """Whether the image ends where its format says it ends (a cut-off download does not)."""
    if kind == "png":
        return body.rstrip(b"\x00").endswith(_PNG_END)
    if kind == "jpeg":
        # Some encoders pad after the end-of-image marker; look near the end only.
        return b"\xff\xd9" in body[-64:]
    if kind == "gif":
        return body.rstrip(b"\x00").endswith(b";")
    if kind == "bmp":
        declared: int = struct.unpack_from("<I", body, 2)[0]
        return len(body) >= declared
    if kind == "webp":
        riff_size: int = struct.unpack_from("<I", body, 4)[0]
        return len(body) >= riff_size + 8
    return False


def _png_size(body: bytes) -> tuple[int, int] | None:
    # The first chunk is IHDR: width and height right after its type.
    if body[12:16] != b"IHDR" or len(body) < 24:
        return None
    width, height = struct.unpack_from(">II", body, 16)
    return width, height


def _gif_size(body: bytes) -> tuple[int, int] | None:
    if len(body) < 10:
        return None
    width, height = struct.unpack_from("<HH", body, 6)
    return width, height


def _bmp_size(body: bytes) -> tuple[int, int] | None:
    if len(body) < 26:
        return None
    header_size = struct.unpack_from("<I", body, 14)[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit sizes
        width, height = struct.unpack_from("<HH", body, 18)
        return width, height
    width, height = struct.unpack_from("<ii", body, 18)
    return abs(width), abs(height)  # a negative height is a top-down bitmap


def _webp_size(body: bytes) -> tuple[int, int] | None:
    chunk = body[12:16]
    if chunk == b"VP8X" and len(body) >= 30:
        width = int.from_bytes(body[24:27], "little") + 1
        height = int.from_bytes(body[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(body) >= 25 and body[20] == 0x2F:
        bits = int.from_bytes(body[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(body) >= 30 and body[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack_from("<HH", body, 26)
        return width & 0x3FFF, height & 0x3FFF
    return None


# Start-of-frame markers: SOF0..SOF15 but DHT (C4), JPG (C8) and DAC (CC).
_JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(body: bytes) -> tuple[int, int] | None:
    # Walk the marker segments up to the frame header, which holds the size.
    offset = 2
    while offset + 9 <= len(body):
        if body[offset] != 0xFF:
            return None
        marker = body[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):  # markers without a length
            offset += 2
            continue
        if marker in _JPEG_FRAMES:
            height, width = struct.unpack_from(">HH", body, offset + 5)
            return width, height
        (length,) = struct.unpack_from(">H", body, offset + 2)
        if length < 2:
            return None
        offset += 2 + length
    return None


_SIZE_READERS = {
    "png": _png_size,
    "gif": _gif_size,
    "bmp": _bmp_size,
    "webp": _webp_size,
    "jpeg": _jpeg_size,
}


def declared_size(kind: str, body: bytes) -> tuple[int, int] | None:
    """Width and height as the image's header declares them, without decoding it; None
    when the header does not say."""
    return _SIZE_READERS[kind](body)


def _describe(body: bytes) -> str:
    head = body[:200].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return "an HTML page (often a block or login page served instead of the captcha)"
    if head.startswith(b"<?xml") or b"<svg" in head:
        return "an SVG or XML document (vector captchas must be rendered first)"
    if head.startswith((b"{", b"[")):
        return "JSON"
    return f"unknown data starting with {body[:8]!r}"


def check_image(body: bytes, max_size: int, source: str, max_pixels: int | None = None) -> str:
    """Return the image format of ``body`` or raise :class:`CaptchaImageError`.

    ``source`` names where the bytes came from (a URL) for the error message. With
    ``max_pixels``, an image whose header declares more pixels (or no size) is refused: a
    few hundred bytes can declare a picture that takes gigabytes to decode.
    """
    if not body:
        raise CaptchaImageError(f"The captcha from {source} is empty (0 bytes); nothing to solve.")
    if len(body) > max_size:
        raise CaptchaImageError(
            f"The captcha from {source} is {len(body)} bytes, over CAPSOLVER_MAX_IMAGE_SIZE "
            f"({max_size}); raise the setting if the image is really a captcha."
        )
    kind = image_type(body)
    if kind is None:
        raise CaptchaImageError(
            f"The response from {source} is not a PNG, JPEG, GIF, BMP or WEBP image but "
            f"{_describe(body)}; check that the request for the captcha really returns it."
        )
    if not _is_complete(kind, body):
        raise CaptchaImageError(
            f"The {kind.upper()} captcha from {source} is truncated ({len(body)} bytes); "
            "the download was cut off."
        )
    if max_pixels is not None:
        check_pixels(kind, body, max_pixels, source)
    return kind


def check_pixels(kind: str, body: bytes, max_pixels: int, source: str) -> None:
    """Raise :class:`CaptchaImageError` unless the header of this ``kind`` of image declares
    a size of at most ``max_pixels`` pixels."""
    size = declared_size(kind, body)
    if size is None:
        raise CaptchaImageError(
            f"The {kind.upper()} captcha from {source} has no readable size in its header."
        )
    width, height = size
    if width == 0 or height == 0:
        raise CaptchaImageError(
            f"The captcha from {source} declares {width}x{height} pixels: it shows nothing."
        )
    if width * height > max_pixels:
        raise CaptchaImageError(
            f"The captcha from {source} declares {width}x{height} pixels, over "
            f"CAPSOLVER_MAX_IMAGE_PIXELS ({max_pixels}); raise the setting if the image is "
            "really a captcha."
        )
