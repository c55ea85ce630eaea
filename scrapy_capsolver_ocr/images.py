"""Checks that a body is a complete raster image before any API call is paid for.

The type is judged by magic bytes only: captcha URLs often lie in their extension and
Content-Type, and the common failure is an HTML block page served with status 200.
"""

from __future__ import annotations

import struct

from .errors import CaptchaImageError

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


def _describe(body: bytes) -> str:
    head = body[:200].lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")) or b"<body" in head:
        return "an HTML page (often a block or login page served instead of the captcha)"
    if head.startswith(b"<?xml") or b"<svg" in head:
        return "an SVG or XML document (vector captchas must be rendered first)"
    if head.startswith((b"{", b"[")):
        return "JSON"
    return f"unknown data starting with {body[:8]!r}"


def check_image(body: bytes, max_size: int, source: str) -> str:
    """Return the image format of ``body`` or raise :class:`CaptchaImageError`.

    ``source`` names where the bytes came from (a URL) for the error message.
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
    return kind
