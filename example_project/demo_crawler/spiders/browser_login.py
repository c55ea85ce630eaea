"""Logging in in a real browser (scrapy-playwright): the middleware screenshots the captcha
element on the live page, solves it and types the text in; the spider submits the form, and
after a refused answer solves the fresh captcha of the same page.

    pip install "scrapy-capsolver-ocr[playwright]"   # and a Chromium: see docs/browser-pages.md
    scrapy crawl browser_login -a logins=3

Each login has its own browser context, so its own cookies: its own session on the site.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from scrapy.http import HtmlResponse, Response
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaSolveError, get_solver, solve_page_captcha

from .logins import WRONG_CAPTCHA, LoginSpider

CAPTCHA = {"selector": "#captcha-image", "fill": "input[name=captcha]"}
PLAYWRIGHT_HANDLER = "scrapy_playwright.handler.ScrapyPlaywrightDownloadHandler"


def launch_options() -> dict[str, Any]:
    """Headless Chromium: ``$CHROMIUM_PATH``, Debian's, or else Playwright's own
    (``playwright install chromium``)."""
    options: dict[str, Any] = {"headless": True}
    for candidate in (
        os.environ.get("CHROMIUM_PATH"),
        "/usr/lib/chromium/chromium",
        shutil.which("chromium"),
    ):
        if candidate and os.access(candidate, os.X_OK):
            options["executable_path"] = candidate
            break
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        options["args"] = ["--no-sandbox"]  # Chromium refuses to run as root otherwise
    return options


class BrowserLoginSpider(LoginSpider):
    name = "browser_login"
    custom_settings = {
        "DOWNLOAD_HANDLERS": {"http": PLAYWRIGHT_HANDLER, "https": PLAYWRIGHT_HANDLER},
        "PLAYWRIGHT_BROWSER_TYPE": "chromium",
        "PLAYWRIGHT_LAUNCH_OPTIONS": launch_options(),
        # The browser's own form posts keep their Content-Type (see docs/browser-pages.md).
        "PLAYWRIGHT_PROCESS_REQUEST_HEADERS": None,
    }

    def session(self, login: int, **meta: Any) -> dict[str, Any]:
        # A browser context per login instead of a Scrapy cookie jar: the browser keeps the
        # cookies, for the item pages too.
        return {"playwright": True, "playwright_context": f"login-{login}", **meta}

    def start_login(self, login: int) -> scrapy.Request:
        return scrapy.Request(
            self.login_url,
            callback=self.log_in,
            errback=self.captcha_failed,
            meta=self.session(login, playwright_include_page=True, solve_image=CAPTCHA),
            cb_kwargs={"login": login},
            dont_filter=True,
        )

    async def log_in(self, response: Response, login: int) -> AsyncIterator[Any]:
        page = response.meta["playwright_page"]  # the captcha is solved and typed in
        solution = response.meta["captcha_solution"]
        try:
            while True:
                self.captcha_answered(login, solution.text, solution.provider)
                await page.fill("input[name=username]", self.credentials["username"])
                await page.fill("input[name=password]", self.credentials["password"])
                async with page.expect_navigation():
                    await page.click("#login-form button[type=submit]")
                content = await page.content()
                if not re.search(WRONG_CAPTCHA, content):
                    after = HtmlResponse(page.url, body=content, encoding="utf-8")
                    for request in self.logged_in(after, login):
                        yield request
                    return
                self.answer_refused(login)
                await get_solver(self.crawler).report_wrong(solution, "the site refused it")
                if self.records[login].attempts >= self.max_attempts:
                    self.login_failed(login, f"{self.max_attempts} answers refused in a row")
                    return
                # The refusal page shows the form again with a new captcha: solve that one.
                solution = await solve_page_captcha(page, **CAPTCHA, crawler=self.crawler)
        except CaptchaSolveError as exc:
            self.login_failed(login, f"no captcha solution: {exc}")
        finally:
            await page.close()  # the callback owns the page

    def captcha_failed(self, failure: Failure) -> None:
        # The middleware has closed the page already.
        login: int = failure.request.cb_kwargs["login"]  # type: ignore[attr-defined]
        self.login_failed(login, f"{failure.type.__name__}: {failure.value}")  # type: ignore[union-attr]
