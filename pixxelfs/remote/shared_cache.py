"""The shared block store: a cache tier on Redis that a whole cluster of mounts shares.

This module owns the cluster-wide cache level below memory and disk (see ``tiers``):

- **Keys** name a package version, never its signed URL:
  ``pxfs:v1:b:{package}:{block size}:{block index}`` (an exact range such as a COG tile:
  ``...:range:{end}:{start}``), where ``package`` hashes the account scope (API URL + key), the
  catalog id, the storage ETag and the size. A replaced package (new ETag) has new keys, so
  blocks of the old version can never be served for it.
- **Values** are a 52-byte header (magic, SHA-256 of the key, data length, CRC-32 of the data,
  CRC-32 of the header) followed by the bytes. Every hit is checked; a value that fails
  (garbage, truncated, or written under another key) is a miss and is deleted.
- **One origin fetch per block across the cluster.** A lookup is one atomic script: the value,
  or else the lease (``SET {key}:lease TOKEN NX PX``) if it is free. The lease holder fetches
  from the level below, publishes the value and drops the lease (compare-and-delete). Mounts
  that find the lease taken poll for the value (5 -> 80 ms backoff); if the lease vanishes
  without a value they try to take it themselves, and once the lease time has passed they fetch
  from below anyway: liveness beats de-duplication. At most 8 calls per node are in flight per
  mount, so a deadline measures the node, not a queue of 1 MiB values in our own process.
- **Strictly an optimisation.** Every Redis call has a deadline; each node has a circuit
  breaker that opens after repeated errors (one warning), then lets one probe through after a
  cool-down. An error of the store only sends the read to the level below; only errors of the
  level below (the origin) reach the reader.
- **Several nodes.** Keys are spread over independent Redis nodes by consistent hashing (a ring
  with virtual points per node), so adding or losing a node moves about 1/N of the keys.

The same lease protocol shares metadata too (:meth:`SharedStore.fill_once`), so N mounts pay
for it once:

- **ZIP indexes** (:class:`SharedIndex`): a package's ETag, size and ZIP directory under
  ``pxfs:v1:zip:{scope}:{catalog id hash}:{entry version}`` (the fingerprint of the catalog entry,
  as the disk cache keys it): a mount learns the package's index without the 128 KiB tail
  probe. It checks the version with a 1-byte probe first: blocks of the named version may all
  be in the store, so a replaced package would otherwise never meet a 412 and its old bytes
  would be served. A stale index is replaced, never used.
- **COG headers** need nothing extra: they are exact ranges of the block tier.
- **The catalog listings** (:class:`SharedListings`): the raw API answers under
  ``pxfs:v1:catalog:{scope}`` for ``min(metadata TTL, 60 s)``: mounts started together page
  through the API once.
- **Signed URLs** with ``--share-signed-urls`` (:class:`SharedDownloads`): one download
  resource per scene for the whole cluster.

A metadata value that is sealed correctly but does not decode is garbage too: dropped, and
loaded from the API or storage instead.
"""

from __future__ import annotations

import base64
import bisect
import hashlib
import json
import logging
import secrets
import struct
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager, suppress
from dataclasses import asdict, dataclass, field
from enum import Enum, StrEnum
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import trio
from cachetools import LRUCache

from pixxelfs.api.models import DownloadResource
from pixxelfs.catalog.service import Listings
from pixxelfs.catalog.snapshot import listings_json, listings_of
from pixxelfs.config import SharedCacheConfig
from pixxelfs.remote.block_cache import BlockKey, Fetch

# The disk cache's row format of a ZIP member: one serialisation of indexes, not two.
from pixxelfs.remote.disk_cache import member_from_row, member_row
from pixxelfs.remote.package import SavedIndex, read_zip_index
from pixxelfs.remote.signed_url import DownloadApi, expiry_from_url
from pixxelfs.remote.storage import ObjectInfo, PackageSource
from pixxelfs.remote.zipindex import ZipIndex

log = logging.getLogger(__name__)

T = TypeVar("T")

KEY_PREFIX = "pxfs:v1"
LEASE_SUFFIX = ":lease"
# A block's lease outlives any healthy 1 MiB origin fetch (ms to a few hundred ms) by far; a
# winner that dies costs the others at most this long before they fetch themselves.
BLOCK_LEASE_SECONDS = 5.0
# Creating a download resource can take the API a while (it prepares the package).
URL_LEASE_SECONDS = 30.0
# A shared signed URL is dropped this long before it expires, as the resolver does.
URL_MARGIN_SECONDS = 60.0
# Signed URLs without a readable expiry are shared for this long only.
URL_DEFAULT_SECONDS = 300.0
# A tail probe may first wait for a download resource to be created.
INDEX_LEASE_SECONDS = 15.0
# Paging through a large account's listings takes seconds.
CATALOG_LEASE_SECONDS = 30.0
# Shared listings live at most this long (and never longer than the metadata TTL).
CATALOG_MAX_SECONDS = 60.0
# A node whose breaker opened is probed again after this long: short enough that a restarted
# Redis is back in use quickly, long enough that a dead one costs one timeout per period.
BREAKER_COOLDOWN_SECONDS = 5.0

_MAGIC = b"PXB1"
_HEADER = struct.Struct(">4s32sQI")  # magic, sha256(key), data length, crc32(data)
_HEADER_CRC = struct.Struct(">I")  # crc32 of the fields above
HEADER_SIZE = _HEADER.size + _HEADER_CRC.size

# Compare-and-delete: drop a lease only while it is still ours (it may have lapsed and been
# taken by another mount).
_RELEASE = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
# Get-or-lease, atomic: a separate GET then SET NX would let a mount take the lease just after
# the holder published and released it, and fetch the block a second time.
_GET_OR_LEASE = """
local value = redis.call('get', KEYS[1])
if value then return {1, value} end
if redis.call('set', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2, ''} end
return {0, ''}
"""
_FOUND, _LEASED = 1, 2


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def seal(key: str, data: bytes) -> bytes:
    """``data`` as a value for ``key``: header (with both checksums) + bytes."""
    header = _HEADER.pack(_MAGIC, _digest(key), len(data), zlib.crc32(data))
    return header + _HEADER_CRC.pack(zlib.crc32(header)) + data


def unseal(key: str, value: bytes) -> bytes | None:
    """The data of a value sealed for ``key``, or None if it is anything else."""
    if len(value) < HEADER_SIZE:
        return None
    header = value[: _HEADER.size]
    (header_crc,) = _HEADER_CRC.unpack_from(value, _HEADER.size)
    if zlib.crc32(header) != header_crc:
        return None
    magic, digest, length, crc = _HEADER.unpack(header)
    data = memoryview(value)[HEADER_SIZE:]
    if magic != _MAGIC or digest != _digest(key) or length != len(data):
        return None
    if zlib.crc32(data) != crc:
        return None
    return bytes(data)


def account_scope(api_url: str, api_key: str) -> str:
    """Who may share cache entries: one API endpoint and key (a hash; the key never leaves)."""
    return hashlib.sha256(f"{api_url}\0{api_key}".encode()).hexdigest()[:32]


def package_digest(scope: str, catalog_id: str, etag: str, size: int) -> str:
    """The identity of one package version within an account scope."""
    return hashlib.sha256(f"{scope}\0{catalog_id}\0{etag}\0{size}".encode()).hexdigest()[:32]


def node_name(url: str) -> str:
    """``host:port/db`` of a Redis URL: what logs and stats call a node (no password)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or 6379}{parts.path or '/0'}"


class HashRing:
    """Consistent hashing of keys onto nodes, ``points`` virtual points per node."""

    def __init__(self, names: Sequence[str], points: int = 160):
        if not names:
            raise ValueError("a hash ring needs at least one node")
        ring = sorted(
            (self._hash(f"{name}#{i}"), n) for n, name in enumerate(names) for i in range(points)
        )
        self._hashes = [h for h, _ in ring]
        self._owners = [n for _, n in ring]

    @staticmethod
    def _hash(text: str) -> int:
        return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")

    def owner(self, key: str) -> int:
        """The index of the node that holds ``key``."""
        at = bisect.bisect(self._hashes, self._hash(key)) % len(self._hashes)
        return self._owners[at]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"


class CircuitBreaker:
    """Stops calling a sick node, then probes it again.

    Opens (one warning) after ``threshold`` errors in a row that span at least ``min_span``
    seconds: a daemon whose own event loop stalled once sees all its in-flight calls time out
    together, which says nothing about the node. When open, lets a single probe through every
    ``cooldown`` seconds; the first success closes it.
    """

    def __init__(
        self,
        name: str,
        *,
        threshold: int = 5,
        min_span: float = 1.0,
        cooldown: float = BREAKER_COOLDOWN_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name = name
        self.state = BreakerState.CLOSED
        self.opened = 0
        self._threshold = threshold
        self._min_span = min_span
        self._cooldown = cooldown
        self._clock = clock
        self._failures = 0
        self._first_failure = 0.0
        self._retry_at = 0.0

    def allow(self) -> bool:
        """Whether to call the node now (in half-open state: only the one probe)."""
        if self.state is BreakerState.CLOSED:
            return True
        if self.state is BreakerState.OPEN and self._clock() >= self._retry_at:
            self.state = BreakerState.HALF_OPEN
            return True
        return False

    def success(self) -> None:
        if self.state is not BreakerState.CLOSED:
            log.info("shared cache %s answers again: using it", self.name)
        self.state = BreakerState.CLOSED
        self._failures = 0

    def failure(self, cause: str) -> None:
        now = self._clock()
        if self._failures == 0:
            self._first_failure = now
        self._failures += 1
        if self.state is BreakerState.CLOSED and (
            self._failures < self._threshold or now - self._first_failure < self._min_span
        ):
            return
        if self.state is BreakerState.CLOSED:
            self.opened += 1
            log.warning(
                "shared cache %s failed %d times in a row (%s): reading from the origin "
                "without it, retrying every %.0f s",
                self.name,
                self._failures,
                cause,
                self._cooldown,
            )
        self.state = BreakerState.OPEN
        self._retry_at = self._clock() + self._cooldown

    def abandon(self) -> None:
        """A probe was cancelled before it answered: let the next call probe instead."""
        if self.state is BreakerState.HALF_OPEN:
            self.state = BreakerState.OPEN
            self._retry_at = self._clock()


@dataclass
class _Node:
    name: str
    client: Any  # coredis.Redis[bytes]
    breaker: CircuitBreaker
    # Calls in flight: beyond a few, 1 MiB values only queue behind each other (64 at once
    # took 140 ms each at 400 MB/s) and the deadline would measure the queue, not the node.
    slots: trio.CapacityLimiter = field(default_factory=lambda: trio.CapacityLimiter(8))


class _Unavailable(Exception):
    """The store did not answer in time, failed, or its node's breaker is open."""


@dataclass
class FillStats:
    """What one kind of shared value (blocks, signed URLs) cost and saved."""

    hits: int = 0
    misses: int = 0
    corrupt: int = 0
    lease_wins: int = 0
    lease_waits: int = 0
    wait_hits: int = 0
    lapsed: int = 0
    wait_timeouts: int = 0
    bypassed: int = 0
    origin_fetches: int = 0
    origin_bytes: int = 0
    unshared: int = 0  # blocks of packages without an ETag, never shared


class _Outcome(Enum):
    LAPSED = "lapsed"
    TIMEOUT = "timeout"


# How long a value lives in the store: seconds, None to keep it until Redis evicts it, <= 0 to
# not store it at all.
Lifetime = Callable[[bytes], float | None]


class SharedStore:
    """Redis nodes behind a hash ring; every call has a deadline and passes its node's breaker."""

    def __init__(
        self,
        nodes: Sequence[_Node],
        config: SharedCacheConfig,
        scope: str,
        *,
        block_lease: float = BLOCK_LEASE_SECONDS,
    ):
        self._nodes = tuple(nodes)
        self._ring = HashRing([node.name for node in self._nodes])
        self.config = config
        self.scope = scope
        self.block_lease = block_lease
        self.errors = 0
        self.block_stats = FillStats()
        self.range_stats = FillStats()
        self.index_stats = FillStats()
        self.catalog_stats = FillStats()
        self.url_stats = FillStats()

    def block_tier(self, block_size: int) -> SharedBlockTier:
        return SharedBlockTier(self, block_size)

    def downloads(self, api: DownloadApi) -> DownloadApi:
        """``api``, sharing its signed URLs when ``--share-signed-urls`` is on."""
        return SharedDownloads(api, self) if self.config.share_signed_urls else api

    def package_index(
        self,
        source: PackageSource,
        version: str | None,
        inner: SavedIndex | None,
        current: Callable[[], Awaitable[ObjectInfo]],
    ) -> SavedIndex | None:
        """The saved index of ``source``'s package: ``inner`` (the disk's), then this store.

        ``version`` fingerprints the catalog entry; without one (an unknown entry) nothing is
        shared. ``current`` is a cheap probe of the package's version (a 1-byte tail).
        """
        if version is None:
            return inner
        return SharedIndex(self, source, version, inner, current)

    def listings(self, metadata_ttl: float) -> SharedListings | None:
        """What ``CatalogService(share=...)`` fetches its listings through (None: a mount
        without a metadata TTL lists for itself every time, so there is nothing to share)."""
        ttl = min(metadata_ttl, CATALOG_MAX_SECONDS)
        return SharedListings(self, ttl) if ttl > 0 else None

    def stats(self) -> dict[str, Any]:
        """Counters for ``pixxelfs stats``: per kind of value, errors, and each node's breaker."""
        return {
            "blocks": asdict(self.block_stats),
            "ranges": asdict(self.range_stats),
            "zip_indexes": asdict(self.index_stats),
            "catalog": asdict(self.catalog_stats),
            "signed_urls": asdict(self.url_stats),
            "errors": self.errors,
            "nodes": [
                {"node": n.name, "breaker": n.breaker.state.value, "opened": n.breaker.opened}
                for n in self._nodes
            ],
        }

    async def fill_once(
        self,
        key: str,
        load: Fetch,
        stats: FillStats,
        lifetime: Lifetime,
        lease_seconds: float,
    ) -> bytes:
        """The value of ``key``: from the store, or loaded by one caller across the cluster."""
        try:
            return await self._lookup_or_lease(key, load, stats, lifetime, lease_seconds)
        except _Unavailable:
            stats.bypassed += 1
            return await self._load(load, stats)

    async def fill_decoded(
        self,
        key: str,
        load: Callable[[], Awaitable[T]],
        codec: Codec[T],
        stats: FillStats,
        lifetime: Callable[[T], float | None],
        lease_seconds: float,
    ) -> T:
        """:meth:`fill_once` for a value that is not bytes. One that does not decode is
        garbage: it is dropped and filled again (once; then ``load`` runs here)."""
        loaded: list[T] = []

        async def load_encoded() -> bytes:
            loaded.append(await load())
            return codec.encode(loaded[0])

        def lifetime_of(_data: bytes) -> float | None:
            return lifetime(loaded[0])

        for _attempt in range(2):
            data = await self.fill_once(key, load_encoded, stats, lifetime_of, lease_seconds)
            if loaded:
                return loaded[0]
            try:
                return codec.decode(data)
            except Exception as exc:  # a sealed value we did not write: never used
                log.debug("shared cache: %s does not decode (%s)", key, exc)
                await self._discard(key, stats)
        return await load()

    async def forget(self, key: str) -> None:
        """Delete ``key`` (best effort)."""
        with suppress(_Unavailable):
            await self._call(key, lambda r: r.delete([key]))

    async def _lookup_or_lease(
        self, key: str, load: Fetch, stats: FillStats, lifetime: Lifetime, lease_seconds: float
    ) -> bytes:
        deadline = trio.current_time() + lease_seconds
        first = True
        while trio.current_time() < deadline:
            token = secrets.token_hex(8)
            found, value = await self._get_or_lease(key, token, lease_seconds)
            if found == _FOUND:
                data = unseal(key, value)
                if data is not None:
                    if first:
                        stats.hits += 1
                    else:
                        stats.wait_hits += 1
                    return data
                await self._discard(key, stats)
                continue  # the next round takes the lease
            if first:
                stats.misses += 1
                first = False
            if found == _LEASED:
                stats.lease_wins += 1
                return await self._fill(key, token, load, stats, lifetime)
            stats.lease_waits += 1
            waited = await self._wait(key, deadline, stats)
            if isinstance(waited, bytes):
                stats.wait_hits += 1
                return waited
            if waited is _Outcome.LAPSED:
                stats.lapsed += 1
        stats.wait_timeouts += 1
        return await self._load(load, stats)

    async def _get_or_lease(self, key: str, token: str, lease_seconds: float) -> tuple[int, bytes]:
        """In one atomic step: the value if there is one, else the lease if it is free."""
        lease, lease_ms = key + LEASE_SUFFIX, max(1, int(lease_seconds * 1000))
        found, value = await self._call(
            key, lambda r: r.eval(_GET_OR_LEASE, [key, lease], [token, lease_ms])
        )
        return int(found), value

    async def _fill(
        self, key: str, token: str, load: Fetch, stats: FillStats, lifetime: Lifetime
    ) -> bytes:
        """Load as the lease holder, publish, and always drop the lease (also on failure)."""
        lease = key + LEASE_SUFFIX
        try:
            data = await self._load(load, stats)
            seconds = lifetime(data)
            if seconds is None or seconds > 0:
                value = seal(key, data)
                px = None if seconds is None else max(1, int(seconds * 1000))
                with suppress(_Unavailable):
                    await self._call(key, lambda r: r.set(key, value, px=px))
            return data
        finally:
            with trio.CancelScope(shield=True), suppress(_Unavailable):
                await self._call(key, lambda r: r.eval(_RELEASE, [lease], [token]))

    async def _wait(self, key: str, deadline: float, stats: FillStats) -> bytes | _Outcome:
        """Poll until the holder publishes the value, drops the lease, or ``deadline``."""
        lease = key + LEASE_SUFFIX
        delay = 0.005
        while (left := deadline - trio.current_time()) > 0:
            await trio.sleep(min(delay, left))
            delay = min(delay * 2, 0.08)
            value, holder = await self._call(key, lambda r: r.mget([key, lease]))
            if value is not None:
                data = unseal(key, value)
                if data is not None:
                    return data
                await self._discard(key, stats)
                return _Outcome.LAPSED
            if holder is None:
                return _Outcome.LAPSED
        return _Outcome.TIMEOUT

    async def _discard(self, key: str, stats: FillStats) -> None:
        stats.corrupt += 1
        log.debug("shared cache: dropping an invalid value under %s", key)
        await self.forget(key)

    @staticmethod
    async def _load(load: Fetch, stats: FillStats) -> bytes:
        data = await load()
        stats.origin_fetches += 1
        stats.origin_bytes += len(data)
        return data

    async def _call(self, key: str, op: Callable[[Any], Awaitable[T]]) -> T:
        """``op`` on the node owning ``key``, within the deadline, through its breaker."""
        node = self._nodes[self._ring.owner(key)]
        async with node.slots:
            return await self._call_node(node, op)

    async def _call_node(self, node: _Node, op: Callable[[Any], Awaitable[T]]) -> T:
        if not node.breaker.allow():
            raise _Unavailable(node.name)
        try:
            with trio.move_on_after(self.config.timeout) as scope:
                result = await op(node.client)
            if not scope.cancelled_caught:
                node.breaker.success()
                return result
            cause = f"no answer within {self.config.timeout:g} s"
        except trio.Cancelled:
            node.breaker.abandon()
            raise
        except Exception as exc:  # an optional cache: any failure, garbage included, is a miss
            cause = f"{type(exc).__name__}: {exc}"
        self.errors += 1
        log.debug("shared cache %s: %s", node.name, cause)
        node.breaker.failure(cause)
        raise _Unavailable(cause)


class SharedBlockTier:
    """The :class:`~pixxelfs.remote.tiers.BlockTier` on the shared store.

    Packages without an ETag are not shared: nothing would tell two of their versions apart.
    """

    def __init__(self, store: SharedStore, block_size: int):
        self._store = store
        self.block_size = block_size

    def key_for(self, key: BlockKey) -> str | None:
        """The store key of a block, or None when its package cannot be shared.

        ``key.package`` is the package identity ``(catalog_id, etag, size)``; ``key.unit``
        names an exact range (``"range", end``) instead of a block.
        """
        identity = key.package
        if not (isinstance(identity, tuple) and len(identity) == 3 and identity[1]):
            return None
        catalog_id, etag, size = identity
        package = package_digest(self._store.scope, catalog_id, etag, size)
        kind = ":".join(map(str, key.unit)) if key.unit else str(self.block_size)
        return f"{KEY_PREFIX}:b:{package}:{kind}:{key.index}"

    async def fetch(self, key: BlockKey, below: Fetch) -> bytes:
        store = self._store
        stats = store.block_stats if key.is_block else store.range_stats
        name = self.key_for(key)
        if name is None:
            stats.unshared += 1
            return await below()
        return await store.fill_once(name, below, stats, self._lifetime, store.block_lease)

    def holds(self, key: BlockKey) -> bool:
        """Unknown without a round trip to the store."""
        return False

    def _lifetime(self, data: bytes) -> float | None:
        ttl = self._store.config.ttl
        return ttl if ttl > 0 else None


class SharedDownloads:
    """A ``DownloadApi`` whose signed URLs are shared through the store.

    The cluster creates one download resource per scene instead of one per mount. A URL this
    process already received and then asks for again (storage refused it, or the package
    changed) is never taken from the store a second time: it is deleted and replaced.
    """

    def __init__(self, api: DownloadApi, store: SharedStore, *, max_entries: int = 4096):
        self._api = api
        self._store = store
        self._seen: LRUCache[str, str | None] = LRUCache(maxsize=max_entries)

    async def wait_for_download(self, catalog_id: str) -> DownloadResource:
        key = f"{KEY_PREFIX}:url:{self._store.scope}:{catalog_id}"
        resource = await self._shared(key, catalog_id)
        if catalog_id in self._seen and resource.signed_url == self._seen[catalog_id]:
            await self._store.forget(key)
            resource = await self._shared(key, catalog_id)
        self._seen[catalog_id] = resource.signed_url
        return resource

    async def _shared(self, key: str, catalog_id: str) -> DownloadResource:
        async def load() -> bytes:
            resource = await self._api.wait_for_download(catalog_id)
            return json.dumps(asdict(resource)).encode()

        store = self._store
        data = await store.fill_once(key, load, store.url_stats, _url_lifetime, URL_LEASE_SECONDS)
        return DownloadResource(**json.loads(data))


class Codec(Protocol[T]):
    """Bytes of a value in the store, and back (``decode`` raises on anything else)."""

    def encode(self, value: T) -> bytes: ...

    def decode(self, data: bytes) -> T: ...


class _IndexCodec:
    """A package's identity and ZIP index as JSON (the disk cache's member rows)."""

    @staticmethod
    def encode(value: tuple[ObjectInfo, ZipIndex]) -> bytes:
        info, index = value
        body = {
            "etag": info.etag,
            "size": info.size,
            "comment": base64.b64encode(index.comment).decode(),
            "members": [member_row(m) for m in index.members],
        }
        return json.dumps(body).encode()

    @staticmethod
    def decode(data: bytes) -> tuple[ObjectInfo, ZipIndex]:
        body = json.loads(data)
        info = ObjectInfo(int(body["size"]), str(body["etag"]))
        members = tuple(member_from_row(row) for row in body["members"])
        return info, ZipIndex(members, base64.b64decode(body["comment"]))


class SharedIndex:
    """A package's :class:`~pixxelfs.remote.package.SavedIndex` shared by the cluster.

    ``inner`` (the disk cache's) is asked first. On a miss the first mount to take the lease
    reads the index from storage (the tail probe) and publishes it; the others use it.
    An index another mount published is used only if ``current`` (a 1-byte probe) still
    names its version. :meth:`load` always answers, so ``RemotePackage`` pins that version.
    """

    def __init__(
        self,
        store: SharedStore,
        source: PackageSource,
        version: str,
        inner: SavedIndex | None,
        current: Callable[[], Awaitable[ObjectInfo]],
    ):
        self._store = store
        self._source = source
        self._inner = inner
        self._current = current
        self._probed = False
        catalog = hashlib.sha256(source.catalog_id.encode()).hexdigest()[:32]
        self._key = f"{KEY_PREFIX}:zip:{store.scope}:{catalog}:{version}"

    async def load(self) -> tuple[ObjectInfo, ZipIndex] | None:
        if self._inner is not None and (saved := await self._inner.load()) is not None:
            return saved
        store, catalog_id = self._store, self._source.catalog_id
        found = await self._fill()
        if not self._probed and await self._current() != found[0]:
            store.index_stats.corrupt += 1
            log.info("catalog %s: the shared index names an old package version", catalog_id)
            await store.forget(self._key)
            found = await self._fill()
        if self._inner is not None:
            await self._inner.save(*found)
        return found

    async def save(self, info: ObjectInfo, index: ZipIndex) -> None:
        """Only ``inner`` is written here: the store is filled by :meth:`load`."""
        if self._inner is not None:
            await self._inner.save(info, index)

    def discard(self) -> None:
        """The package changed (412): ``inner`` drops it; the store's copy fails the version
        check of the next :meth:`load` and is replaced then."""
        if self._inner is not None:
            self._inner.discard()

    async def _fill(self) -> tuple[ObjectInfo, ZipIndex]:
        store = self._store
        return await store.fill_decoded(
            self._key,
            self._read,
            _IndexCodec(),
            store.index_stats,
            self._lifetime,
            INDEX_LEASE_SECONDS,
        )

    async def _read(self) -> tuple[ObjectInfo, ZipIndex]:
        self._probed = True
        index = await read_zip_index(self._source)
        return await self._source.size_and_etag(), index

    def _lifetime(self, value: tuple[ObjectInfo, ZipIndex]) -> float | None:
        """Packages without an ETag are not shared (nothing tells their versions apart)."""
        if value[0].etag is None:
            return 0
        ttl = self._store.config.ttl
        return ttl if ttl > 0 else None


class _ListingsCodec:
    """The raw API answers of the three listings, as the disk snapshot keeps them."""

    @staticmethod
    def encode(value: Listings) -> bytes:
        return json.dumps(listings_json(*value)).encode()  # ASCII: lone surrogates survive

    @staticmethod
    def decode(data: bytes) -> Listings:
        return listings_of(json.loads(data))


class SharedListings:
    """The catalog listings, paged through the API by one mount of the cluster per ``ttl``.

    Scoped by account; the listings hold neither the API key nor signed URLs.
    """

    def __init__(self, store: SharedStore, ttl: float):
        self._store = store
        self.ttl = ttl
        self._key = f"{KEY_PREFIX}:catalog:{store.scope}"

    async def __call__(self, fetch: Callable[[], Awaitable[Listings]]) -> Listings:
        store = self._store
        return await store.fill_decoded(
            self._key,
            fetch,
            _ListingsCodec(),
            store.catalog_stats,
            self._lifetime,
            CATALOG_LEASE_SECONDS,
        )

    def _lifetime(self, _value: Listings) -> float:
        return self.ttl


def _url_lifetime(data: bytes) -> float:
    url = json.loads(data).get("signed_url") or ""
    now = time.time()
    expires = expiry_from_url(url, now)
    if expires is None:
        return URL_DEFAULT_SECONDS
    return expires - now - URL_MARGIN_SECONDS


@asynccontextmanager
async def open_shared_store(
    config: SharedCacheConfig | None,
    scope: str,
    *,
    block_lease: float = BLOCK_LEASE_SECONDS,
    breaker_cooldown: float = BREAKER_COOLDOWN_SECONDS,
) -> AsyncIterator[SharedStore | None]:
    """The store over ``config.urls`` for as long as the block lasts (None without a config).

    Connections are made lazily: a node that is down at start only opens its breaker.
    """
    if config is None:
        yield None
        return
    import coredis  # only mounts that use a shared cache pay for the import

    async with AsyncExitStack() as stack:
        nodes = []
        for url in config.urls:
            client = coredis.Redis.from_url(url, connect_timeout=config.timeout)
            await stack.enter_async_context(client)
            name = node_name(url)
            nodes.append(_Node(name, client, CircuitBreaker(name, cooldown=breaker_cooldown)))
        yield SharedStore(nodes, config, scope, block_lease=block_lease)
