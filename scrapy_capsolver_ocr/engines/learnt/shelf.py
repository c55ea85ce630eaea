"""Where promoted models are published, and who may train a site: the :class:`ModelShelf`.

Every process of a crawl (or of a fleet) looks at the shelf every few seconds and loads a
site's newer model version without a restart; the process that trained it publishes it.
Training a site is leased: one process at a time trains a site, so a fleet does not train
the same model five times over.

:class:`DiskShelf` keeps ``<site key>/model-v<version>.onnx`` files under the learn directory
(the versioned folder ``learn train -o`` and ``learn eval`` read),
its lease an exclusive lock on a file (processes sharing the directory on one machine).
:class:`RedisShelf` keeps each site's newest model (a megabyte or so) in the fleet's Redis,
its lease a key with an expiry that the trainer renews; models fetched from it are written
under the learn directory, since the reader loads a file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from scrapy.utils.defer import deferred_from_coro
from twisted.internet.task import LoopingCall

from ...state.redis_scripts import Script
from ..local.workers import WorkerThreads
from .labels import LearnKeys, decoded, site_key

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: the lease holds within one process only
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

#: A site's model versions, named as ``learn train -o FOLDER`` names them.
_VERSION = re.compile(r"^model-v(\d+)\.onnx$")
#: Versions of a site's model kept on disk: the newest and the one before (a process may be
#: loading it while a newer one is published).
KEEP_VERSIONS = 2
#: Seconds a fleet's training lease lives unless renewed (three times a lifetime).
LEASE_SECONDS = 60.0


@dataclass(frozen=True)
class Published:
    """A site's newest model on the shelf."""

    site: str
    version: int


class Lease(Protocol):
    """The right to train one site, held until :meth:`release`."""

    async def release(self) -> None: ...


class ModelShelf(Protocol):
    async def published(self) -> dict[str, int]:
        """Each site's newest published model version."""

    async def fetch(self, site: str, version: int) -> Path | None:
        """A file of ``site``'s model ``version`` on this machine; None when it is gone."""

    async def publish(self, site: str, model: Path, version: int) -> bool:
        """Publish ``model`` (a file the trainer wrote) as ``site``'s ``version``; False
        when a newer one was published meanwhile."""

    async def attempted(self, site: str) -> float:
        """The time of the newest label the last training of ``site`` saw (0: none)."""

    async def mark_attempted(self, site: str, until: float) -> None:
        """A training of ``site`` saw the labels up to ``until``: the next waits for new ones."""

    async def lease(self, site: str) -> Lease | None:
        """The right to train ``site`` now, or None when another process has it."""

    async def close(self) -> None:
        """Let the file operations in progress end (the crawl has ended)."""


def version_file(folder: Path, version: int) -> Path:
    return folder / f"model-v{version}.onnx"


def versions_in(folder: Path) -> list[int]:
    """The model versions in ``folder``, oldest first."""
    found = []
    with contextlib.suppress(OSError):
        for path in folder.iterdir():
            match = _VERSION.match(path.name)
            if match:
                found.append(int(match.group(1)))
    return sorted(found)


class _FileLease:
    def __init__(self, handle: IO[bytes]) -> None:
        self._handle = handle

    async def release(self) -> None:
        if fcntl is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._handle.close()


class DiskShelf:
    """:class:`ModelFiles` for a crawl, every file operation in a thread of its own."""

    def __init__(self, directory: Path, reactor: Any) -> None:
        self.files = ModelFiles(directory)
        self._thread = WorkerThreads(1, reactor, name="capsolver-learn-models")

    def __repr__(self) -> str:
        return f"DiskShelf({str(self.files.directory)!r})"

    async def published(self) -> dict[str, int]:
        return await self._thread.run(self.files.published)

    async def fetch(self, site: str, version: int) -> Path | None:
        return await self._thread.run(self.files.fetch, site, version)

    async def publish(self, site: str, model: Path, version: int) -> bool:
        return await self._thread.run(self.files.publish, site, model, version)

    async def attempted(self, site: str) -> float:
        return await self._thread.run(self.files.attempted, site)

    async def mark_attempted(self, site: str, until: float) -> None:
        await self._thread.run(self.files.mark_attempted, site, until)

    async def lease(self, site: str) -> Lease | None:
        return await self._thread.run(self.files.lease, site)

    async def close(self) -> None:
        await self._thread.stop()


class ModelFiles:
    """Models as files under ``directory``, one folder per site: ``model-v<version>.onnx``, the
    site's URL in ``site``, the last training's newest label in ``attempted``. Blocking."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def folder(self, site: str) -> Path:
        return self.directory / site_key(site)

    def _site_folder(self, site: str) -> Path:
        folder = self.folder(site)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "site").write_text(site, "utf-8")
        return folder

    def published(self) -> dict[str, int]:
        found: dict[str, int] = {}
        if not self.directory.is_dir():
            return found
        for folder in self.directory.iterdir():
            versions = versions_in(folder)
            if not versions:
                continue
            with contextlib.suppress(OSError, UnicodeDecodeError):
                found[(folder / "site").read_text("utf-8")] = versions[-1]
        return found

    def fetch(self, site: str, version: int) -> Path | None:
        path = version_file(self.folder(site), version)
        return path if path.is_file() else None

    def publish(self, site: str, model: Path, version: int) -> bool:
        folder = self._site_folder(site)
        versions = versions_in(folder)
        if versions and versions[-1] >= version:
            model.unlink(missing_ok=True)
            return False
        os.replace(model, version_file(folder, version))
        for old in versions[: max(0, len(versions) + 1 - KEEP_VERSIONS)]:
            version_file(folder, old).unlink(missing_ok=True)
        return True

    def attempted(self, site: str) -> float:
        try:
            return float((self.folder(site) / "attempted").read_text("utf-8"))
        except (OSError, ValueError):
            return 0.0

    def mark_attempted(self, site: str, until: float) -> None:
        (self._site_folder(site) / "attempted").write_text(repr(until), "utf-8")

    def lease(self, site: str) -> Lease | None:
        handle = (self._site_folder(site) / "lease").open("ab")
        if fcntl is not None:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process on this machine trains the site
                handle.close()
                return None
        return _FileLease(handle)


# In the fleet's Redis

#: KEYS: models hash, versions hash, sites hash. ARGV: site key, version, model, site.
PUBLISH = Script(
    "learn_publish",
    """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[1]) or '0')
if current >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[4])
return 1
""",
)
#: KEYS: lease. ARGV: owner, milliseconds. Extends the lease if ``owner`` holds it.
RENEW = Script(
    "learn_renew",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
""",
)
#: KEYS: lease. ARGV: owner. Ends the lease if ``owner`` holds it.
RELEASE = Script(
    "learn_release",
    """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
""",
)


class _RedisLease:
    """A training lease in Redis, renewed while held: a process that dies lets it expire."""

    def __init__(self, shelf: RedisShelf, key: str, owner: str) -> None:
        self._shelf = shelf
        self._key = key
        self._owner = owner
        self._renewal = LoopingCall(lambda: deferred_from_coro(self._renew()))
        self._renewal.clock = shelf.reactor
        self._renewal.start(shelf.lease_seconds / 3, now=False)

    async def _renew(self) -> None:
        try:
            renewed = await self._shelf.renew(self._key, self._owner)
        except Exception as exc:  # Redis is away: the next renewal may do
            logger.debug("Could not renew a training lease: %s", exc)
            return
        if not renewed:
            logger.warning("A training lease expired before its training ended")

    async def release(self) -> None:
        if self._renewal.running:
            self._renewal.stop()
        await self._shelf.release(self._key, self._owner)


class RedisShelf:
    """Models in the fleet's Redis; the files fetched from it go under ``cache``."""

    def __init__(
        self,
        client: Any,
        keys: LearnKeys,
        cache: Path,
        reactor: Any,
        *,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self._client = client
        self.lease_seconds = lease_seconds
        self._keys = keys
        self._cache = cache
        self.reactor = reactor
        self._thread = WorkerThreads(1, reactor, name="capsolver-learn-models")
        self._publish = PUBLISH.bind(client)
        self._renew = RENEW.bind(client)
        self._release = RELEASE.bind(client)
        self._owner = uuid.uuid4().hex

    def __repr__(self) -> str:
        return f"RedisShelf({self._keys.prefix!r})"

    async def published(self) -> dict[str, int]:
        versions = await self._client.hgetall(self._keys.versions)
        if not versions:
            return {}
        sites = await self._client.hgetall(self._keys.sites)
        return {
            decoded(sites[key]): int(version) for key, version in versions.items() if key in sites
        }

    async def fetch(self, site: str, version: int) -> Path | None:
        key = site_key(site)
        path = version_file(self._cache / key, version)
        if await self._thread.run(path.is_file):
            return path
        pipe = self._client.pipeline(transaction=False)
        pipe.hget(self._keys.versions, key)
        pipe.hget(self._keys.models, key)
        stored, model = await pipe.execute()
        if model is None or stored is None or int(stored) != version:
            return None  # replaced meanwhile: the next look finds the newer one
        await self._thread.run(_write_file, path, model)
        return path

    async def publish(self, site: str, model: Path, version: int) -> bool:
        data = await self._thread.run(model.read_bytes)
        key = site_key(site)
        published = await self._publish(
            [self._keys.models, self._keys.versions, self._keys.sites], [key, version, data, site]
        )
        await self._thread.run(model.unlink, True)
        return bool(published)

    async def attempted(self, site: str) -> float:
        value = await self._client.hget(self._keys.attempts, site_key(site))
        return float(value) if value is not None else 0.0

    async def mark_attempted(self, site: str, until: float) -> None:
        await self._client.hset(self._keys.attempts, site_key(site), repr(until))

    async def lease(self, site: str) -> Lease | None:
        key = self._keys.lease(site_key(site))
        owner = f"{self._owner}:{uuid.uuid4().hex[:8]}"
        taken = await self._client.set(key, owner, nx=True, px=int(self.lease_seconds * 1000))
        return _RedisLease(self, key, owner) if taken else None

    async def renew(self, key: str, owner: str) -> bool:
        return bool(await self._renew([key], [owner, int(self.lease_seconds * 1000)]))

    async def release(self, key: str, owner: str) -> None:
        await self._release([key], [owner])

    async def close(self) -> None:
        await self._thread.stop()


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{path.name}.{uuid.uuid4().hex[:8]}.partial")
    partial.write_bytes(data)
    os.replace(partial, path)
    for version in versions_in(path.parent)[:-KEEP_VERSIONS]:
        version_file(path.parent, version).unlink(missing_ok=True)
