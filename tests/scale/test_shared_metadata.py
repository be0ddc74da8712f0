"""Metadata through the shared store: ZIP indexes and catalog listings, against a real Redis.

In-process tests run two or three stores (as separate mounts would have) over one
redis-server and count what reached the origin: tail probes of a package held in memory, and
the emulator's request log for listings. The cluster test runs four real mounts and counts the
emulator's storage GETs: one ZIP-directory probe and one COG-header fetch for all of them.
"""

from __future__ import annotations

import io
import json
import math
import zipfile
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
import trio

from pixxelfs.api.client import PixxelClient
from pixxelfs.catalog.service import CatalogService
from pixxelfs.catalog.tree import CatalogTree
from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator
from pixxelfs.remote.package import read_zip_index
from pixxelfs.remote.shared_cache import SharedStore, seal
from pixxelfs.remote.storage import ObjectInfo
from pixxelfs.remote.zipindex import ZipIndex
from tests.scale.cluster import cluster, gets_covering, in_parallel, member_data_offset
from tests.scale.redis_server import RedisServer
from tests.scale.test_shared_cache import stores

LISTING_ROUTES = ("projects.list", "order_items.list", "catalogs.search")


def zip_bytes(version: int, members: int = 3) -> bytes:
    """A small package whose members (and so its index) differ per ``version``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for n in range(members + version):
            zf.writestr(f"v{version}/band{n}.bin", bytes([version, n]) * 1000)
    return buffer.getvalue()


class Origin:
    """One package at a fake storage: replaceable, counting tail probes and version checks."""

    def __init__(self, data: bytes, etag: str = '"v1"'):
        self.data, self.etag = data, etag
        self.probes = 0
        self.checks = 0

    def replace(self, data: bytes, etag: str) -> None:
        self.data, self.etag = data, etag

    @property
    def info(self) -> ObjectInfo:
        return ObjectInfo(len(self.data), self.etag)

    async def current(self) -> ObjectInfo:
        """The 1-byte version probe a mount makes before trusting a shared index."""
        self.checks += 1
        return self.info


class Source:
    """The part of ``PackageSource`` that reading a ZIP index uses, over an :class:`Origin`."""

    catalog_id = "catalog-1"

    def __init__(self, origin: Origin):
        self._origin = origin
        self.info: ObjectInfo | None = None

    async def size_and_etag(self) -> ObjectInfo:
        if self.info is None:
            self._origin.probes += 1
            self.info = self._origin.info
        return self.info

    async def read_tail(self, length: int) -> bytes:
        return self._origin.data[-length:]

    async def read_range(self, start: int, end: int) -> bytes:
        return self._origin.data[start:end]


async def index_of(data: bytes) -> ZipIndex:
    return await read_zip_index(Source(Origin(data)))  # type: ignore[arg-type]


async def load_index(store: SharedStore, origin: Origin) -> tuple[ObjectInfo, ZipIndex]:
    source = Source(origin)
    saved = store.package_index(source, "entry-v1", None, origin.current)  # type: ignore[arg-type]
    assert saved is not None
    found = await saved.load()
    assert found is not None
    return found


async def raw_keys(store: SharedStore, pattern: str) -> list[bytes]:
    client = store._nodes[0].client
    return [k for k in await client.keys(pattern) if not k.endswith(b":lease")]


async def overwrite(store: SharedStore, pattern: str, make: Callable[[str], bytes]) -> int:
    """Replace every value whose key matches ``pattern`` with ``make(key)``."""
    keys = await raw_keys(store, pattern)
    for key in keys:
        await store._nodes[0].client.set(key, make(key.decode()))
    return len(keys)


GARBAGE: list[Callable[[str], bytes]] = [
    lambda key: b"\x00garbage" * 40,  # not a sealed value at all
    lambda key: seal(key, b"{not json"),  # sealed for the key, but not a value we write
    lambda key: seal(key, json.dumps({"members": [["x"]]}).encode()),  # JSON of the wrong shape
]


# --- ZIP indexes ---------------------------------------------------------------------------------


async def test_two_stores_probe_a_package_index_once(redis_server: RedisServer):
    origin = Origin(zip_bytes(1))
    expected = (origin.info, await index_of(origin.data))
    async with stores([redis_server.url], 2) as (a, b):
        found: list[tuple[ObjectInfo, ZipIndex]] = []
        async with trio.open_nursery() as nursery:
            for store in (a, b):
                nursery.start_soon(lambda s=store: _append(found, load_index(s, origin)))
        assert found == [expected, expected]
        assert origin.probes == 1  # the lease holder's tail probe; the other used its index
        assert origin.checks == 1  # ... after checking the version with a 1-byte probe
        stats = [s.stats()["zip_indexes"] for s in (a, b)]
        assert sum(s["origin_fetches"] for s in stats) == 1
        assert sum(s["hits"] + s["wait_hits"] for s in stats) == 1


async def _append(into: list, call: Awaitable) -> None:
    into.append(await call)


@pytest.mark.parametrize("make", GARBAGE, ids=["raw", "sealed-not-json", "wrong-shape"])
async def test_garbage_under_an_index_key_is_never_used(redis_server: RedisServer, make):
    origin = Origin(zip_bytes(1))
    expected = (origin.info, await index_of(origin.data))
    async with stores([redis_server.url], 3) as (a, b, c):
        assert await load_index(a, origin) == expected
        assert await overwrite(a, "pxfs:v1:zip:*", make) == 1
        assert await load_index(b, origin) == expected
        assert origin.probes == 2  # b probed again: the value was garbage
        assert b.stats()["zip_indexes"]["corrupt"] == 1
        assert await load_index(c, origin) == expected  # b published a good value again
        assert origin.probes == 2


async def test_a_replaced_package_replaces_its_shared_index(redis_server: RedisServer):
    origin = Origin(zip_bytes(1))
    async with stores([redis_server.url], 3) as (a, b, c):
        old = await load_index(a, origin)
        origin.replace(zip_bytes(2), '"v2"')  # same catalog entry, new package at the origin
        expected = (origin.info, await index_of(origin.data))
        assert expected != old
        assert await load_index(b, origin) == expected  # the 1-byte check saw the new ETag
        assert origin.probes == 2
        assert await load_index(c, origin) == expected
        assert origin.probes == 2  # b published the new index


async def test_a_package_without_etag_is_not_shared(redis_server: RedisServer):
    origin = Origin(zip_bytes(1), etag=None)  # type: ignore[arg-type]
    async with stores([redis_server.url], 2) as (a, b):
        await load_index(a, origin)
        await load_index(b, origin)
        assert origin.probes == 2
        assert await raw_keys(a, "pxfs:v1:zip:*") == []


# --- catalog listings ----------------------------------------------------------------------------


def listing_requests(emulator: Emulator) -> dict[str, int]:
    requests = emulator.stats()["requests"]
    return {route: requests.get(route, 0) for route in LISTING_ROUTES}


async def requests_now(emulator: Emulator) -> dict[str, int]:
    """:func:`listing_requests` from a trio task (the emulator's calls block)."""
    return await trio.to_thread.run_sync(listing_requests, emulator)


async def reset(emulator: Emulator) -> None:
    await trio.to_thread.run_sync(emulator.reset_stats)


async def one_listing(emulator: Emulator) -> dict[str, int]:
    """The listing requests of one catalog load without a shared store."""
    return (await listed(emulator))[0]


async def listed(emulator: Emulator) -> tuple[dict[str, int], CatalogTree]:
    """One catalog load without a shared store: its listing requests, and the tree."""
    await reset(emulator)
    async with PixxelClient(emulator.base_url, emulator.api_key) as api:
        tree = await CatalogService(api, ttl=60).tree()
    return await requests_now(emulator), tree


async def shared_trees(emulator: Emulator, shared: list[SharedStore], ttl: float = 60) -> list:
    """Catalog trees of one service per store, built at the same time."""
    trees: list = []
    async with (
        PixxelClient(emulator.base_url, emulator.api_key) as api,
        trio.open_nursery() as nursery,
    ):
        for store in shared:
            service = CatalogService(api, ttl=ttl, share=store.listings(ttl))
            nursery.start_soon(lambda s=service: _append(trees, s.tree()))
    return trees


def tree_paths(tree) -> list[str]:
    return [path for path, _node in tree.nodes()]


async def test_stores_started_together_page_through_the_listings_once(
    emulator: Emulator, redis_server: RedisServer
):
    pages = await one_listing(emulator)
    async with stores([redis_server.url], 3) as shared:
        await reset(emulator)
        trees = await shared_trees(emulator, shared)
        assert await requests_now(emulator) == pages
        assert tree_paths(trees[0]) == tree_paths(trees[1]) == tree_paths(trees[2])
        assert trees[0].scene_count == len(await trio.to_thread.run_sync(emulator.catalog_ids))
        (key,) = await raw_keys(shared[0], "pxfs:v1:catalog:*")
        ttl_ms = await shared[0]._nodes[0].client.pttl(key)
        assert 0 < ttl_ms <= 60_000
        value = await shared[0]._nodes[0].client.get(key)
        assert emulator.api_key.encode() not in value and b"signed" not in value


async def test_shared_listings_live_no_longer_than_the_metadata_ttl(
    emulator: Emulator, redis_server: RedisServer
):
    pages = await one_listing(emulator)
    async with stores([redis_server.url], 2) as shared:
        await reset(emulator)
        await shared_trees(emulator, shared[:1], ttl=0.3)
        (key,) = await raw_keys(shared[0], "pxfs:v1:catalog:*")
        assert 0 < await shared[0]._nodes[0].client.pttl(key) <= 300
        with trio.fail_after(5):  # the TTL is the point: wait for Redis to expire it
            while await raw_keys(shared[0], "pxfs:v1:catalog:*"):  # noqa: ASYNC110
                await trio.sleep(0.05)
        await shared_trees(emulator, shared[1:], ttl=0.3)
        assert await requests_now(emulator) == {k: 2 * v for k, v in pages.items()}
        assert shared[0].listings(0) is None  # without a metadata TTL nothing is shared


@pytest.mark.parametrize("make", GARBAGE[:2], ids=["raw", "sealed-not-json"])
async def test_garbage_under_the_catalog_key_is_never_used(
    emulator: Emulator, redis_server: RedisServer, make
):
    pages = await one_listing(emulator)
    async with stores([redis_server.url], 2) as shared:
        await reset(emulator)
        (first,) = await shared_trees(emulator, shared[:1])
        assert await overwrite(shared[0], "pxfs:v1:catalog:*", make) == 1
        (second,) = await shared_trees(emulator, shared[1:])
        assert tree_paths(second) == tree_paths(first)
        assert await requests_now(emulator) == {k: 2 * v for k, v in pages.items()}
        assert shared[1].stats()["catalog"]["corrupt"] == 1


# --- four real mounts ----------------------------------------------------------------------------

MOUNTS = 4
REFLECTANCE = "_L2A_SR.tif"


@pytest.fixture(scope="module")
def many_scenes(tmp_path_factory) -> Iterator[Emulator]:
    """250 small scenes: the catalog listing takes several pages (100 per page)."""
    config = EmulatorConfig(
        seed=5, scenes=250, projects=2, data_dir=tmp_path_factory.mktemp("many-scenes")
    )
    with running_emulator(config) as emu:
        yield emu


@pytest.mark.fuse
def test_four_mounts_share_listings_index_and_cog_header(many_scenes, redis_server, tmp_path):
    pages, tree = trio.run(listed, many_scenes)
    path_names, node = next(tree.scenes())
    scene, catalog_id = Path(*path_names), node.catalog.id
    assert pages["catalogs.search"] >= math.ceil(250 / 100)
    many_scenes.reset_stats()
    with cluster(
        tmp_path, many_scenes.base_url, many_scenes.api_key, [redis_server.url], MOUNTS
    ) as mounts:
        assert listing_requests(many_scenes) == pages  # one mount paged for all four

        def head(m) -> tuple[str, bytes]:
            (tif,) = (m.mountpoint / scene).rglob(f"*{REFLECTANCE}")
            with tif.open("rb") as f:
                return tif.name, f.read(65536)

        many_scenes.reset_stats()
        heads = in_parallel([lambda m=m: head(m) for m in mounts])
        gets = many_scenes.stats()["storage_gets"]
        shared = [
            json.loads((m.mountpoint / ".pixxelfs" / "stats.json").read_text())["shared_cache"]
            for m in mounts
        ]
    path = many_scenes.package_path(catalog_id)
    with zipfile.ZipFile(path) as zf:
        directory = zf.start_dir
        (name,) = [n for n in zf.namelist() if n.endswith(REFLECTANCE)]
    start = member_data_offset(path, name)
    with path.open("rb") as f:
        f.seek(start)
        expected = f.read(65536)
    assert [data for _name, data in heads] == [expected] * MOUNTS
    assert gets_covering(gets, directory) == 1  # one ZIP-directory probe for four mounts
    assert gets_covering(gets, start) == 1  # one COG-header fetch for four mounts
    checks = [g for g in gets if g["end"] - g["start"] == 0]
    assert len(checks) == MOUNTS - 1  # the others' 1-byte version checks
    indexes = [s["zip_indexes"] for s in shared]
    assert sum(i["origin_fetches"] for i in indexes) == 1
    assert sum(i["hits"] + i["wait_hits"] for i in indexes) == MOUNTS - 1
    assert sum(s["catalog"]["origin_fetches"] for s in shared) == 1
    assert sum(s["ranges"]["origin_fetches"] for s in shared) >= 1
