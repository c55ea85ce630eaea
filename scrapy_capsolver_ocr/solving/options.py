"""What one solve asks for, checked once into a :class:`SolveOptions`.

Two ways in: a request's ``solve_image`` meta value (:func:`solve_options`), and the
keyword arguments of the public ``solve()`` and ``solve_page_captcha()``
(:func:`checked_options`). Past them, the options travel as one checked object and are not
looked at again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import Any

from cssselect import SelectorError
from parsel.csstranslator import css2xpath

from ..checks import (
    check_charset,
    check_flag,
    check_length,
    check_score,
    check_text,
    check_url,
)
from ..errors import CaptchaOptionsError


@dataclass(frozen=True)
class SolveOptions:
    """What one request asked for: ``True`` gives all defaults."""

    module: str | None = None
    score: float | None = None
    website_url: str | None = None
    #: CSS selector of the captcha element on the page (page mode).
    selector: str | None = None
    #: Selector of the input a browser page's solved text is typed into (Playwright).
    fill: str | None = None
    #: False: CapSolver reads it even when local-first (CAPSOLVER_LOCAL_OCR) is on.
    local: bool | None = None
    #: The answer's length and characters, for the local reader's gate.
    length: int | None = None
    charset: str | None = None

    def with_page_url(self, url: str | None) -> SolveOptions:
        """These options with ``website_url`` defaulting to ``url``, the page the captcha
        belongs to (a header or a browser's address: checked here)."""
        if self.website_url is not None or not url:
            return self
        try:
            return replace(self, website_url=check_url("website_url", url))
        except ValueError as exc:
            raise CaptchaOptionsError(str(exc)) from None


def check_selector(name: str, value: Any) -> str:
    selector = check_text(name, value)
    try:
        css2xpath(selector)
    except SelectorError as exc:  # bad syntax, or a pseudo-class CSS does not have
        raise ValueError(f"{name}={value!r} is not a valid CSS selector: {exc}") from None
    return selector


_CHECKS = {
    "module": check_text,
    "score": check_score,
    "website_url": check_url,
    "selector": check_selector,
    "fill": check_text,
    "local": check_flag,
    "length": check_length,
    "charset": check_charset,
}
# Playwright takes its own selector syntax (text=..., >> chains into frames): it checks them.
_BROWSER_CHECKS = {**_CHECKS, "selector": check_text}
_ALLOWED = ", ".join(field.name for field in fields(SolveOptions))


def checked_options(**values: Any) -> SolveOptions:
    """The options given as keyword arguments (None: not given), checked under their own
    names. Raises :class:`CaptchaOptionsError`."""
    return _checked(values, _BROWSER_CHECKS, lambda name: name)


def check_attempt(attempt: Any) -> int:
    """``attempt`` of ``solve()``: 1 for a first captcha, more for a fresh one after the site
    refused an answer. Raises :class:`CaptchaOptionsError`."""
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise CaptchaOptionsError(f"attempt={attempt!r} is not valid: expected an int >= 1")
    return attempt


def _checked(
    values: dict[str, Any], checks: dict[str, Any], named: Callable[[str], str]
) -> SolveOptions:
    checked: dict[str, Any] = {}
    for name, raw in values.items():
        if raw is None:
            continue
        try:
            checked[name] = checks[name](named(name), raw)
        except ValueError as exc:
            raise CaptchaOptionsError(str(exc)) from None
    return SolveOptions(**checked)


def solve_options(meta: dict[str, Any]) -> SolveOptions | None:
    """The options of ``meta["solve_image"]``, or None when the request did not ask for a
    solve. Raises :class:`CaptchaOptionsError` for a value of the wrong type or content."""
    value = meta.get("solve_image")
    if value is None or value is False:
        return None
    if value is True:
        return SolveOptions()
    if not isinstance(value, dict):
        raise CaptchaOptionsError(
            f"meta['solve_image'] must be True or a dict with any of {_ALLOWED}, "
            f"not {type(value).__name__} {value!r}"
        )
    unknown = sorted(set(value) - set(_CHECKS))
    if unknown:
        raise CaptchaOptionsError(
            f"meta['solve_image'] has unknown option(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {_ALLOWED}"
        )
    checks = _BROWSER_CHECKS if meta.get("playwright") else _CHECKS
    return _checked(value, checks, lambda name: f"meta['solve_image'][{name!r}]")
