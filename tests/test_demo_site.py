"""The demo website (example_project/demo_site): its captcha-guarded forms behave like a
real site's, so the middleware can be tested against it."""

from __future__ import annotations

import base64
import html
import json
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar

import pytest
from servers.png_text import embedded_answer
from servers.process import REPO_ROOT, running_server

DEMO_SITE = str(REPO_ROOT / "example_project" / "demo_site" / "server.py")
ITEM_NAMES = ["Brass compass", "Pocket watch", "Oil lamp", "Sextant", "Telescope"]
WRONG_CAPTCHA = "Wrong captcha"


@dataclass
class Page:
    status: int
    url: str
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def attribute(self, tag_pattern: str, attribute: str) -> str:
        """The value of ``attribute`` in the first tag matching ``tag_pattern``."""
        tag = re.search(rf"<{tag_pattern}[^>]*>", self.text)
        assert tag, f"no <{tag_pattern}> in {self.url}"
        value = re.search(rf'\b{attribute}="([^"]*)"', tag.group(0))
        assert value, f"no {attribute} in {tag.group(0)}"
        return html.unescape(value.group(1))

    @property
    def csrf_token(self) -> str:
        return self.attribute(r'input type="hidden" name="csrf_token"', "value")

    @property
    def captcha_src(self) -> str:
        return self.attribute(r'img[^>]*id="captcha-image"', "src")


class Browser:
    """One visitor: its own cookies, so its own session on the site."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))

    def open(self, url: str, data: bytes | None = None, content_type: str = "") -> Page:
        request = urllib.request.Request(urllib.parse.urljoin(self.base_url, url), data=data)
        if content_type:
            request.add_header("Content-Type", content_type)
        try:
            with self._opener.open(request, timeout=30) as response:
                return Page(response.status, response.url, response.read())
        except urllib.error.HTTPError as error:
            with error:
                return Page(error.code, error.url, error.read())

    def post_form(self, url: str, fields: dict[str, str]) -> Page:
        return self.open(url, urllib.parse.urlencode(fields).encode())

    def post_json(self, url: str, data: object) -> Page:
        return self.open(url, json.dumps(data).encode(), "application/json")

    def captcha_answer(self, page: Page) -> str:
        """The answer of the page's captcha; loading its image makes it the session's one."""
        return self.load_captcha(urllib.parse.urljoin(page.url, page.captcha_src))

    def load_captcha(self, src: str = "/captcha.png") -> str:
        if src.startswith("data:"):
            png = base64.b64decode(src.partition(",")[2])
        else:
            image = self.open(src)
            assert (image.status, image.body[:4]) == (200, b"\x89PNG")
            png = image.body
        answer = embedded_answer(png)
        assert answer, "the site was not started with --embed-answers"
        return answer

    def log_in(self, page: Page, answer: str, password: str = "demo") -> Page:
        action = urllib.parse.urljoin(page.url, page.attribute("form", "action"))
        fields = {
            "csrf_token": page.csrf_token,
            "username": "demo",
            "password": password,
            "captcha": answer,
        }
        return self.post_form(action, fields)


def assert_logged_in(page: Page) -> None:
    assert (page.status, urllib.parse.urlsplit(page.url).path) == (200, "/items")
    for number, name in enumerate(ITEM_NAMES, start=1):
        assert f'<a href="/items/{number}">{name}</a>' in page.text


def assert_captcha_refused(page: Page) -> None:
    assert page.status == 200
    assert WRONG_CAPTCHA in page.text
    assert 'name="captcha"' in page.text and page.captcha_src


@pytest.fixture(scope="module")
def site_url() -> Iterator[str]:
    with running_server([DEMO_SITE, "--port", "0", "--embed-answers"]) as url:
        yield url


@pytest.fixture
def browser(site_url: str) -> Browser:
    return Browser(site_url)


def test_login_with_the_right_answer_opens_the_items(browser: Browser) -> None:
    form = browser.open("/login")
    assert form.attribute("form", "method") == "post"
    assert form.captcha_src == "/captcha.png"
    items = browser.log_in(form, browser.captcha_answer(form))
    assert_logged_in(items)
    item = browser.open("/items/2")
    assert (item.status, "<h1>Pocket watch</h1>" in item.text) == (200, True)


def test_answers_are_case_insensitive(browser: Browser) -> None:
    form = browser.open("/login")
    answer = browser.captcha_answer(form)
    while answer.lower() == answer:  # digits only: nothing to change the case of
        answer = browser.captcha_answer(form)
    assert_logged_in(browser.log_in(form, f" {answer.lower()} "))


@pytest.mark.parametrize("path", ["/items", "/items/1"])
def test_items_send_strangers_to_the_login_page(browser: Browser, path: str) -> None:
    page = browser.open(path)
    assert (page.status, urllib.parse.urlsplit(page.url).path) == (200, "/login")


def test_unknown_item_is_not_found(browser: Browser) -> None:
    assert browser.open("/items/99").status == 404


def test_wrong_csrf_token_is_forbidden(browser: Browser) -> None:
    form = browser.open("/login")
    answer = browser.captcha_answer(form)
    fields = {"csrf_token": "forged", "username": "demo", "password": "demo", "captcha": answer}
    page = browser.post_form("/login", fields)
    assert (page.status, "Invalid CSRF token" in page.text) == (403, True)
    # The token of another session is no better.
    other = Browser(browser.base_url).open("/login")
    page = browser.post_form("/login", {**fields, "csrf_token": other.csrf_token})
    assert page.status == 403


def test_wrong_answer_shows_the_form_again_with_a_new_captcha(browser: Browser) -> None:
    form = browser.open("/login")
    answer = browser.captcha_answer(form)
    refused = browser.log_in(form, answer + "X")
    assert_captcha_refused(refused)
    assert_logged_in(browser.log_in(refused, browser.captcha_answer(refused)))


def test_each_answer_is_valid_once(browser: Browser) -> None:
    form = browser.open("/login")
    answer = browser.captcha_answer(form)
    refused = browser.log_in(form, answer, password="wrong")
    assert (refused.status, "Wrong username or password" in refused.text) == (200, True)
    assert_captcha_refused(browser.log_in(refused, answer))


def test_only_the_last_captcha_loaded_counts(browser: Browser) -> None:
    form = browser.open("/login")
    first = second = browser.captcha_answer(form)
    while second.casefold() == first.casefold():
        second = browser.captcha_answer(form)
    assert_captcha_refused(browser.log_in(form, first))


def test_reject_first_refuses_right_answers_of_each_session() -> None:
    argv = [DEMO_SITE, "--port", "0", "--embed-answers", "--reject-first", "2"]
    with running_server(argv) as url:
        for browser in (Browser(url), Browser(url)):
            page = browser.open("/login")
            for _ in range(2):
                page = browser.log_in(page, browser.captcha_answer(page))
                assert_captcha_refused(page)
            assert_logged_in(browser.log_in(page, browser.captcha_answer(page)))


def test_search_is_a_get_form_with_a_captcha(browser: Browser) -> None:
    form = browser.open("/search")
    assert form.attribute('form[^>]*id="search-form"', "method") == "get"
    assert 'name="captcha"' in form.text
    answer = browser.captcha_answer(form)
    query = urllib.parse.urlencode({"q": "watch", "captcha": answer})
    results = browser.open(f"/search?{query}")
    assert results.status == 200
    assert re.search(r'<ul id="results"><li>Pocket watch</li></ul>', results.text)
    refused = browser.open(f"/search?{query}")  # the same answer again
    assert_captcha_refused(refused)


def test_json_login(browser: Browser) -> None:
    answer = browser.load_captcha()
    credentials = {"username": "demo", "password": "demo"}
    refused = browser.post_json("/api/login", {**credentials, "captcha": answer + "X"})
    assert (refused.status, json.loads(refused.body)) == (
        200,
        {"ok": False, "error": "Wrong captcha, please try again."},
    )
    answer = browser.load_captcha()
    accepted = browser.post_json("/api/login", {**credentials, "captcha": answer})
    assert (accepted.status, json.loads(accepted.body)) == (200, {"ok": True, "next": "/items"})
    assert_logged_in(browser.open("/items"))
    assert browser.open("/api/login", b"{not json", "application/json").status == 400


def test_inline_captcha_is_a_data_uri(browser: Browser) -> None:
    form = browser.open("/login-inline")
    assert form.captcha_src.startswith("data:image/png;base64,")
    assert_logged_in(browser.log_in(form, browser.captcha_answer(form)))


def test_relative_captcha_url_resolves_against_the_page(browser: Browser) -> None:
    form = browser.open("/account/login")
    assert (form.captcha_src, form.attribute("form", "action")) == ("../captcha.png", "login")
    assert_logged_in(browser.log_in(form, browser.captcha_answer(form)))


def test_digits_option_makes_four_digit_captchas() -> None:
    with running_server([DEMO_SITE, "--port", "0", "--embed-answers", "--digits"]) as url:
        browser = Browser(url)
        form = browser.open("/login")
        answer = browser.captcha_answer(form)
        assert re.fullmatch(r"\d{4}", answer)
        assert_logged_in(browser.log_in(form, answer))


def test_answers_are_not_embedded_by_default() -> None:
    with running_server([DEMO_SITE, "--port", "0"]) as url:
        browser = Browser(url)
        image = browser.open("/captcha.png")
    assert image.body.startswith(b"\x89PNG")
    assert embedded_answer(image.body) is None
