"""A login form whose captcha image URL carries a one-time key, as django-simple-captcha's
does: each image URL is served once, then answers HTTP 410 Gone (or 404 with
``?gone=404`` on the login page), and each key is spent by one form post.

Run ``python single_use_site.py``: binds 127.0.0.1 on a free port, prints its URL first.

- ``GET /login[?gone=404]``: a form with a new key in a hidden field and its image
  ``/captcha/<key>.png``.
- ``GET /captcha/<key>.png``: the captcha of that key the first time (its answer in a
  ``captcha-answer`` tEXt chunk, for the CapSolver mock); after that, or once a post spent
  the key, the gone status; 404 for a key the site never made.
- ``POST /login`` (``key``, ``captcha``): "Welcome" for the key's answer; otherwise "Wrong
  captcha" and the form again with a new key, as a refused form is shown again.
- ``GET /_fetches``: JSON of how many times each image URL path was requested.
"""

from __future__ import annotations

import html
import json
import secrets
from collections import Counter
from dataclasses import dataclass
from typing import Any

from image_site import captcha_image
from twisted.internet import reactor
from twisted.web import resource, server


@dataclass
class Captcha:
    text: str
    gone_status: int
    served: bool = False
    spent: bool = False


class SingleUseSite(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.captchas: dict[str, Captcha] = {}
        self.fetches: Counter[str] = Counter()

    def form(self, gone_status: int, message: str = "") -> bytes:
        key = secrets.token_hex(8)
        # Text the captcha package draws, distinct per key.
        self.captchas[key] = Captcha(text=key[:5], gone_status=gone_status)
        return (
            f"<html><body><p id='message'>{html.escape(message)}</p>"
            "<form id='login-form' action='/login' method='post'>"
            f"<input type='hidden' name='key' value='{key}'>"
            f"<img id='captcha' src='/captcha/{key}.png'>"
            "<input name='captcha'></form></body></html>"
        ).encode()

    def render_GET(self, request: Any) -> bytes:
        path = request.path.decode()
        if path == "/login":
            gone = int(request.args.get(b"gone", [b"410"])[0])
            request.setHeader(b"content-type", b"text/html")
            return self.form(gone)
        if path == "/_fetches":
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(self.fetches).encode()
        if path.startswith("/captcha/") and path.endswith(".png"):
            self.fetches[path] += 1
            captcha = self.captchas.get(path.removeprefix("/captcha/").removesuffix(".png"))
            if captcha is None:
                request.setResponseCode(404)
                return b"<html><body>no such captcha</body></html>"
            if captcha.served or captcha.spent:
                request.setResponseCode(captcha.gone_status)
                return b"<html><body>this captcha is gone</body></html>"
            captcha.served = True
            request.setHeader(b"content-type", b"image/png")
            return captcha_image(captcha.text)
        request.setResponseCode(404)
        return b"<html><body>not found</body></html>"

    def render_POST(self, request: Any) -> bytes:
        key = request.args.get(b"key", [b""])[0].decode()
        answer = request.args.get(b"captcha", [b""])[0].decode()
        captcha = self.captchas.get(key)
        request.setHeader(b"content-type", b"text/html")
        if captcha is None or captcha.spent:
            return self.form(410, "Wrong captcha")
        # One post spends the key, right or wrong: the old form cannot be sent again.
        captcha.spent = True
        if answer.lower() == captcha.text.lower():
            return b"<html><body><h1>Welcome</h1></body></html>"
        return self.form(captcha.gone_status, "Wrong captcha")


def main() -> None:
    server.Site.log = lambda self, request: None  # type: ignore[method-assign]
    port = reactor.listenTCP(0, server.Site(SingleUseSite()), interface="127.0.0.1")
    print(f"http://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
