"""The demo site's pages: login forms guarded by a captcha, and the items they protect."""

from __future__ import annotations

import base64
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from html import escape

from captchas import CaptchaMaker
from twisted.web.resource import NoResource, Resource
from twisted.web.server import Request
from twisted.web.util import redirectTo

USERNAME = PASSWORD = "demo"
ITEMS = (
    "Brass compass",
    "Pocket watch",
    "Oil lamp",
    "Sextant",
    "Telescope",
    "Ship in a bottle",
)
WRONG_CAPTCHA = "Wrong captcha, please try again."
WRONG_CREDENTIALS = "Wrong username or password."


@dataclass
class Visitor:
    """What the site remembers about one session (cookie)."""

    csrf_token: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    captcha_answer: str | None = None
    answers_given: int = 0
    logged_in: bool = False


class DemoSite:
    """The options and the visitors, shared by every page."""

    def __init__(
        self, maker: CaptchaMaker, *, reject_first: int = 0, embed_answers: bool = False
    ) -> None:
        self.maker = maker
        self.reject_first = reject_first
        self.embed_answers = embed_answers
        self._visitors: dict[bytes, Visitor] = {}

    def visitor(self, request: Request) -> Visitor:
        session = request.getSession()
        uid: bytes = session.uid
        if uid not in self._visitors:
            self._visitors[uid] = Visitor()
            session.notifyOnExpire(lambda: self._visitors.pop(uid, None))
        return self._visitors[uid]

    def new_captcha(self, visitor: Visitor) -> bytes:
        """A fresh captcha PNG; its answer replaces the visitor's previous one."""
        visitor.captcha_answer = self.maker.new_answer()
        return self.maker.render(visitor.captcha_answer, embed_answer=self.embed_answers)

    def check_captcha(self, visitor: Visitor, answer: str) -> bool:
        expected, visitor.captcha_answer = visitor.captcha_answer, None  # each is valid once
        visitor.answers_given += 1
        if visitor.answers_given <= self.reject_first:
            return False
        return expected is not None and answer.strip().casefold() == expected.casefold()


def _arg(request: Request, name: str) -> str:
    values = (request.args or {}).get(name.encode(), [b""])
    return values[0].decode("utf-8", "replace")


def _html(request: Request, title: str, body: str, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"text/html; charset=utf-8")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)} - captcha demo</title></head>\n"
        f'<body>\n<h1>{escape(title)}</h1>\n{body}\n<p><a href="/">Home</a></p>\n</body></html>\n'
    )
    return page.encode()


def _message(text: str) -> str:
    return f'<p class="error" id="message">{escape(text)}</p>\n' if text else ""


def _captcha_fields(image_src: str) -> str:
    return (
        f'  <img src="{escape(image_src)}" alt="captcha" id="captcha-image" '
        f'width="160" height="60">\n'
        '  <label>Characters in the image <input name="captcha" autocomplete="off"></label>\n'
    )


class Index(Resource):
    def render_GET(self, request: Request) -> bytes:
        links = [
            ("/login", "Log in"),
            ("/login-inline", "Log in (captcha inline, data: URI)"),
            ("/account/login", "Log in (captcha with a relative URL)"),
            ("/search", "Search (GET form)"),
            ("/items", "Items (after logging in)"),
        ]
        body = "".join(f'<li><a href="{url}">{escape(text)}</a></li>' for url, text in links)
        return _html(request, "Captcha demo", f"<ul>{body}</ul>")

    def getChild(self, path: bytes, request: Request) -> Resource:
        return self if path == b"" else NoResource()


class CaptchaImage(Resource):
    """``/captcha.png``: a fresh captcha at every load, its answer kept in the session."""

    isLeaf = True

    def __init__(self, site: DemoSite) -> None:
        super().__init__()
        self._site = site

    def render_GET(self, request: Request) -> bytes:
        png = self._site.new_captcha(self._site.visitor(request))
        request.setHeader(b"Content-Type", b"image/png")
        request.setHeader(b"Cache-Control", b"no-store")
        return png


class LoginPage(Resource):
    """A login form (CSRF token, username, password, captcha) and its check.

    ``image_src`` gives the captcha ``<img>`` source for a visitor: a URL, or a ``data:`` URI.
    """

    isLeaf = True

    def __init__(self, site: DemoSite, action: str, image_src: Callable[[Visitor], str]) -> None:
        super().__init__()
        self._site = site
        self._action = action
        self._image_src = image_src

    def render_GET(self, request: Request) -> bytes:
        return self._form(request, self._site.visitor(request))

    def render_POST(self, request: Request) -> bytes:
        visitor = self._site.visitor(request)
        token = _arg(request, "csrf_token").encode()
        if not hmac.compare_digest(token, visitor.csrf_token.encode()):
            return _html(request, "Forbidden", _message("Invalid CSRF token."), status=403)
        if not self._site.check_captcha(visitor, _arg(request, "captcha")):
            return self._form(request, visitor, WRONG_CAPTCHA)
        if (_arg(request, "username"), _arg(request, "password")) != (USERNAME, PASSWORD):
            return self._form(request, visitor, WRONG_CREDENTIALS)
        visitor.logged_in = True
        return redirectTo(b"/items", request)

    def _form(self, request: Request, visitor: Visitor, message: str = "") -> bytes:
        form = (
            f'{_message(message)}<form method="post" action="{escape(self._action)}" '
            'id="login-form">\n'
            f'  <input type="hidden" name="csrf_token" value="{escape(visitor.csrf_token)}">\n'
            '  <label>Username <input name="username" autocomplete="username"></label>\n'
            '  <label>Password <input type="password" name="password"></label>\n'
            f"{_captcha_fields(self._image_src(visitor))}"
            '  <button type="submit">Log in</button>\n</form>'
        )
        return _html(request, "Log in", form)


def inline_captcha(site: DemoSite) -> Callable[[Visitor], str]:
    """A ``data:`` URI source: the captcha is made when the page is."""

    def image_src(visitor: Visitor) -> str:
        return "data:image/png;base64," + base64.b64encode(site.new_captcha(visitor)).decode()

    return image_src


class Search(Resource):
    """``/search``: a GET form; results only with the right captcha answer."""

    isLeaf = True

    def __init__(self, site: DemoSite) -> None:
        super().__init__()
        self._site = site

    def render_GET(self, request: Request) -> bytes:
        visitor = self._site.visitor(request)
        query = _arg(request, "q")
        if b"captcha" not in (request.args or {}):
            return self._form(request, query)
        if not self._site.check_captcha(visitor, _arg(request, "captcha")):
            return self._form(request, query, WRONG_CAPTCHA)
        found = [name for name in ITEMS if query.casefold() in name.casefold()]
        results = "".join(f"<li>{escape(name)}</li>" for name in found)
        return _html(request, f"Results for {query}", f'<ul id="results">{results}</ul>')

    def _form(self, request: Request, query: str, message: str = "") -> bytes:
        form = (
            f'{_message(message)}<form method="get" action="/search" id="search-form">\n'
            f'  <label>Search <input name="q" value="{escape(query)}"></label>\n'
            f"{_captcha_fields('/captcha.png')}"
            '  <button type="submit">Search</button>\n</form>'
        )
        return _html(request, "Search", form)


class ApiLogin(Resource):
    """``POST /api/login``: ``{"username", "password", "captcha"}`` in, ``{"ok", ...}`` out.

    The captcha is the session's last ``/captcha.png``. Refusals are HTTP 200 with
    ``"ok": false`` and the same messages as the HTML form.
    """

    isLeaf = True

    def __init__(self, site: DemoSite) -> None:
        super().__init__()
        self._site = site

    def render_POST(self, request: Request) -> bytes:
        visitor = self._site.visitor(request)
        assert request.content is not None
        try:
            data = json.loads(request.content.read())
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return _json(request, {"ok": False, "error": "The body must be a JSON object."}, 400)
        if not self._site.check_captcha(visitor, str(data.get("captcha", ""))):
            return _json(request, {"ok": False, "error": WRONG_CAPTCHA})
        if (data.get("username"), data.get("password")) != (USERNAME, PASSWORD):
            return _json(request, {"ok": False, "error": WRONG_CREDENTIALS})
        visitor.logged_in = True
        return _json(request, {"ok": True, "next": "/items"})


def _json(request: Request, data: object, status: int = 200) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(data).encode()


class Items(Resource):
    """``/items`` and ``/items/N``: for logged-in visitors only, others go to ``/login``."""

    def __init__(self, site: DemoSite, number: int | None = None) -> None:
        super().__init__()
        self._site = site
        self._number = number

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self
        if self._number is None and path.isdigit() and 1 <= int(path) <= len(ITEMS):
            return Items(self._site, int(path))
        return NoResource()

    def render_GET(self, request: Request) -> bytes:
        if not self._site.visitor(request).logged_in:
            return redirectTo(b"/login", request)
        if self._number is not None:
            body = f'<p class="item-id">Item {self._number} of {len(ITEMS)}</p>'
            return _html(request, ITEMS[self._number - 1], body)
        links = "".join(
            f'<li><a href="/items/{number}">{escape(name)}</a></li>'
            for number, name in enumerate(ITEMS, start=1)
        )
        return _html(request, "Items", f'<ul id="items">{links}</ul>')


def build_root(site: DemoSite) -> Resource:
    root = Index()
    root.putChild(b"captcha.png", CaptchaImage(site))
    root.putChild(b"login", LoginPage(site, "/login", lambda _: "/captcha.png"))
    root.putChild(b"login-inline", LoginPage(site, "/login-inline", inline_captcha(site)))
    account = Resource()
    # Relative URLs: a scraper must resolve them against the page's URL.
    account.putChild(b"login", LoginPage(site, "login", lambda _: "../captcha.png"))
    root.putChild(b"account", account)
    root.putChild(b"search", Search(site))
    api = Resource()
    api.putChild(b"login", ApiLogin(site))
    root.putChild(b"api", api)
    root.putChild(b"items", Items(site))
    return root
