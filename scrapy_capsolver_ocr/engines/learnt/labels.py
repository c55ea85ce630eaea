"""Labels: the captchas a site accepted the answer to, kept to train that site's model on.

A label is the image, the answer the site accepted, the site it belongs to (the site format
of :func:`~scrapy_capsolver_ocr.engines.local.formats.site_of`), when, and who read it
(``cloud`` or ``local``). Refused answers never become labels. Labels are pictures of the
user's target sites: they stay on this machine (or in the fleet's own Redis) and are never
logged.

:class:`LabelStore` is where they are kept, bounded in bytes with the oldest evicted first:
:class:`DiskLabelStore` (one file per label under the learn directory, every file operation
in a thread of its own) and :class:`RedisLabelStore` (fleet mode: every process's labels
reach the one trainer; one script adds and evicts, so the bound holds for the whole fleet).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ...state.redis_scripts import Script
from ..local.workers import WorkerThreads

logger = logging.getLogger(__name__)

#: Who read the answer a label holds.
CLOUD = "cloud"
LOCAL = "local"
#: A label's file (and a Redis value): one JSON line of its fields, then the image's bytes.
LABEL_SUFFIX = ".label"
#: Labels fetched from Redis at a time, so that a big site never holds the reactor long.
FETCH_CHUNK = 200


@dataclass(frozen=True)
class StoredLabel:
    """One accepted answer and its image."""

    #: Left out of the repr: labels are pictures of the user's target sites, never logged.
    image: bytes = dataclasses.field(repr=False)
    text: str = dataclasses.field(repr=False)
    site: str
    #: Seconds since the epoch when it was stored.
    when: float
    source: str

    def encode(self) -> bytes:
        header = {"text": self.text, "site": self.site, "when": self.when, "source": self.source}
        return json.dumps(header, separators=(",", ":")).encode() + b"\n" + self.image

    @classmethod
    def decode(cls, data: bytes) -> StoredLabel:
        """The label ``data`` holds; ``ValueError`` when it is not one."""
        line, newline, image = data.partition(b"\n")
        try:
            header = json.loads(line)
            label = cls(
                image=image,
                text=str(header["text"]),
                site=str(header["site"]),
                when=float(header["when"]),
                source=str(header["source"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"not a label: {exc}") from None
        if not newline or not image or not label.text:
            raise ValueError("not a label: no image or no text")
        return label


@dataclass(frozen=True)
class SiteLabels:
    """What the store holds of one site."""

    site: str
    labels: int
    bytes: int
    newest: float


def site_key(site: str) -> str:
    """A site as a name for files and keys: its URL may hold any character."""
    return hashlib.sha256(site.encode()).hexdigest()[:16]


class LabelStore(Protocol):
    """Where labels are kept, oldest evicted first beyond ``max_bytes``."""

    max_bytes: int

    async def add(self, label: StoredLabel) -> bool:
        """Keep ``label``; False when it is larger than the whole store may hold."""

    async def labels(self, site: str) -> list[StoredLabel]:
        """The labels of ``site``, oldest first."""

    async def newer(self, site: str, since: float) -> int:
        """How many labels of ``site`` were stored after ``since``."""

    async def sites(self) -> list[SiteLabels]:
        """Every site the store holds labels of."""

    async def close(self) -> None:
        """Let the writes in progress end (the crawl has ended)."""


# On disk


@dataclass(frozen=True)
class _Entry:
    when: float
    key: str
    path: Path
    size: int


class DiskLabelStore:
    """:class:`LabelFiles` for a crawl: every file operation in one thread of its own, in
    order, so the reactor never waits for the disk."""

    def __init__(self, directory: Path, max_bytes: int, reactor: Any) -> None:
        self.files = LabelFiles(directory, max_bytes)
        self.max_bytes = max_bytes
        self._thread = WorkerThreads(1, reactor, name="capsolver-learn-labels")

    def __repr__(self) -> str:
        return f"DiskLabelStore({str(self.files.directory)!r}, max_bytes={self.max_bytes})"

    async def add(self, label: StoredLabel) -> bool:
        return await self._thread.run(self.files.add, label)

    async def labels(self, site: str) -> list[StoredLabel]:
        return await self._thread.run(self.files.labels, site)

    async def newer(self, site: str, since: float) -> int:
        return await self._thread.run(self.files.newer, site, since)

    async def sites(self) -> list[SiteLabels]:
        return await self._thread.run(self.files.sites)

    async def close(self) -> None:
        await self._thread.stop()


class LabelFiles:
    """Labels as files under ``directory``: ``<site key>/<time>-<id>.label``, and the site's
    URL in ``<site key>/site``. The index of what is stored is built from the files at first
    use (labels outlive the crawl). Blocking, and not thread-safe: one thread calls it."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.directory = directory
        self.max_bytes = max_bytes
        self._order: deque[_Entry] = deque()
        self._by_site: dict[str, deque[_Entry]] = {}
        self._sites: dict[str, str] = {}
        self._bytes = 0
        self._indexed = False

    def sites(self) -> list[SiteLabels]:
        self._index()
        return [
            SiteLabels(
                self._sites[key],
                len(entries),
                sum(entry.size for entry in entries),
                entries[-1].when,
            )
            for key, entries in sorted(self._by_site.items())
            if entries and key in self._sites
        ]

    def _index(self) -> None:
        if self._indexed:
            return
        self._indexed = True
        found: list[_Entry] = []
        if self.directory.is_dir():
            for folder in self.directory.iterdir():
                site_file = folder / "site"
                if not site_file.is_file():
                    continue
                with contextlib.suppress(OSError, UnicodeDecodeError):
                    self._sites[folder.name] = site_file.read_text("utf-8")
                for path in folder.glob(f"*{LABEL_SUFFIX}"):
                    with contextlib.suppress(OSError, ValueError):
                        when = int(path.name.partition("-")[0]) / 1e9
                        found.append(_Entry(when, folder.name, path, path.stat().st_size))
        for entry in sorted(found, key=lambda entry: (entry.when, entry.path.name)):
            self._remember(entry)
        self._evict()

    def _remember(self, entry: _Entry) -> None:
        self._order.append(entry)
        self._by_site.setdefault(entry.key, deque()).append(entry)
        self._bytes += entry.size

    def _evict(self) -> None:
        while self._bytes > self.max_bytes and self._order:
            oldest = self._order.popleft()
            self._by_site[oldest.key].popleft()
            self._bytes -= oldest.size
            with contextlib.suppress(FileNotFoundError):
                oldest.path.unlink()

    def add(self, label: StoredLabel) -> bool:
        self._index()
        data = label.encode()
        if len(data) > self.max_bytes:
            return False
        key = site_key(label.site)
        folder = self.directory / key
        if key not in self._sites:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "site").write_text(label.site, "utf-8")
            self._sites[key] = label.site
        # Named by time first: the index is rebuilt in that order after a restart.
        when_ns = int(label.when * 1e9)
        if self._order:
            when_ns = max(when_ns, round(self._order[-1].when * 1e9) + 1)
        data = dataclasses.replace(label, when=when_ns / 1e9).encode()
        path = folder / f"{when_ns:020d}-{uuid.uuid4().hex[:8]}{LABEL_SUFFIX}"
        partial = path.with_suffix(".partial")
        try:
            partial.write_bytes(data)
            os.replace(partial, path)
        except OSError:
            with contextlib.suppress(OSError):
                partial.unlink()
            raise
        self._remember(_Entry(when_ns / 1e9, key, path, len(data)))
        self._evict()
        return True

    def labels(self, site: str) -> list[StoredLabel]:
        self._index()
        labels = []
        for entry in list(self._by_site.get(site_key(site), ())):
            try:
                labels.append(StoredLabel.decode(entry.path.read_bytes()))
            except (OSError, ValueError) as exc:
                logger.debug("Skipped a stored label of %s: %s", site, exc)
        return labels

    def newer(self, site: str, since: float) -> int:
        self._index()
        entries = self._by_site.get(site_key(site), deque())
        count = 0
        for entry in reversed(entries):
            if entry.when <= since:
                break
            count += 1
        return count


# In the fleet's Redis

#: KEYS: bodies hash, order zset, bytes counter, site's zset, sites hash.
#: ARGV: member, label bytes, max bytes, site key, site, site zset prefix.
#: Returns the score (microseconds, Redis's clock) it was stored at, or 0 when too large.
ADD_LABEL = Script(
    "learn_add_label",
    """
local size = string.len(ARGV[2])
local max = tonumber(ARGV[3])
if size > max then return 0 end
local now = now_us()
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now, ARGV[1])
redis.call('ZADD', KEYS[4], now, ARGV[1])
redis.call('HSET', KEYS[5], ARGV[4], ARGV[5])
local total = redis.call('INCRBY', KEYS[3], size)
while total > max do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, 0)[1]
  if not oldest then break end
  local body = redis.call('HGET', KEYS[1], oldest)
  redis.call('HDEL', KEYS[1], oldest)
  redis.call('ZREM', KEYS[2], oldest)
  local bar = string.find(oldest, '|', 1, true)
  redis.call('ZREM', ARGV[6] .. string.sub(oldest, 1, bar - 1), oldest)
  if body then total = redis.call('DECRBY', KEYS[3], string.len(body)) end
end
return now
""",
)


class LearnKeys:
    """The keys of learning in a fleet, under the fleet's own prefix (and hash tag)."""

    def __init__(self, fleet_prefix: str) -> None:
        self.prefix = f"{fleet_prefix}learn:"

    @property
    def bodies(self) -> str:
        return f"{self.prefix}labels"

    @property
    def order(self) -> str:
        return f"{self.prefix}label-order"

    @property
    def bytes(self) -> str:
        return f"{self.prefix}label-bytes"

    @property
    def sites(self) -> str:
        return f"{self.prefix}sites"

    @property
    def site_prefix(self) -> str:
        return f"{self.prefix}site:"

    def site(self, key: str) -> str:
        return f"{self.site_prefix}{key}"

    @property
    def models(self) -> str:
        return f"{self.prefix}models"

    @property
    def versions(self) -> str:
        return f"{self.prefix}model-versions"

    @property
    def attempts(self) -> str:
        return f"{self.prefix}attempts"

    def lease(self, key: str) -> str:
        return f"{self.prefix}lease:{key}"


class RedisLabelStore:
    """Labels in the fleet's Redis: each process adds its own, and whichever process trains
    a site reads them all. ``client`` is a ``redis.asyncio`` client of the fleet's Redis."""

    def __init__(self, client: Any, keys: LearnKeys, max_bytes: int) -> None:
        self._client = client
        self._keys = keys
        self._add_script = ADD_LABEL.bind(client)
        self.max_bytes = max_bytes

    def __repr__(self) -> str:
        return f"RedisLabelStore({self._keys.prefix!r}, max_bytes={self.max_bytes})"

    async def add(self, label: StoredLabel) -> bool:
        key = site_key(label.site)
        stored = await self._add_script(
            [
                self._keys.bodies,
                self._keys.order,
                self._keys.bytes,
                self._keys.site(key),
                self._keys.sites,
            ],
            [
                f"{key}|{uuid.uuid4().hex}",
                label.encode(),
                self.max_bytes,
                key,
                label.site,
                self._keys.site_prefix,
            ],
        )
        return bool(stored)

    async def labels(self, site: str) -> list[StoredLabel]:
        members = await self._client.zrange(self._keys.site(site_key(site)), 0, -1, withscores=True)
        labels = []
        for start in range(0, len(members), FETCH_CHUNK):
            chunk = members[start : start + FETCH_CHUNK]
            bodies = await self._client.hmget(self._keys.bodies, [member for member, _ in chunk])
            for (_, score), data in zip(chunk, bodies, strict=True):
                if data is None:
                    continue  # evicted meanwhile
                try:
                    label = StoredLabel.decode(data)
                except ValueError as exc:
                    logger.debug("Skipped a stored label of %s: %s", site, exc)
                    continue
                # Redis's clock, the one newer() counts by: the fleet's machines may differ.
                labels.append(dataclasses.replace(label, when=score / 1e6))
        return labels

    async def newer(self, site: str, since: float) -> int:
        since_us = round(since * 1e6)  # the score it came from, whatever the float did
        key = self._keys.site(site_key(site))
        return int(await self._client.zcount(key, f"({since_us}", "+inf"))

    async def sites(self) -> list[SiteLabels]:
        names = await self._client.hgetall(self._keys.sites)
        found = []
        for key, site in sorted(names.items()):
            site_labels = self._keys.site(decoded(key))
            members = await self._client.zrange(site_labels, 0, -1, withscores=True)
            if not members:
                continue
            size = 0
            for start in range(0, len(members), FETCH_CHUNK):
                chunk = [member for member, _ in members[start : start + FETCH_CHUNK]]
                size += sum(await _field_lengths(self._client, self._keys.bodies, chunk))
            found.append(SiteLabels(decoded(site), len(members), size, members[-1][1] / 1e6))
        return found

    async def close(self) -> None:
        """Nothing of its own to let go: the client is the learning's, closed with it."""


async def _field_lengths(client: Any, key: str, fields: Iterable[Any]) -> list[int]:
    pipe = client.pipeline(transaction=False)
    for field in fields:
        pipe.hstrlen(key, field)
    return [int(n) for n in await pipe.execute()]


def decoded(value: bytes | str) -> str:
    """A Redis reply as text."""
    return value.decode() if isinstance(value, bytes) else value


def now() -> float:
    """When a label is stored (seconds since the epoch)."""
    return time.time()
