"""A crawl that learns: logs in on the demo site again and again, a new session each time,
until the learnt model answered enough captchas (or a cap on logins); for the learning tests
and benchmarks/learn_stall.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Hashable
from typing import Any

import scrapy
from captcha_spiders import PageLoginSpider
from scrapy.http import Response
from scrapy.utils.defer import maybe_deferred_to_future
from twisted.internet.task import deferLater

from scrapy_capsolver_ocr import get_solver


class LearningLoginSpider(PageLoginSpider):
    """Logs in ``sessions`` at a time until ``learnt`` answers came from the learnt model
    or ``max_logins`` logins were started. While a model trains, new logins trickle (one
    every ``pause`` seconds): the crawl goes on, without spending every login first."""

    name = "learning_logins"

    def __init__(
        self,
        site: str,
        sessions: int = 4,
        max_logins: int = 400,
        learnt: int = 20,
        pause: float = 0.2,
        on_login: Any = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(site, jars=tuple(range(sessions)), **kwargs)
        self.max_logins = max_logins
        self.learnt_target = learnt
        self.pause = pause
        self.started = sessions
        self.on_login = on_login
        #: The solver of each logged-in session's accepted answer.
        self.answered_by: list[str] = []
        #: What ``on_login`` noted.
        self.noted: list[Any] = []

    @property
    def learnt_answers(self) -> int:
        assert self.crawler.stats is not None
        return int(self.crawler.stats.get_value("capsolver/learn/local_answers", 0))

    def learnt_reader(self) -> Any:
        return get_solver(self.crawler).readers[0]

    @property
    def training(self) -> bool:
        """Whether a model is being trained (never, when the crawl does not learn)."""
        reader = self.learnt_reader()
        return reader.name == "learnt" and reader.trainer.training is not None

    async def logged_in(self, response: Response) -> AsyncIterator[scrapy.Request]:  # type: ignore[override]
        super().logged_in(response)
        jar: Hashable = response.meta.get("cookiejar")
        self.answered_by.append(self.solutions[jar][-1].solver)
        if self.on_login is not None:
            self.on_login(self)
        if self.learnt_answers >= self.learnt_target or self.started >= self.max_logins:
            return
        self.started += 1
        jar = self.started  # counted before the pause: another login may end meanwhile
        if self.training:
            from twisted.internet import reactor

            await maybe_deferred_to_future(deferLater(reactor, self.pause, lambda: None))
        yield self.login_page(jar)
