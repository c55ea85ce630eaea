"""Putting the solved text into the form request that follows a captcha (``captcha_field``).

The text goes into the urlencoded body of a POST form, the query string of a GET form, or a
top-level key of a JSON body. Only that field changes: the other fields keep their order
and their bytes, so the site sees the form exactly as the spider built it.

The answer is bound to the form when Scrapy schedules it, and travels in its meta as a
picklable :class:`BoundAnswer`: a form waiting in a ``JOBDIR`` queue keeps its answer (and
the captcha request to send again if the site refuses it) across a pause and a resume.
"""

from __future__ import annotations

import itertools
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from scrapy import Request
from scrapy.http import JsonRequest
from scrapy.statscollectors import StatsCollector
from scrapy.utils.request import request_from_dict

from ..errors import CaptchaInjectionError
from ..solution import CaptchaSolution
from .request_meta import CaptchaMeta
from .sessions import MAX_SESSIONS, SessionSolutions

if TYPE_CHECKING:
    from scrapy.crawler import Crawler

logger = logging.getLogger(__name__)

#: Meta key of a ``captcha_field`` request's :class:`BoundAnswer`. Kept through redirects
#: and retries of the request, which must not take a second answer; removed before the
#: spider sees the response.
ANSWER = "_capsolver_answer"
#: Characters of an answer shown in a log line.
LOGGED_TEXT = 40


@dataclass(frozen=True)
class BoundAnswer:
    """The answer bound to one form request."""

    text: str
    #: The solve it came from, when known (for feedbackTask).
    solution: CaptchaSolution | None
    #: Which attempt at the captcha chain it answers.
    attempt: int
    #: The request that brought the captcha, to send again if the site refuses the answer:
    #: ``Request.to_dict()`` (survives a JOBDIR resume), or the number of a request kept in
    #: this process when it cannot be serialized; None when not solved in the crawl.
    origin: dict[str, Any] | int | None
    #: The answer is in the request's body or URL already.
    in_body: bool = False


def _set_pair(encoded: str, field: str, value: str, encoding: str) -> str:
    """``encoded`` (``a=1&b=2``) with ``field`` set to ``value``: replaced in place (later
    duplicates dropped) or appended; every other pair is kept as it was."""
    quoted = quote_plus(value, encoding=encoding, errors="xmlcharrefreplace")
    pairs: list[str] = []
    replaced = False
    for pair in encoded.split("&") if encoded else []:
        name = pair.partition("=")[0]
        if unquote_plus(name, encoding=encoding, errors="replace") != field:
            pairs.append(pair)
        elif not replaced:
            pairs.append(f"{name}={quoted}")
            replaced = True
    if not replaced:
        pairs.append(f"{quote_plus(field, encoding=encoding)}={quoted}")
    return "&".join(pairs)


def _media_type(request: Request) -> str:
    content_type = request.headers.get(b"Content-Type") or b""
    return content_type.decode("latin-1").partition(";")[0].strip().lower()


def with_answer(request: Request, field: str, text: str) -> Request:
    """A copy of ``request`` with ``text`` in its form field or JSON key ``field``.
    Raises :class:`CaptchaInjectionError` for a body it cannot edit."""
    media_type = _media_type(request)
    if media_type == "application/x-www-form-urlencoded":
        # Urlencoded bodies are ASCII; latin-1 carries any other byte through unchanged.
        body = _set_pair(request.body.decode("latin-1"), field, text, request.encoding)
        return request.replace(body=body.encode("latin-1"), dont_filter=True)
    if request.body and (media_type == "application/json" or media_type.endswith("+json")):
        try:
            data = json.loads(request.body)
        except (ValueError, RecursionError) as exc:
            raise CaptchaInjectionError(
                f"The JSON body of {request.url} does not parse ({type(exc).__name__}); "
                f"cannot set {field!r} in it."
            ) from None
        if not isinstance(data, dict):
            raise CaptchaInjectionError(
                f"The JSON body of {request.url} is a {type(data).__name__}, not an object; "
                f"cannot set the key {field!r} in it."
            )
        data[field] = text
        if isinstance(request, JsonRequest):  # dumped again with its own dumps_kwargs
            return request.replace(data=data, dont_filter=True)
        return request.replace(body=json.dumps(data).encode(), dont_filter=True)
    if not request.body and request.method in ("GET", "HEAD"):
        parts = urlsplit(request.url)
        query = _set_pair(parts.query, field, text, request.encoding)
        return request.replace(url=urlunsplit(parts._replace(query=query)), dont_filter=True)
    raise CaptchaInjectionError(
        f"Cannot put the captcha answer into {request.method} {request.url}: its body is "
        f"{media_type or 'of no declared type'}; captcha_field works with urlencoded forms "
        "(FormRequest), GET query strings and JSON objects (JsonRequest)."
    )


class CaptchaInjector:
    """Binds each ``captcha_field`` request to its answer, once, and puts it in just
    before the request is sent."""

    def __init__(self, crawler: Crawler, sessions: SessionSolutions, stats: StatsCollector) -> None:
        self._crawler = crawler
        self._sessions = sessions
        self._stats = stats
        # Captcha requests that Request.to_dict() cannot serialize (a callback that is not
        # a spider method): kept here, as many as the sessions keep answers for.
        self._unserializable: OrderedDict[int, Request] = OrderedDict()
        self._numbers = itertools.count()

    def bind(self, request: Request, parsed: CaptchaMeta) -> BoundAnswer | None:
        """Bind ``request`` to its answer in its meta; None (and nothing bound) when its
        session has no answer to give it yet."""
        if parsed.field is None or ANSWER in request.meta:
            return None
        if parsed.chosen is None:
            solved = self._sessions.newest_unused(parsed.session)
            if solved is None:
                return None
            solution: CaptchaSolution | None = solved.solution
            text = solved.solution.text
        else:
            solved = self._sessions.find(parsed.session, parsed.chosen)
            if isinstance(parsed.chosen, CaptchaSolution):
                solution = parsed.chosen
            else:
                solution = solved.solution if solved is not None else None
            text = str(parsed.chosen)
        bound = BoundAnswer(
            text=text,
            solution=solution,
            attempt=solved.attempt if solved is not None else parsed.attempt,
            origin=self._keep_origin(solved.origin) if solved is not None else None,
        )
        if solved is not None:
            solved.used = True
        request.meta[ANSWER] = bound
        return bound

    def process_request(self, request: Request, parsed: CaptchaMeta) -> Request | None:
        """The request to send instead of ``request`` (Scrapy schedules it again), or None
        when there is nothing to put in. Raises a :class:`CaptchaSolveError`."""
        if parsed.field is None:
            return None
        bound: BoundAnswer | None = request.meta.get(ANSWER) or self.bind(request, parsed)
        if bound is None:
            raise CaptchaInjectionError(
                f"No solved captcha to put into {parsed.field!r} of {request.url}: every "
                f"captcha solved in session (cookiejar) {parsed.session!r} is used already, "
                "or none was solved. Request the captcha with solve_image first, in the same "
                "cookiejar, or pass meta['captcha_solution']."
            )
        if bound.in_body:
            return None
        sent = with_answer(request, parsed.field, bound.text)
        sent.meta[ANSWER] = replace(bound, in_body=True)
        self._stats.inc_value("capsolver/injected")
        logger.debug(
            "Put the captcha answer %r into %r of %s",
            bound.text[:LOGGED_TEXT],
            parsed.field,
            request.url,
        )
        return sent

    def _keep_origin(self, origin: Request | None) -> dict[str, Any] | int | None:
        if origin is None:
            return None
        try:
            return origin.to_dict(spider=self._crawler.spider)
        except ValueError:  # a callback that is not a method of the spider
            number = next(self._numbers)
            self._unserializable[number] = origin
            while len(self._unserializable) > MAX_SESSIONS:
                self._unserializable.popitem(last=False)
            return number

    def origin_of(self, bound: BoundAnswer) -> Request | None:
        """The captcha request of ``bound``, or None when it is not known (not solved in
        the crawl, or kept in a process that has stopped)."""
        if isinstance(bound.origin, dict):
            return request_from_dict(bound.origin, spider=self._crawler.spider)
        if isinstance(bound.origin, int):
            return self._unserializable.get(bound.origin)
        return None
