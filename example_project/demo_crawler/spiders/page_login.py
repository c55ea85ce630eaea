"""Logging in with page mode: the middleware finds the captcha on the login page, solves it,
puts the answer into the form, and starts over with a fresh captcha when the site refuses it.

    scrapy crawl page_login -a logins=5
"""

from __future__ import annotations

from collections.abc import Iterator

import scrapy
from form2request import form2request
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaRejectedError, CaptchaSolveError

from .logins import WRONG_CAPTCHA, LoginSpider

#: Where the captcha is on the login page (a CSS selector).
CAPTCHA_SELECTOR = "#login-form img#captcha-image"


class PageLoginSpider(LoginSpider):
    name = "page_login"

    def start_login(self, login: int) -> scrapy.Request:
        return scrapy.Request(
            self.login_url,
            callback=self.log_in,
            errback=self.failed,
            meta=self.session(login, solve_image={"selector": CAPTCHA_SELECTOR}),
            cb_kwargs={"login": login},
            dont_filter=True,
        )

    def log_in(self, page: Response, login: int) -> scrapy.Request:
        """The login page with its captcha solved. When the site refuses the answer, the
        middleware requests this page again and this callback runs again, with a new one."""
        if self.records[login].attempts:  # back here: the previous answer was refused
            self.answer_refused(login)
        solution = page.meta["captcha_solution"]
        self.captcha_answered(login, solution.text, solution.provider)
        # The form without the answer: captcha_field puts it in just before sending.
        request = form2request(page.css("#login-form"), self.credentials)
        return request.to_scrapy(
            callback=self.after_login,
            errback=self.failed,
            meta=self.session(login, captcha_field="captcha", captcha_retry_if=WRONG_CAPTCHA),
            cb_kwargs={"login": login},
            dont_filter=True,
        )

    def after_login(self, response: Response, login: int) -> Iterator[scrapy.Request]:
        yield from self.logged_in(response, login)

    def failed(self, failure: Failure) -> None:
        login: int = failure.request.cb_kwargs["login"]  # type: ignore[attr-defined]
        if failure.check(CaptchaRejectedError):
            self.answer_refused(login)
            self.login_failed(login, f"{self.max_attempts} answers refused in a row")
        elif failure.check(CaptchaSolveError):
            self.login_failed(login, f"no captcha solution: {failure.value}")
        else:
            self.login_failed(login, f"{failure.type.__name__}: {failure.value}")  # type: ignore[union-attr]
