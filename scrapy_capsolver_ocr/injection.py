"""Putting the solved text into the form request that follows a captcha (``captcha_field``).

The text goes into the urlencoded body of a POST form, the query string of a GET form, or a
top-level key of a JSON body. Only that field changes: the other fields keep their order
and their bytes, so the site sees the form exactly as the spider built it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote_plus, unquote_plus, urlsplit, urlunsplit

from scrapy import Request
from scrapy.http import JsonRequest
from scrapy.statscollectors import StatsCollector

from .errors import CaptchaInjectionError, CaptchaOptionsError
from .sessions import SessionSolutions, SolvedCaptcha, session_of
from .solution import CaptchaSolution

logger = logging.getLogger(__name__)

#: Meta key of a request that already carries its answer: set on the request sent in place
#: of the spider's, and kept through redirects and retries of it, which must not take a
#: second solution. Removed before the spider sees the response.
INJECTED = "_capsolver_injected"


@dataclass(frozen=True)
class Injected:
    """What was put into a request: the text, and the solve it came from when known."""

    text: str
    solution: CaptchaSolution | None
    solved: SolvedCaptcha | None


def captcha_field(meta: dict[str, Any]) -> str | None:
    value = meta.get("captcha_field")
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise CaptchaOptionsError(
            f"meta['captcha_field'] must be the name of a form field, not {value!r}"
        )
    return value


def chosen_solution(meta: dict[str, Any]) -> CaptchaSolution | str | None:
    value = meta.get("captcha_solution")
    if value is None or isinstance(value, CaptchaSolution):
        return value
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise CaptchaOptionsError(
        "meta['captcha_solution'] must be a CaptchaSolution or a non-empty str, "
        f"not {type(value).__name__}"
    )


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
        except ValueError as exc:
            raise CaptchaInjectionError(
                f"The JSON body of {request.url} does not parse ({exc}); "
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
    """Gives each request with ``captcha_field`` its answer, once, just before it is sent."""

    def __init__(self, sessions: SessionSolutions, stats: StatsCollector) -> None:
        self._sessions = sessions
        self._stats = stats

    def process_request(self, request: Request) -> Request | None:
        """The request to send instead of ``request`` (Scrapy schedules it again), or None
        when there is nothing to put in. Raises a :class:`CaptchaSolveError`."""
        field = captcha_field(request.meta)
        chosen = chosen_solution(request.meta)
        if field is None or INJECTED in request.meta:
            return None
        session = session_of(request)
        if chosen is None:
            solved = self._sessions.newest_unused(session)
            if solved is None:
                raise CaptchaInjectionError(
                    f"No solved captcha to put into {field!r} of {request.url}: every "
                    f"captcha solved in session (cookiejar) {session!r} is used already, or "
                    "none was solved. Request the captcha with solve_image first, in the same "
                    "cookiejar, or pass meta['captcha_solution']."
                )
            solution: CaptchaSolution | None = solved.solution
            text = solved.solution.text
        else:
            solved = self._sessions.find(session, chosen)
            if isinstance(chosen, CaptchaSolution):
                solution = chosen
            else:
                solution = solved.solution if solved is not None else None
            text = str(chosen)
        sent = with_answer(request, field, text)
        if solved is not None:
            solved.used = True
        sent.meta[INJECTED] = Injected(text, solution, solved)
        self._stats.inc_value("capsolver/injected")
        logger.debug("Put the captcha answer %r into %r of %s", text, field, request.url)
        return sent
