"""The labels a crawl learns from and the shelf its models are published on: on disk (the
default) and in a real Redis (fleet mode, every process's labels in one store), bounded with
the oldest evicted first, and the lease that lets one process of a fleet train a site."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
from test_state import on_reactor, sleep

from scrapy_capsolver_ocr.engines.learnt.labels import (
    CLOUD,
    LOCAL,
    DiskLabelStore,
    LabelFiles,
    LearnKeys,
    RedisLabelStore,
    StoredLabel,
    site_key,
)
from scrapy_capsolver_ocr.engines.learnt.shelf import DiskShelf, ModelFiles, RedisShelf
from scrapy_capsolver_ocr.state.redis_connection import RedisTarget, close_client

SITE_A = "http://127.0.0.1:8001"
SITE_B = "http://127.0.0.1:8002"  # as long as SITE_A: their labels weigh the same


def label(number: int, site: str = SITE_A, size: int = 100, when: float = 0.0) -> StoredLabel:
    image = bytes([number % 256]) * size
    return StoredLabel(image, f"t{number}", site, when or 1_700_000_000.0 + number, CLOUD)


def texts(labels: list[StoredLabel]) -> list[str]:
    return [entry.text for entry in labels]


# One label, as stored


def test_a_label_is_stored_as_its_fields_then_its_image() -> None:
    original = StoredLabel(b"\x89PNG\n\x00bytes", "7FKP2", "https://shop.example:8443", 1.5, LOCAL)
    assert StoredLabel.decode(original.encode()) == original


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json\nimage",
        b'{"text": "a"}\nimage',
        b'{"text":"a","site":"s","when":1,"source":"cloud"}\n',
        b'{"text":"","site":"s","when":1,"source":"cloud"}\nimage',
        b'["list"]\nimage',
    ],
)
def test_what_is_not_a_label_is_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match="not a label"):
        StoredLabel.decode(data)


def test_site_keys_are_file_names() -> None:
    assert site_key(SITE_A) != site_key(SITE_B)
    assert site_key(SITE_B).isalnum() and len(site_key(SITE_B)) == 16


# On disk


def test_the_disk_store_evicts_the_oldest_labels_of_any_site_beyond_its_bound(
    tmp_path: Path,
) -> None:
    size = len(label(0).encode())
    files = LabelFiles(tmp_path, max_bytes=size * 5)
    for number in range(8):
        assert files.add(label(number, SITE_A if number % 2 else SITE_B))

    kept = files.labels(SITE_A) + files.labels(SITE_B)
    assert sorted(texts(kept)) == ["t3", "t4", "t5", "t6", "t7"]
    assert texts(files.labels(SITE_A)) == ["t3", "t5", "t7"]  # oldest first
    assert sum(path.stat().st_size for path in tmp_path.rglob("*.label")) <= size * 5
    assert len(list(tmp_path.rglob("*.label"))) == 5
    assert {entry.site: entry.labels for entry in files.sites()} == {SITE_A: 3, SITE_B: 2}


def test_the_disk_store_outlives_the_crawl_and_keeps_its_order(tmp_path: Path) -> None:
    size = len(label(0).encode())
    first = LabelFiles(tmp_path, max_bytes=size * 4)
    for number in range(4):
        first.add(label(number))
    # The next crawl, with a smaller bound: the oldest go first.
    second = LabelFiles(tmp_path, max_bytes=size * 3)
    assert texts(second.labels(SITE_A)) == ["t1", "t2", "t3"]
    second.add(label(4))
    assert texts(second.labels(SITE_A)) == ["t2", "t3", "t4"]
    assert [entry.source for entry in second.labels(SITE_A)] == [CLOUD] * 3


def test_the_disk_store_counts_the_labels_newer_than_a_training(tmp_path: Path) -> None:
    files = LabelFiles(tmp_path, max_bytes=1_000_000)
    for number in range(6):
        files.add(label(number))
    stored = files.labels(SITE_A)
    assert files.newer(SITE_A, 0.0) == 6
    assert files.newer(SITE_A, stored[3].when) == 2
    assert files.newer(SITE_A, stored[-1].when) == 0
    assert files.newer(SITE_B, 0.0) == 0


def test_a_label_larger_than_the_whole_store_is_not_kept(tmp_path: Path) -> None:
    files = LabelFiles(tmp_path, max_bytes=500)
    assert not files.add(label(1, size=600))
    assert files.add(label(2, size=100))
    assert texts(files.labels(SITE_A)) == ["t2"]


def test_unreadable_label_files_are_skipped(tmp_path: Path) -> None:
    files = LabelFiles(tmp_path, max_bytes=1_000_000)
    files.add(label(1))
    files.add(label(2))
    first = sorted(tmp_path.rglob("*.label"))[0]
    first.write_bytes(b"garbage")
    assert texts(files.labels(SITE_A)) == ["t2"]


@on_reactor
async def test_the_crawl_stores_labels_in_a_thread_of_its_own(tmp_path: Path) -> None:
    from twisted.internet import reactor

    store = DiskLabelStore(tmp_path, 1_000_000, reactor)
    try:
        assert await store.add(label(1))
        assert await store.add(label(2, SITE_B))
        assert texts(await store.labels(SITE_A)) == ["t1"]
        assert await store.newer(SITE_B, 0.0) == 1
        assert {entry.site for entry in await store.sites()} == {SITE_A, SITE_B}
    finally:
        await store.close()


# Models on disk


def test_the_disk_shelf_publishes_newer_versions_only(tmp_path: Path) -> None:
    shelf = ModelFiles(tmp_path / "models")
    for version in (1, 2, 3):
        model = tmp_path / f"trained{version}"
        model.write_bytes(b"model %d" % version)
        assert shelf.publish(SITE_A, model, version)
    stale = tmp_path / "stale"
    stale.write_bytes(b"old")
    assert not shelf.publish(SITE_A, stale, 2)
    assert not stale.exists()
    assert shelf.published() == {SITE_A: 3}
    path = shelf.fetch(SITE_A, 3)
    assert path is not None and path.read_bytes() == b"model 3"
    assert shelf.fetch(SITE_A, 1) is None  # only the newest two are kept
    assert shelf.fetch(SITE_B, 1) is None


def test_the_disk_shelf_remembers_the_last_training(tmp_path: Path) -> None:
    shelf = ModelFiles(tmp_path)
    assert shelf.attempted(SITE_A) == 0.0
    shelf.mark_attempted(SITE_A, 1_700_000_123.25)
    assert ModelFiles(tmp_path).attempted(SITE_A) == 1_700_000_123.25
    assert shelf.published() == {}  # a training without a promoted model publishes nothing


@on_reactor
async def test_one_process_at_a_time_trains_a_site_from_a_disk_shelf(tmp_path: Path) -> None:
    from twisted.internet import reactor

    one, other = DiskShelf(tmp_path, reactor), DiskShelf(tmp_path, reactor)
    try:
        lease = await one.lease(SITE_A)
        assert lease is not None
        assert await other.lease(SITE_A) is None
        other_site = await other.lease(SITE_B)
        assert other_site is not None
        await lease.release()
        again = await other.lease(SITE_A)
        assert again is not None
        await again.release()
        await other_site.release()
    finally:
        await one.close()
        await other.close()


# In the fleet's Redis


@asynccontextmanager
async def two_processes(
    redis_url: str, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[LearnKeys, list[Any], list[RedisShelf]]]:
    """The keys of a new fleet, and two processes of it: a client and a shelf each."""
    from twisted.internet import reactor

    target = RedisTarget(redis_url)
    keys = LearnKeys(f"{target.key_prefix}fleet:test-{uuid.uuid4().hex[:8]}:")
    clients = [target.client(), target.client()]
    shelves = [
        RedisShelf(client, keys, tmp_path / f"process{number}", reactor, **options)
        for number, client in enumerate(clients)
    ]
    try:
        yield keys, clients, shelves
    finally:
        for shelf in shelves:
            await shelf.close()
        for client in clients:
            await close_client(client)


@pytest.mark.asyncio_reactor
@on_reactor
async def test_every_process_of_a_fleet_adds_to_one_bounded_label_store(
    redis_url: str, tmp_path: Path
) -> None:
    size = len(label(0).encode())
    async with two_processes(redis_url, tmp_path) as (keys, clients, _):
        one, other = (RedisLabelStore(client, keys, size * 5) for client in clients)
        for number in range(8):
            store = one if number % 2 else other
            assert await store.add(label(number, SITE_A if number < 6 else SITE_B))
        assert texts(await one.labels(SITE_A)) == ["t3", "t4", "t5"]
        assert texts(await other.labels(SITE_B)) == ["t6", "t7"]
        assert int(await clients[0].get(keys.bytes)) == size * 5
        assert await clients[0].hlen(keys.bodies) == 5
        sites = {entry.site: entry for entry in await other.sites()}
        assert {site: entry.labels for site, entry in sites.items()} == {SITE_A: 3, SITE_B: 2}
        assert sites[SITE_A].bytes == size * 3

        # Counted by Redis's clock, whatever the labels say.
        stored = await one.labels(SITE_A)
        assert await other.newer(SITE_A, stored[0].when) == 2
        assert await other.newer(SITE_A, stored[-1].when) == 0
        assert await other.newer(SITE_A, 0.0) == 3
        assert not await one.add(label(9, size=size * 6))


@pytest.mark.asyncio_reactor
@on_reactor
async def test_the_fleet_keys_share_the_fleets_prefix_and_hash_tag(redis_url: str) -> None:
    plain = LearnKeys(f"{RedisTarget(redis_url).key_prefix}fleet:f:")
    tagged = LearnKeys(f"{RedisTarget(redis_url, cluster=True).key_prefix}fleet:f:")
    assert plain.bodies == "capsolver:fleet:f:learn:labels"
    names = [
        tagged.bodies,
        tagged.order,
        tagged.bytes,
        tagged.sites,
        tagged.site("k"),
        tagged.models,
        tagged.versions,
        tagged.attempts,
        tagged.lease("k"),
    ]
    assert all(name.startswith("{capsolver}:fleet:f:learn:") for name in names)


@pytest.mark.asyncio_reactor
@on_reactor
async def test_a_model_published_in_redis_reaches_every_process(
    redis_url: str, tmp_path: Path
) -> None:
    async with two_processes(redis_url, tmp_path) as (_, _, (trainer, reader)):
        assert await reader.published() == {}
        for version in (1, 2):
            model = tmp_path / f"trained{version}"
            model.write_bytes(b"model %d" % version)
            assert await trainer.publish(SITE_A, model, version)
            assert not model.exists()
        stale = tmp_path / "stale"
        stale.write_bytes(b"stale")
        assert not await trainer.publish(SITE_A, stale, 1)
        assert await reader.published() == {SITE_A: 2}
        fetched = await reader.fetch(SITE_A, 2)
        assert fetched is not None and fetched.read_bytes() == b"model 2"
        assert fetched.is_relative_to(tmp_path / "process1")
        assert await reader.fetch(SITE_A, 1) is None  # replaced by version 2

        await trainer.mark_attempted(SITE_A, 1_700_000_000.5)
        assert await reader.attempted(SITE_A) == 1_700_000_000.5
        assert await reader.attempted(SITE_B) == 0.0


@pytest.mark.asyncio_reactor
@on_reactor
async def test_one_process_of_a_fleet_trains_a_site_under_a_renewed_lease(
    redis_url: str, tmp_path: Path
) -> None:
    # A short lease, renewed three times a lifetime: held for longer than it lives.
    async with two_processes(redis_url, tmp_path, lease_seconds=1.0) as (keys, clients, shelves):
        one, other = shelves
        lease = await one.lease(SITE_A)
        assert lease is not None
        assert await other.lease(SITE_A) is None
        await sleep(2.5)
        assert await other.lease(SITE_A) is None
        site_b = await other.lease(SITE_B)
        assert site_b is not None
        await lease.release()
        taken = await other.lease(SITE_A)
        assert taken is not None
        await taken.release()
        await site_b.release()
        assert not await clients[0].exists(keys.lease(site_key(SITE_A)))


@pytest.mark.asyncio_reactor
@on_reactor
async def test_the_lease_of_a_process_that_died_expires(redis_url: str, tmp_path: Path) -> None:
    async with two_processes(redis_url, tmp_path, lease_seconds=0.5) as (keys, _, (shelf, _)):
        # What a process killed while training leaves: the key, and nobody renewing it.
        raw = redis.Redis.from_url(redis_url)
        raw.set(keys.lease(site_key(SITE_A)), "gone", px=500)
        raw.close()
        assert await shelf.lease(SITE_A) is None
        await sleep(1.0)
        lease: Any = await shelf.lease(SITE_A)
        assert lease is not None
        await lease.release()
