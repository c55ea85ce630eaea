"""What the login spiders share: one session per login, the protected items, the record.

Each login runs in its own cookie session (the ``cookiejar`` meta key), so the site sees as
many visitors as there are logins, each with its own CSRF token and captcha.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urljoin, urlsplit

import scrapy
from scrapy.http import Response

#: What the demo site says when it refuses an answer (a regular expression).
WRONG_CAPTCHA = r"Wrong captcha"


@dataclass
class LoginRecord:
    """How one login went: captchas answered, answers refused, the outcome, items scraped."""

    answers: list[str] = field(default_factory=list)
    wrong_answers: int = 0
    succeeded: bool | None = None  # None: still going
    items: int = 0
    error: str = ""

    @property
    def attempts(self) -> int:
        return len(self.answers)


class LoginSpider(scrapy.Spider):
    """Base class: ``-a logins=N`` logs in N times, each in its own session, and scrapes the
    items behind the login each time.

    Subclasses start a login in :meth:`start_login` and call :meth:`logged_in` with the
    page the site shows after a successful login, or :meth:`login_failed`.
    """

    #: The login form's path on the site, resolved against ``DEMO_SITE_URL``.
    login_path = "/login"

    def __init__(self, logins: int | str = 3, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.logins = int(logins)
        if self.logins < 1:
            raise ValueError(f"logins must be at least 1, got {logins!r}")
        self.records = {number: LoginRecord() for number in range(1, self.logins + 1)}

    @property
    def login_url(self) -> str:
        return urljoin(self.settings["DEMO_SITE_URL"], self.login_path)

    @property
    def max_attempts(self) -> int:
        return self.settings.getint("CAPSOLVER_MAX_ATTEMPTS", 3)

    @property
    def credentials(self) -> dict[str, str]:
        return {
            "username": self.settings["DEMO_USERNAME"],
            "password": self.settings["DEMO_PASSWORD"],
        }

    async def start(self) -> AsyncIterator[scrapy.Request]:
        for login in self.records:
            yield self.start_login(login)

    def start_login(self, login: int) -> scrapy.Request:
        raise NotImplementedError

    def session(self, login: int, **meta: Any) -> dict[str, Any]:
        """Request meta for ``login``'s session, plus ``meta``."""
        return {"cookiejar": login, **meta}

    # Outcomes

    def captcha_answered(self, login: int, text: str, provider: str = "") -> None:
        """``provider``: the paid service that answered, when several are listed
        (``CAPSOLVER_PROVIDERS``), counted in ``demo/answers/<provider>``."""
        record = self.records[login]
        record.answers.append(text)
        self.crawler.stats.inc_value("demo/captchas_answered")
        if provider:
            self.crawler.stats.inc_value(f"demo/answers/{provider}")
        self.logger.info(
            "Login %d: captcha read as %r (attempt %d of %d)",
            login,
            text,
            record.attempts,
            self.max_attempts,
        )

    def answer_refused(self, login: int) -> None:
        """The site refused the login's last answer."""
        record = self.records[login]
        record.wrong_answers += 1
        self.crawler.stats.inc_value("demo/wrong_answers")
        self.logger.info("Login %d: the site refused %r", login, record.answers[-1])

    def logged_in(self, response: Response, login: int) -> Iterator[scrapy.Request]:
        """The page after a login: the list of items, each scraped in the same session."""
        if urlsplit(response.url).path != "/items" or not response.css("#items"):
            self.login_failed(login, f"not logged in: the site showed {response.url}")
            return
        record = self.records[login]
        record.succeeded = True
        self.crawler.stats.inc_value("demo/logins_succeeded")
        self.logger.info("Login %d: logged in after %d attempt(s)", login, max(record.attempts, 1))
        yield from response.follow_all(
            css="#items a",
            callback=self.parse_item,
            meta=self.session(login),
            cb_kwargs={"login": login},
            dont_filter=True,  # every login scrapes the same URLs, each in its session
        )

    def login_failed(self, login: int, reason: str) -> None:
        record = self.records[login]
        record.succeeded, record.error = False, reason
        self.crawler.stats.inc_value("demo/logins_failed")
        self.logger.warning("Login %d failed: %s", login, reason)

    def parse_item(self, response: Response, login: int) -> Iterator[dict[str, Any]]:
        self.records[login].items += 1
        yield {
            "login": login,
            "name": response.css("h1::text").get(),
            "number": int(response.url.rstrip("/").rsplit("/", 1)[-1]),
        }

    def closed(self, reason: str) -> None:
        done = [record for record in self.records.values() if record.succeeded]
        self.logger.info(
            "%d of %d logins succeeded; %d captchas answered, %d refused; %d items",
            len(done),
            len(self.records),
            sum(record.attempts for record in self.records.values()),
            sum(record.wrong_answers for record in self.records.values()),
            sum(record.items for record in self.records.values()),
        )
