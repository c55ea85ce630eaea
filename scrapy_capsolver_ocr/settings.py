"""``CAPSOLVER_*`` settings, read and validated once into one typed object."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import urlsplit

from scrapy.exceptions import NotConfigured
from scrapy.settings import BaseSettings

from .checks import (
    check_charset,
    check_confidence,
    check_length,
    check_redis_url,
    check_score,
    check_sentinel,
    check_text,
    check_url,
    invalid,
    is_loopback,
    redact_url,
)
from .images import DEFAULT_MAX_IMAGE_PIXELS

logger = logging.getLogger(__name__)

SETTINGS_PREFIX = "CAPSOLVER_"
DEFAULT_API_URL = "https://api.capsolver.com"
#: The local answer's confidence from which it is used instead of paying: calibrated on the
#: demo site's captchas for at least 95 % right (docs/local-first.md).
DEFAULT_LOCAL_MIN_CONFIDENCE = 0.7
#: New accepted answers of a site before a model of it is (re)trained: from about a thousand
#: a small model reads a site better than the general engine (docs/learning-in-a-crawl.md).
DEFAULT_LEARN_MIN_LABELS = 1000
#: The label store's bound: about 20,000 captchas of a few kilobytes.
DEFAULT_LEARN_MAX_BYTES = 100_000_000

T = TypeVar("T")


class ApiKey:
    """The account key. Its ``repr`` and ``str`` show at most its last four characters, so
    it cannot leak through a log line, a stats dump or an exception; :meth:`reveal` gives
    the key itself, for the request body only."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        # Four characters of a long key tell accounts apart without helping anyone use it.
        tail = self._value[-4:] if len(self._value) >= 16 else ""
        return f"ApiKey('...{tail}')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def default_local_workers() -> int:
    """Threads the local OCR engine reads in: 2, but 1 on a machine of 2 cores or fewer,
    where the crawl itself needs one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return 2 if (cores or 1) > 2 else 1


class _Reader:
    """Typed getters that name the setting, the value and what is allowed on bad input."""

    def __init__(self, settings: BaseSettings) -> None:
        self.settings = settings
        self.names: set[str] = set()

    def raw(self, name: str, default: Any = None) -> Any:
        self.names.add(name)
        return self.settings.get(name, default)

    def _convert(self, name: str, default: T, convert: Callable[[Any], T], allowed: str) -> T:
        raw = self.raw(name, default)
        if raw is None:
            return default
        try:
            return convert(raw)
        except (TypeError, ValueError):
            raise invalid(name, raw, allowed) from None

    def boolean(self, name: str, default: bool) -> bool:
        allowed = "True or False"
        self.names.add(name)
        try:
            return self.settings.getbool(name, default)
        except ValueError:
            raise invalid(name, self.settings.get(name), allowed) from None

    def integer(self, name: str, default: int, minimum: int) -> int:
        allowed = f"a whole number >= {minimum}"

        def convert(raw: Any) -> int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            return int(raw)

        value = self._convert(name, default, convert, allowed)
        if value < minimum:
            raise invalid(name, value, allowed)
        return value

    def seconds(self, name: str, default: float, *, allow_zero: bool = False) -> float:
        # Infinity would wait forever (a pause, a timeout): never what a crawl wants.
        allowed = f"a finite number of seconds {'>=' if allow_zero else '>'} 0"

        def convert(raw: Any) -> float:
            if isinstance(raw, bool):
                raise ValueError
            return float(raw)

        value = self._convert(name, default, convert, allowed)
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise invalid(name, value, allowed)
        return value

    def optional(self, name: str, check: Callable[[str, Any], T]) -> T | None:
        raw = self.raw(name)
        if raw is None or raw == "":
            return None
        return check(name, raw)

    def patterns(self, name: str) -> tuple[re.Pattern[str], ...]:
        self.names.add(name)
        try:
            raw = self.settings.getlist(name)
        except TypeError:
            raise invalid(name, self.settings.get(name), "a list of regular expressions") from None
        compiled = []
        for item in raw:
            try:
                compiled.append(item if isinstance(item, re.Pattern) else re.compile(item))
            except (TypeError, re.error):
                raise invalid(name, item, "a list of regular expressions") from None
        return tuple(compiled)


def mask_api_key(settings: BaseSettings) -> None:
    """Replace a ``str`` ``CAPSOLVER_API_KEY`` in ``settings`` with its :class:`ApiKey`, and
    the ``str`` ``api_key`` of every ``CAPSOLVER_PROVIDERS`` entry likewise, so that a dump
    of the settings (``scrapy shell``, the telnet console, ``copy_to_dict()``) shows only
    their last characters. A blank key is left as it is, to be refused."""
    key = settings.get("CAPSOLVER_API_KEY")
    if isinstance(key, str) and key.strip():
        _replace_setting(settings, "CAPSOLVER_API_KEY", ApiKey(key.strip()))
    providers = settings.get("CAPSOLVER_PROVIDERS")
    if isinstance(providers, (list, tuple)) and any(_plain_key(entry) for entry in providers):
        masked = [
            {**entry, "api_key": ApiKey(entry["api_key"].strip())} if _plain_key(entry) else entry
            for entry in providers
        ]
        _replace_setting(settings, "CAPSOLVER_PROVIDERS", masked)


def _plain_key(entry: Any) -> bool:
    key = entry.get("api_key") if isinstance(entry, dict) else None
    return isinstance(key, str) and bool(key.strip())


def _replace_setting(settings: BaseSettings, name: str, value: Any) -> None:
    priority = settings.getpriority(name) or "addon"
    if not settings.frozen:  # the add-on, before Scrapy freezes the settings
        settings.set(name, value, priority=priority)
        return
    # The middleware enabled alone sees the settings frozen already: wrapping the key
    # changes no value that matters, only how it prints.
    from .compat import replace_frozen_setting

    replace_frozen_setting(settings, name, value, priority)


def refuse_reactorless(settings: BaseSettings) -> None:
    """Raise ``ValueError`` naming ``TWISTED_REACTOR_ENABLED`` when the crawl runs, or is
    set to run, without a Twisted reactor: treq and the fleet's Redis client need one.

    The setting says what the user asked for, before Scrapy acts on it; Scrapy's own helper
    says what runs (docs/reactorless.md says what supporting that mode would take)."""
    from .compat import is_reactorless

    if settings.getbool("TWISTED_REACTOR_ENABLED", True) and not is_reactorless():
        return
    raise ValueError(
        "TWISTED_REACTOR_ENABLED=False is not supported by scrapy-capsolver-ocr: its "
        "API client (treq) needs a Twisted reactor. Remove the setting or set it to True."
    )


def _redis_topology(
    read: _Reader, redis_url: str | None
) -> tuple[tuple[tuple[str, int], ...], bool]:
    """CAPSOLVER_REDIS_SENTINELS and CAPSOLVER_REDIS_CLUSTER, checked against the URL."""
    cluster = read.boolean("CAPSOLVER_REDIS_CLUSTER", False)
    read.names.add("CAPSOLVER_REDIS_SENTINELS")
    try:
        entries = read.settings.getlist("CAPSOLVER_REDIS_SENTINELS")
    except (TypeError, ValueError):
        entries = [read.settings.get("CAPSOLVER_REDIS_SENTINELS")]
    sentinels = tuple(check_sentinel("CAPSOLVER_REDIS_SENTINELS", entry) for entry in entries)
    parts = urlsplit(redis_url or "")
    if sentinels:
        if redis_url is None or parts.scheme == "unix" or parts.port is not None:
            raise invalid(
                "CAPSOLVER_REDIS_SENTINELS",
                [f"{host}:{port}" for host, port in sentinels],
                "sentinels beside CAPSOLVER_REDIS_URL = 'redis://[user:password@]<master "
                "name>[/db]' (or rediss://), whose host (without a port) is the name Sentinel "
                "knows the master by",
            )
        if cluster:
            raise invalid(
                "CAPSOLVER_REDIS_CLUSTER", True, "False when CAPSOLVER_REDIS_SENTINELS is set"
            )
    if cluster:
        if redis_url is None or parts.scheme == "unix":
            raise invalid(
                "CAPSOLVER_REDIS_CLUSTER",
                True,
                "True only beside a redis:// or rediss:// CAPSOLVER_REDIS_URL naming a node",
            )
        if parts.path.strip("/") not in ("", "0"):
            raise invalid(
                "CAPSOLVER_REDIS_URL",
                redact_url(redis_url),
                "database 0 (the only one) when CAPSOLVER_REDIS_CLUSTER is True",
            )
    return sentinels, cluster


def _warn_unknown(settings: BaseSettings, known: set[str]) -> None:
    """A misspelt setting would otherwise be ignored without a word."""
    for name in sorted(n for n in settings if str(n).startswith(SETTINGS_PREFIX)):
        if name not in known:
            # Compared without the shared prefix, which would make every name look close.
            close = difflib.get_close_matches(
                name.removeprefix(SETTINGS_PREFIX),
                [k.removeprefix(SETTINGS_PREFIX) for k in known],
                n=1,
            )
            logger.warning(
                "Unknown setting %s is ignored%s",
                name,
                f" (did you mean {SETTINGS_PREFIX}{close[0]}?)" if close else "",
            )


def _check_directory(name: str, value: Any) -> str:
    """A directory's path: a string or a path object."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    return check_text(name, value)


def _api_key(setting: Any) -> ApiKey | None:
    return _entry_key(setting, "CAPSOLVER_API_KEY", "CAPSOLVER_API_KEY", "a CapSolver key")


def check_api_url(name: str, value: Any, allow_http: bool) -> str:
    """A solving service's base URL: http(s), no query or fragment, https unless loopback
    or ``CAPSOLVER_ALLOW_HTTP``; without its trailing slash."""
    api_url = check_url(name, value)
    if urlsplit(api_url).query or urlsplit(api_url).fragment:
        # The method name is appended to the URL: a query would swallow it.
        raise invalid(name, api_url, "a base URL without ?query or #fragment")
    if api_url.startswith("http://") and not allow_http and not is_loopback(api_url):
        # The key travels in the request body: plain HTTP would show it to the network.
        raise invalid(
            name,
            api_url,
            "an https:// URL (http:// only to a loopback address, or set "
            "CAPSOLVER_ALLOW_HTTP = True to send the key unencrypted)",
        )
    return api_url.rstrip("/")


@dataclass(frozen=True)
class ProviderEntry:
    """One solving service of ``CAPSOLVER_PROVIDERS``, checked (its options were accepted
    by its kind's ``build``)."""

    #: Its name in ``PROVIDER_KINDS`` ("capsolver", ...), also its name in stats.
    name: str
    api_key: ApiKey | None
    api_url: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: Paid calls in flight to this service from this process; 0: only
    #: ``CAPSOLVER_CONCURRENCY`` applies.
    concurrency: int = 0
    #: Paid calls in flight to this service from the whole fleet; 0: no cap of its own.
    fleet_concurrency: int = 0


_ENTRY_KEYS = frozenset(
    {"name", "api_key", "api_url", "options", "concurrency", "fleet_concurrency"}
)
_PROVIDERS_SHAPE = (
    'a list of dicts such as {"name": "capsolver", "api_key": "...", "api_url": "https://...", '
    '"options": {...}}'
)


def read_providers(
    raw: Any,
    api_key: ApiKey | None,
    api_url: str,
    allow_http: bool,
    app_id: str | None,
) -> tuple[ProviderEntry, ...]:
    """``CAPSOLVER_PROVIDERS`` checked, in order of preference; unset: CapSolver alone with
    ``CAPSOLVER_API_KEY`` and ``CAPSOLVER_API_URL``, as before the setting existed."""
    name = "CAPSOLVER_PROVIDERS"
    if raw is None or raw == [] or raw == ():
        return (ProviderEntry("capsolver", api_key, api_url),)
    # The registry sits above this module; it is imported only when the setting is used.
    from .api.registry import PROVIDER_KINDS

    if isinstance(raw, (str, bytes, dict)) or not isinstance(raw, (list, tuple)):
        raise ValueError(f"{name} must be {_PROVIDERS_SHAPE}, not {type(raw).__name__}")
    entries: list[ProviderEntry] = []
    for number, item in enumerate(raw, 1):
        where = f"{name} entry {number}"
        if not isinstance(item, dict):
            raise ValueError(f"{where} must be a dict, not {type(item).__name__}")
        unknown = sorted(str(k) for k in set(item) - _ENTRY_KEYS)
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; allowed: {sorted(_ENTRY_KEYS)}")
        kind = PROVIDER_KINDS.get(item.get("name"))  # type: ignore[arg-type]
        if kind is None:
            raise ValueError(
                f"{where}: unknown provider name {item.get('name')!r}; known: "
                f"{', '.join(PROVIDER_KINDS)}"
            )
        if any(entry.name == kind.name for entry in entries):
            raise ValueError(f"{where}: provider {kind.name!r} is listed twice")
        key = _entry_key(item.get("api_key"), kind.key_variable, f"{where} ({kind.name}) api_key")
        if key is None:
            raise ValueError(
                f"{where}: no API key for {kind.name!r}: give its api_key or set the "
                f"{kind.key_variable} environment variable"
            )
        url = check_api_url(
            f"{where} ({kind.name}) api_url", item.get("api_url") or kind.default_url, allow_http
        )
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError(
                f"{where} ({kind.name}) options must be a dict, not {type(options).__name__}"
            )
        try:
            kind.build(options, app_id)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{where} ({kind.name}) options: {exc}") from None
        entries.append(
            ProviderEntry(
                kind.name,
                key,
                url,
                dict(options),
                _entry_count(item, "concurrency", where),
                _entry_count(item, "fleet_concurrency", where),
            )
        )
    return tuple(entries)


def _entry_key(value: Any, variable: str, name: str, what: str = "a key") -> ApiKey | None:
    """The key of ``value``, else of the environment variable ``variable``; None: neither."""
    raw = value or os.environ.get(variable)
    if not raw:
        return None
    if isinstance(raw, ApiKey):
        return raw
    if not isinstance(raw, str):
        # The value itself may be a key in the wrong shape: say its type, never the value.
        raise ValueError(f"{name} must be a string, not {type(raw).__name__}")
    if not raw.strip():
        raise invalid(name, raw, f"{what} (this one is blank)")
    return ApiKey(raw.strip())


def _entry_count(item: dict[str, Any], key: str, where: str) -> int:
    value = item.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise invalid(f"{where} {key}", value, "a whole number >= 0")
    return value


@dataclass(frozen=True)
class SolverSettings:
    """Every ``CAPSOLVER_*`` setting, validated. docs/settings.md says what each one means."""

    api_key: ApiKey | None
    api_url: str
    #: ``CAPSOLVER_PROVIDERS`` in order of preference; one entry (CapSolver) when unset.
    providers: tuple[ProviderEntry, ...]
    no_slot_failover_after: float
    failover_cooldown: float
    failover_answer_errors: bool
    failover_unanswered: bool
    module: str | None
    score: float | None
    app_id: str | None
    timeout: float
    max_retries: int
    concurrency: int
    max_image_size: int
    close_on_fatal: bool
    max_tasks: int
    allow_http: bool
    backoff_base: float
    backoff_max: float
    block_pause: float
    block_window: float
    check_balance: bool
    logstats_interval: float
    cache_size: int
    url_patterns: tuple[re.Pattern[str], ...]
    report_wrong: bool
    max_attempts: int
    element_timeout: float
    poll_interval: float
    max_image_pixels: int
    cache_ttl: float
    budget_period: float
    fleet_concurrency: int
    #: Left out of the repr: it may hold the Redis password (RedisState's repr shows it masked).
    redis_url: str | None = dataclasses.field(repr=False)
    #: The fleet's name; None: the spider's name.
    fleet: str | None
    add_request_slots: bool
    local_ocr: bool
    local_min_confidence: float
    local_length: int | None
    local_charset: str | None
    local_workers: int
    #: Learning each site's captchas from the answers it accepted (docs/learning-in-a-crawl.md).
    learn: bool = False
    learn_min_labels: int = DEFAULT_LEARN_MIN_LABELS
    #: Where labels and models are kept on disk; None: ``.scrapy/capsolver-learn`` of the project.
    learn_dir: str | None = None
    learn_max_bytes: int = DEFAULT_LEARN_MAX_BYTES
    #: Fleet mode through Sentinel: (host, port) of each sentinel; the URL's host names the master.
    redis_sentinels: tuple[tuple[str, int], ...] = ()
    #: Fleet mode on a Redis Cluster: the URL names any node.
    redis_cluster: bool = False

    @classmethod
    def from_settings(cls, settings: BaseSettings) -> SolverSettings:
        read = _Reader(settings)
        if not read.boolean("CAPSOLVER_ENABLED", True):
            raise NotConfigured("CAPSOLVER_ENABLED is False")
        refuse_reactorless(settings)
        allow_http = read.boolean("CAPSOLVER_ALLOW_HTTP", False)
        api_url = check_api_url(
            "CAPSOLVER_API_URL", read.raw("CAPSOLVER_API_URL", DEFAULT_API_URL), allow_http
        )
        api_key = _api_key(read.raw("CAPSOLVER_API_KEY"))
        app_id = read.optional("CAPSOLVER_APP_ID", check_text)
        providers = read_providers(
            read.raw("CAPSOLVER_PROVIDERS"), api_key, api_url, allow_http, app_id
        )
        config = cls(
            # The preferred provider's: what a single-provider crawl had in these two.
            api_key=providers[0].api_key,
            api_url=providers[0].api_url,
            providers=providers,
            no_slot_failover_after=read.seconds(
                "CAPSOLVER_NO_SLOT_FAILOVER_AFTER", 30.0, allow_zero=True
            ),
            failover_cooldown=read.seconds("CAPSOLVER_FAILOVER_COOLDOWN", 60.0),
            failover_answer_errors=read.boolean("CAPSOLVER_FAILOVER_ANSWER_ERRORS", False),
            failover_unanswered=read.boolean("CAPSOLVER_FAILOVER_UNANSWERED", True),
            module=read.optional("CAPSOLVER_MODULE", check_text),
            score=read.optional("CAPSOLVER_SCORE", check_score),
            app_id=app_id,
            timeout=read.seconds("CAPSOLVER_TIMEOUT", 30.0),
            max_retries=read.integer("CAPSOLVER_MAX_RETRIES", 3, minimum=0),
            concurrency=read.integer("CAPSOLVER_CONCURRENCY", 16, minimum=1),
            max_image_size=read.integer("CAPSOLVER_MAX_IMAGE_SIZE", 1_048_576, minimum=1),
            close_on_fatal=read.boolean("CAPSOLVER_CLOSE_ON_FATAL", True),
            max_tasks=read.integer("CAPSOLVER_MAX_TASKS", 0, minimum=0),
            allow_http=allow_http,
            backoff_base=read.seconds("CAPSOLVER_BACKOFF_BASE", 1.0),
            backoff_max=read.seconds("CAPSOLVER_BACKOFF_MAX", 30.0),
            block_pause=read.seconds("CAPSOLVER_BLOCK_PAUSE", 300.0),
            block_window=read.seconds("CAPSOLVER_BLOCK_WINDOW", 3600.0, allow_zero=True),
            check_balance=read.boolean("CAPSOLVER_CHECK_BALANCE", True),
            logstats_interval=read.seconds("CAPSOLVER_LOGSTATS_INTERVAL", 60.0, allow_zero=True),
            cache_size=read.integer("CAPSOLVER_CACHE_SIZE", 1024, minimum=0),
            url_patterns=read.patterns("CAPSOLVER_URL_PATTERNS"),
            report_wrong=read.boolean("CAPSOLVER_REPORT_WRONG", True),
            max_attempts=read.integer("CAPSOLVER_MAX_ATTEMPTS", 3, minimum=1),
            element_timeout=read.seconds("CAPSOLVER_ELEMENT_TIMEOUT", 10.0),
            poll_interval=read.seconds("CAPSOLVER_POLL_INTERVAL", 1.0),
            max_image_pixels=read.integer(
                "CAPSOLVER_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS, minimum=1
            ),
            cache_ttl=read.seconds("CAPSOLVER_CACHE_TTL", 0.0, allow_zero=True),
            budget_period=read.seconds("CAPSOLVER_BUDGET_PERIOD", 0.0, allow_zero=True),
            fleet_concurrency=read.integer("CAPSOLVER_FLEET_CONCURRENCY", 0, minimum=0),
            redis_url=read.optional("CAPSOLVER_REDIS_URL", check_redis_url),
            fleet=read.optional("CAPSOLVER_FLEET", check_text),
            add_request_slots=read.boolean("CAPSOLVER_ADD_REQUEST_SLOTS", True),
            local_ocr=read.boolean("CAPSOLVER_LOCAL_OCR", False),
            local_min_confidence=check_confidence(
                "CAPSOLVER_LOCAL_MIN_CONFIDENCE",
                read.raw("CAPSOLVER_LOCAL_MIN_CONFIDENCE", DEFAULT_LOCAL_MIN_CONFIDENCE),
            ),
            local_length=read.optional("CAPSOLVER_LOCAL_LENGTH", check_length),
            local_charset=read.optional("CAPSOLVER_LOCAL_CHARSET", check_charset),
            local_workers=read.integer(
                "CAPSOLVER_LOCAL_WORKERS", default_local_workers(), minimum=1
            ),
            learn=read.boolean("CAPSOLVER_LEARN", False),
            learn_min_labels=read.integer(
                "CAPSOLVER_LEARN_MIN_LABELS", DEFAULT_LEARN_MIN_LABELS, minimum=10
            ),
            learn_dir=read.optional("CAPSOLVER_LEARN_DIR", _check_directory),
            learn_max_bytes=read.integer(
                "CAPSOLVER_LEARN_MAX_BYTES", DEFAULT_LEARN_MAX_BYTES, minimum=1_000_000
            ),
        )
        sentinels, cluster = _redis_topology(read, config.redis_url)
        config = dataclasses.replace(config, redis_sentinels=sentinels, redis_cluster=cluster)
        _warn_unknown(settings, read.names)
        return config
