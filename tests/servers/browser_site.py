"""A login site whose captchas only a browser can capture, for the scrapy-playwright tests.

Run ``python browser_site.py``: binds 127.0.0.1 on a free port, prints its URL first.

Every login page shows a new captcha (one answer per page, kept by the id in the form's
hidden ``captcha_id`` field, so pages loaded at once in one browser do not interfere) as:

- ``/login/img``: an ``<img>``;
- ``/login/clear``: an ``<img>`` of plain, unwarped text, which the local reader always
  reads (the noisy ``/login/img`` ones it reads in 5 characters only about 4 times in 10);
- ``/login/canvas``: a ``<canvas>`` a script draws;
- ``/login/css``: a ``<div>`` with the captcha as its CSS background;
- ``/login/late``: an ``<img>`` a script adds after it fetched ``/captcha/new.json``;
- ``/login/empty``: an ``<img>`` of zero size;
- ``/login/broken``: an ``<img>`` whose image is not found.

Each form has the input ``#captcha-input`` and the button ``#submit``; ``POST /login``
checks the answer (once per captcha) and answers a page whose ``#result`` says
``accepted`` or ``rejected``. Every captcha also carries its answer colour-coded in its
pixels (color_code.py), which the CapSolver mock reads from screenshots.
"""

from __future__ import annotations

import html
import io
import json
import secrets
from typing import Any

from captcha.image import DEFAULT_FONTS, ImageCaptcha
from color_code import backing_box, color_code_cells, draw_color_code
from PIL import Image, ImageDraw, ImageFont
from twisted.internet import reactor
from twisted.web import resource, server

ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"
WIDTH, HEIGHT = 160, 60

PAGE = """<!DOCTYPE html>
<html><head><title>Log in</title></head>
<body>
<form id="login" method="post" action="/login">
  <input type="hidden" name="captcha_id" id="captcha-id" value="{captcha_id}">
  <div id="slot">{captcha}</div>
  <input name="captcha" id="captcha-input" autocomplete="off">
  <button type="submit" id="submit">Log in</button>
</form>
{script}
</body></html>"""

CANVAS_SCRIPT = """<script>
const context = document.getElementById("captcha").getContext("2d");
context.fillStyle = "#f4f1e8";
context.fillRect(0, 0, {width}, {height});
context.strokeStyle = "#8a7f6a";
for (let i = 0; i < 6; i++) {{
  context.beginPath();
  context.moveTo(Math.random() * {width}, Math.random() * {height});
  context.lineTo(Math.random() * {width}, Math.random() * {height});
  context.stroke();
}}
context.font = "bold 30px sans-serif";
context.fillStyle = "#2b3a55";
context.fillText(String.fromCharCode(...{codes}), 28, 48);
context.fillStyle = "#ffffff";
context.fillRect(...{backing});
for (const [x, y, w, h, rgb] of {cells}) {{
  context.fillStyle = `rgb(${{rgb[0]}}, ${{rgb[1]}}, ${{rgb[2]}})`;
  context.fillRect(x, y, w, h);
}}
</script>"""

LATE_SCRIPT = """<script>
fetch("/captcha/new.json").then(answer => answer.json()).then(captcha => {
  document.getElementById("captcha-id").value = captcha.id;
  const image = document.createElement("img");
  image.id = "captcha";
  image.src = captcha.src;
  document.getElementById("slot").appendChild(image);
});
</script>"""

RESULT = """<!DOCTYPE html>
<html><head><title>Login {result}</title></head>
<body><p id="result">{result}</p><a href="/login/img">Log in</a></body></html>"""


class Site(resource.Resource):
    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.answers: dict[str, str] = {}
        self.clear: set[str] = set()

    def new_captcha(self) -> str:
        captcha_id = secrets.token_hex(8)
        self.answers[captcha_id] = "".join(secrets.choice(ALPHABET) for _ in range(5))
        return captcha_id

    def render_GET(self, request: Any) -> bytes:
        parts = request.path.decode().strip("/").split("/")
        if parts == ["captcha", "new.json"]:
            captcha_id = self.new_captcha()
            request.setHeader(b"content-type", b"application/json")
            return json.dumps({"id": captcha_id, "src": f"/captcha/{captcha_id}.png"}).encode()
        if len(parts) == 2 and parts[0] == "captcha" and parts[1].endswith(".png"):
            captcha_id = parts[1].removesuffix(".png")
            answer = self.answers.get(captcha_id)
            if answer is None:
                request.setResponseCode(404)
                return b"no such captcha"
            request.setHeader(b"content-type", b"image/png")
            return captcha_png(answer, clear=captcha_id in self.clear)
        if len(parts) == 2 and parts[0] == "login":
            page = self.login_page(parts[1])
            if page is not None:
                request.setHeader(b"content-type", b"text/html; charset=utf-8")
                return page.encode()
        request.setResponseCode(404)
        return b"<!DOCTYPE html><html><body>not found</body></html>"

    def login_page(self, kind: str) -> str | None:
        if kind == "late":
            return PAGE.format(captcha_id="", captcha="", script=LATE_SCRIPT)
        captcha_id = self.new_captcha()
        src = f"/captcha/{captcha_id}.png"
        script = ""
        if kind in ("img", "clear"):
            if kind == "clear":
                self.clear.add(captcha_id)
            captcha = f'<img id="captcha" src="{src}" alt="captcha">'
        elif kind == "empty":
            captcha = f'<img id="captcha" src="{src}" style="width: 0; height: 0">'
        elif kind == "broken":
            captcha = (
                f'<img id="captcha" src="/captcha/gone.png" width="{WIDTH}" height="{HEIGHT}">'
            )
        elif kind == "css":
            captcha = (
                f'<div id="captcha" style="width: {WIDTH}px; height: {HEIGHT}px; '
                f"background: url('{src}')\"></div>"
            )
        elif kind == "canvas":
            answer = self.answers[captcha_id]
            captcha = f'<canvas id="captcha" width="{WIDTH}" height="{HEIGHT}"></canvas>'
            script = canvas_script(answer)
        else:
            return None
        return PAGE.format(captcha_id=html.escape(captcha_id), captcha=captcha, script=script)

    def render_POST(self, request: Any) -> bytes:
        if request.path != b"/login":
            request.setResponseCode(404)
            return b"not found"
        captcha_id = request.args.get(b"captcha_id", [b""])[0].decode()
        given = request.args.get(b"captcha", [b""])[0].decode().strip().lower()
        # An answer is good once: a real site forgets a captcha once it was tried.
        expected = self.answers.pop(captcha_id, None)
        self.clear.discard(captcha_id)
        result = "accepted" if expected is not None and given == expected else "rejected"
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return RESULT.format(result=result).encode()


def captcha_png(answer: str, clear: bool = False) -> bytes:
    if clear:
        image = Image.new("RGB", (WIDTH, HEIGHT), "white")
        # 36 px: 1,000 of 1,000 such captchas read right by the local reader.
        font = ImageFont.truetype(DEFAULT_FONTS[0], 36)
        ImageDraw.Draw(image).text((WIDTH // 2, HEIGHT // 2 + 6), answer, "black", font, "mm")
    else:
        image = ImageCaptcha(width=WIDTH, height=HEIGHT).generate_image(answer).convert("RGB")
    draw_color_code(image, answer)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def canvas_script(answer: str) -> str:
    x0, y0, x1, y1 = backing_box(answer)
    return CANVAS_SCRIPT.format(
        width=WIDTH,
        height=HEIGHT,
        codes=json.dumps([ord(char) for char in answer]),
        backing=json.dumps([x0, y0, x1 - x0 + 1, y1 - y0 + 1]),
        cells=json.dumps([[x, y, w, h, list(rgb)] for x, y, w, h, rgb in color_code_cells(answer)]),
    )


def main() -> None:
    site = server.Site(Site())
    site.noisy = False
    port = reactor.listenTCP(0, site, interface="127.0.0.1")
    print(f"http://127.0.0.1:{port.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    server.Site.log = lambda self, request: None  # type: ignore[method-assign]
    main()
