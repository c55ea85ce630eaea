"""A small website of captcha images and error bodies, for the middleware tests.

Run ``python image_site.py``: binds 127.0.0.1 on a free port, prints its URL first.

- ``/captcha/<text>.png``: a PNG captcha of ``text`` made by the ``captcha`` package, with
  the answer in a ``captcha-answer`` tEXt chunk (so the CapSolver mock can answer it);
  ``?seed=N`` varies the noise, so equal texts can be distinct images.
- ``/captcha/<text>.<jpg|gif|bmp|webp>``: the same in other formats.
- ``/bad/<name>``: empty, html, truncated, svg, big (2 MB PNG-looking), json.
- ``/status/<code>``: that status with an HTML body.
- ``/noise/<n>.png?size=B``: a distinct PNG of about B bytes (default 30000) of random
  grey pixels seeded by ``n``, answer ``n<n>`` embedded, made in about a millisecond and
  not kept (for the benchmarks' many large images).
- ``/page/<n>``: an ordinary HTML page linking to the next ones.
- ``/form?...``: a form's target: JSON of the query's fields; with ``reject`` among them it
  says "Wrong captcha" (for ``captcha_retry_if``).
"""

from __future__ import annotations

import functools
import io
import json
import math
import random
from typing import Any

from captcha.image import ImageCaptcha
from PIL import Image, PngImagePlugin
from twisted.internet import reactor
from twisted.web import resource, server

try:  # run as a script, beside the module
    from seeded_drawing import seeded_drawing
except ImportError:  # imported by the tests, as servers.image_site
    from .seeded_drawing import seeded_drawing

FORMATS = {"png": "PNG", "jpg": "JPEG", "gif": "GIF", "bmp": "BMP", "webp": "WEBP"}


@functools.cache
def captcha_image(text: str, fmt: str = "png", seed: int = 0) -> bytes:
    """One fixed image per arguments, on every run: tests compare bytes."""
    with seeded_drawing(f"{text}:{seed}"):
        image = ImageCaptcha(width=160, height=60).generate_image(text)
    out = io.BytesIO()
    if fmt == "png":
        info = PngImagePlugin.PngInfo()
        info.add_text("captcha-answer", text)
        image.save(out, format="PNG", pnginfo=info)
    else:
        image.save(out, format=FORMATS[fmt])
    return out.getvalue()


def noise_image(number: int, size: int) -> bytes:
    """A PNG of about ``size`` bytes: random pixels do not compress, so the side follows."""
    side = max(8, math.isqrt(size))
    pixels = random.Random(number).randbytes(side * side)
    info = PngImagePlugin.PngInfo()
    info.add_text("captcha-answer", f"n{number}")
    out = io.BytesIO()
    Image.frombytes("L", (side, side), pixels).save(
        out, format="PNG", pnginfo=info, compress_level=0
    )
    return out.getvalue()


def bad_body(name: str) -> tuple[bytes, bytes]:
    png = captcha_image("trunc")
    bodies = {
        "empty": (b"", b"image/png"),
        "html": (b"<!DOCTYPE html><html><body>Access denied</body></html>", b"image/png"),
        "truncated": (png[: len(png) // 2], b"image/png"),
        "svg": (
            b'<svg xmlns="http://www.w3.org/2000/svg"><text>ab12</text></svg>',
            b"image/svg+xml",
        ),
        "big": (png[:-12] + b"\x00" * 2_000_000 + png[-12:], b"image/png"),
        "json": (b'{"error": "rate limited"}', b"application/json"),
    }
    return bodies[name]


class Site(resource.Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        parts = request.path.decode().strip("/").split("/")
        if parts[0] == "captcha" and len(parts) == 2:
            text, _, ext = parts[1].rpartition(".")
            seed = int(request.args.get(b"seed", [b"0"])[0])
            request.setHeader(b"content-type", f"image/{ext}".encode())
            return captcha_image(text, ext, seed)
        if parts[0] == "noise" and len(parts) == 2:
            size = int(request.args.get(b"size", [b"30000"])[0])
            request.setHeader(b"content-type", b"image/png")
            return noise_image(int(parts[1].removesuffix(".png")), size)
        if parts[0] == "bad" and len(parts) == 2:
            body, content_type = bad_body(parts[1])
            request.setHeader(b"content-type", content_type)
            return body
        if parts[0] == "status" and len(parts) == 2:
            request.setResponseCode(int(parts[1]))
            return b"<html><body>error page</body></html>"
        if parts[0] == "page" and len(parts) == 2:
            number = int(parts[1])
            links = "".join(f'<a href="/page/{number * 10 + i}">next</a>' for i in range(10))
            request.setHeader(b"content-type", b"text/html")
            return f"<html><body><h1>Page {number}</h1>{links}</body></html>".encode()
        if parts[0] == "form":
            fields = {key.decode(): values[0].decode() for key, values in request.args.items()}
            request.setHeader(b"content-type", b"application/json")
            verdict = "Wrong captcha" if "reject" in fields else "Welcome"
            return json.dumps({"fields": fields, "verdict": verdict}).encode()
        request.setResponseCode(404)
        return b"<html><body>not found</body></html>"


def main() -> None:
    server.Site.log = lambda self, request: None  # type: ignore[method-assign]
    site = server.Site(Site())
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(f"http://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
