"""Checks of one value (a setting, a meta key, a field of a task), shared by the settings,
the per-request options and the local server: each returns the value cleaned up or raises
a ``ValueError`` naming it, the value and what is allowed."""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import parse_qs, urlsplit

#: The ``score`` CapSolver accepts for an image task.
SCORE_RANGE = (0.8, 1.0)


def invalid(name: str, value: Any, allowed: str) -> ValueError:
    return ValueError(f"{name}={value!r} is not valid: expected {allowed}")


def check_score(name: str, value: Any) -> float:
    low, high = SCORE_RANGE
    if isinstance(value, bool):
        raise invalid(name, value, f"a number from {low} to {high}")
    try:
        score = float(value)
    except (TypeError, ValueError):
        raise invalid(name, value, f"a number from {low} to {high}") from None
    if not low <= score <= high:
        raise invalid(name, value, f"a number from {low} to {high}")
    return score


def check_text(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, "a non-empty string")
    return value.strip()


def check_confidence(name: str, value: Any) -> float:
    allowed = "a number from 0 to 1"
    if isinstance(value, bool):
        raise invalid(name, value, allowed)
    try:
        confidence = float(value)
    except (TypeError, ValueError):
        raise invalid(name, value, allowed) from None
    if not 0.0 <= confidence <= 1.0:  # NaN too
        raise invalid(name, value, allowed)
    return confidence


def check_length(name: str, value: Any) -> int:
    allowed = "a whole number of characters >= 1"
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise invalid(name, value, allowed)
    try:
        length = int(value)
    except ValueError:
        raise invalid(name, value, allowed) from None
    if length < 1:
        raise invalid(name, value, allowed)
    return length


def check_charset(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise invalid(name, value, "a non-empty string of the characters answers may contain")
    return "".join(dict.fromkeys(value.strip()))  # each character once, in the given order


def check_flag(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise invalid(name, value, "True or False")
    return value


def check_url(name: str, value: Any) -> str:
    if not isinstance(value, str):
        raise invalid(name, value, "an http:// or https:// URL")
    parts = urlsplit(value.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise invalid(name, value, "an http:// or https:// URL")
    return value.strip()


REDIS_SCHEMES = ("redis", "rediss", "unix")


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``, for messages and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return parts._replace(netloc=f"{user}:***@{host}").geturl()


def check_redis_url(name: str, value: Any) -> str:
    allowed = "a redis://, rediss:// or unix:// URL"
    if not isinstance(value, str):
        raise invalid(name, type(value).__name__, allowed)
    try:
        parts = urlsplit(value.strip())
        valid = parts.scheme in REDIS_SCHEMES and bool(parts.hostname or parts.path)
    except ValueError:  # a bad port, for one
        valid = False
    if not valid:
        raise invalid(name, redact_url(value.strip()), allowed)
    database = parse_qs(parts.query).get("db", [""])[-1]
    if parts.scheme != "unix":
        database = database or parts.path.strip("/")
    if database and not database.isdigit():
        # Caught here, where the message can leave the password out; redis-py would fail
        # later, at the first connection.
        raise invalid(name, redact_url(value.strip()), f"{allowed} whose database is a number")
    return value.strip()


def check_sentinel(name: str, entry: Any) -> tuple[str, int]:
    """One sentinel, ``host:port`` (port default 26379, Sentinel's own)."""
    allowed = "a list of 'host:port' (port default 26379)"
    if not isinstance(entry, str) or not entry.strip():
        raise invalid(name, entry, allowed)
    host, colon, port = entry.strip().rpartition(":")
    if not colon or "]" in port:  # no port, or an IPv6 address without one
        host, port = entry.strip(), "26379"
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise invalid(name, entry, allowed)
    return host, int(port)


def is_loopback(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
