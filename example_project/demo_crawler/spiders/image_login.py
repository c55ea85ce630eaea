"""Logging in with an image request: the spider downloads the captcha with ``solve_image``,
types the text into the form itself, and handles a refused answer itself.

    scrapy crawl image_login -a logins=5
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from typing import Any

import scrapy
from form2request import form2request
from scrapy.http import Response
from twisted.python.failure import Failure

from scrapy_capsolver_ocr import CaptchaSolution, CaptchaSolveError, get_solver

from .logins import WRONG_CAPTCHA, LoginSpider


class ImageLoginSpider(LoginSpider):
    name = "image_login"

    def start_login(self, login: int) -> scrapy.Request:
        return scrapy.Request(
            self.login_url,
            callback=self.parse_login_form,
            meta=self.session(login),
            cb_kwargs={"login": login},
            dont_filter=True,
        )

    def parse_login_form(self, response: Response, login: int) -> scrapy.Request:
        """Download this form's captcha and have it solved (in this login's session, so the
        site pairs the answer with this visitor)."""
        return response.follow(
            response.css("#login-form img#captcha-image::attr(src)").get(""),
            callback=self.submit,
            errback=self.captcha_failed,
            meta=self.session(login, solve_image=True),
            cb_kwargs={"login": login, "form_page": response},
            dont_filter=True,  # the same captcha URL gives a new image each time
        )

    def submit(self, response: Response, login: int, form_page: Response) -> scrapy.Request:
        solution: CaptchaSolution = response.meta["captcha_solution"]
        self.captcha_answered(login, solution.text, solution.provider)
        form = form_page.css("#login-form")
        return form2request(form, {**self.credentials, "captcha": solution.text}).to_scrapy(
            callback=self.after_login,
            meta=self.session(login),
            cb_kwargs={"login": login, "solution": solution},
            dont_filter=True,
        )

    async def after_login(
        self, response: Response, login: int, solution: CaptchaSolution
    ) -> AsyncIterator[Any]:
        if not re.search(WRONG_CAPTCHA, response.text):
            for request in self.logged_in(response, login):
                yield request
            return
        self.answer_refused(login)
        # Tells CapSolver (feedbackTask) and drops the answer from the solver's cache.
        await get_solver(self.crawler).report_wrong(solution, "the site refused the answer")
        if self.records[login].attempts >= self.max_attempts:
            self.login_failed(login, f"{self.max_attempts} answers refused in a row")
            return
        # The refusal page shows the form again, with a new captcha: start over from it.
        yield self.parse_login_form(response, login)

    def captcha_failed(self, failure: Failure) -> None:
        login: int = failure.request.cb_kwargs["login"]  # type: ignore[attr-defined]
        if failure.check(CaptchaSolveError):
            self.login_failed(login, f"no captcha solution: {failure.value}")
        else:
            self.login_failed(login, f"the captcha could not be downloaded: {failure.value}")
