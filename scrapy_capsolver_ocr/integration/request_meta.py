"""Every captcha meta key of a request, checked once into one typed :class:`CaptchaMeta`.

The middleware parses a request's meta when it enters the downloader (``process_request``):
a wrong value fails there, before anything is downloaded or paid for, and the rest of the
path reads the parsed object instead of the raw meta.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

from scrapy.http import Response

from ..errors import CaptchaOptionsError
from ..solution import CaptchaSolution
from ..solving.options import SolveOptions, solve_options

RetryIf = re.Pattern[str] | Callable[[Response], Any]


@dataclass(frozen=True)
class CaptchaMeta:
    """What one request asked of the plugin."""

    #: ``solve_image``: what to solve in the response; None when it did not ask.
    solve: SolveOptions | None
    #: ``solve_image`` is False: ``CAPSOLVER_URL_PATTERNS`` does not apply either.
    opted_out: bool
    #: ``captcha_field``: the form field (or JSON key) the answer goes into.
    field: str | None
    #: ``captcha_retry_if``: how the site says the answer was wrong.
    retry_if: RetryIf | None
    #: ``captcha_solution`` on a ``captcha_field`` request: the answer the spider chose.
    chosen: CaptchaSolution | str | None
    #: ``captcha_attempt``: which attempt at the captcha chain (1 for the first).
    attempt: int
    #: ``cookiejar``: the session the answer belongs to.
    session: Hashable


def parse_meta(meta: dict[str, Any]) -> CaptchaMeta:
    """The captcha meta keys of ``meta``; raises :class:`CaptchaOptionsError` for a wrong
    value, naming the key."""
    field = captcha_field(meta)
    return CaptchaMeta(
        solve=solve_options(meta),
        opted_out=meta.get("solve_image") is False,
        field=field,
        retry_if=retry_condition(meta, field),
        chosen=chosen_solution(meta) if field is not None else None,
        attempt=attempt_of(meta),
        session=session_of(meta),
    )


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


def retry_condition(meta: dict[str, Any], field: str | None) -> RetryIf | None:
    value = meta.get("captcha_retry_if")
    if value is None:
        return None
    if field is None:
        raise CaptchaOptionsError(
            "meta['captcha_retry_if'] needs meta['captcha_field']: it tells whether the site "
            "rejected the answer put into that field."
        )
    if isinstance(value, str):
        try:
            return re.compile(value)
        except re.error as exc:
            raise CaptchaOptionsError(
                f"meta['captcha_retry_if']={value!r} is not a valid regular expression: {exc}"
            ) from None
    if isinstance(value, re.Pattern):
        if not isinstance(value.pattern, str):
            raise CaptchaOptionsError(
                "meta['captcha_retry_if'] must be a str pattern (it is searched in "
                "response.text), not a bytes one"
            )
        return value
    if callable(value):
        return value  # type: ignore[no-any-return]
    raise CaptchaOptionsError(
        "meta['captcha_retry_if'] must be a regular expression (str or compiled) or a "
        f"callable(response) -> bool, not {type(value).__name__}"
    )


def attempt_of(meta: dict[str, Any]) -> int:
    value = meta.get("captcha_attempt", 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CaptchaOptionsError(f"meta['captcha_attempt'] must be an int >= 1, not {value!r}")
    return value


def session_of(meta: dict[str, Any]) -> Hashable:
    """The ``cookiejar`` meta value (None: the default session)."""
    session = meta.get("cookiejar")
    if not isinstance(session, Hashable):
        raise CaptchaOptionsError(
            f"meta['cookiejar'] must be hashable to name a session, not {type(session).__name__}"
        )
    return session
