"""Wiring of a mount: builds the API client, caches and readers, mounts, serves, unmounts.

One trio run owns everything: the HTTP clients, the block cache's fetch nursery, the catalog
service and ``pyfuse3.main``. SIGINT and SIGTERM end ``pyfuse3.main``; the mount is always
released on the way out (``pyfuse3.close(unmount=True)``), also after an error.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pyfuse3
import trio

from pixxelfs import __version__
from pixxelfs import stats as mount_stats
from pixxelfs.api.client import PixxelClient
from pixxelfs.catalog.service import CatalogService
from pixxelfs.catalog.snapshot import SNAPSHOT_NAME, EntryVersions, SnapshotStore
from pixxelfs.config import MountConfig
from pixxelfs.fs.control import ControlEntries
from pixxelfs.fs.operations import PixxelOperations
from pixxelfs.fs.scenes import SceneStore
from pixxelfs.fs.virtual import CombinedVirtualEntries, VirtualEntries
from pixxelfs.offline import GatedDownloads, OfflineGate, start_catalog
from pixxelfs.remote.block_cache import BlockCache
from pixxelfs.remote.disk_cache import DiskCache, open_disk_cache
from pixxelfs.remote.package import RemotePackage
from pixxelfs.remote.readahead import MemoryBudget, ReadaheadPolicy, ReadPaths
from pixxelfs.remote.shared_cache import SharedStore, account_scope, open_shared_store
from pixxelfs.remote.signed_url import SignedUrlResolver
from pixxelfs.remote.storage import PackageSource, StorageClient
from pixxelfs.remote.tiers import BlockTier
from pixxelfs.stats import MountStats
from pixxelfs.views.stac import ScenePaths, StacView
from pixxelfs.views.vrt import TrueColourView

log = logging.getLogger(__name__)

MIB = 1 << 20


def read_paths(config: MountConfig) -> ReadPaths:
    """The mount's read-path settings: parts in flight bounded to a quarter of the memory cache
    (at most 64 MiB, at least one 8 MiB part), so RSS stays near the cache size."""
    budget = MemoryBudget(max(8 * MIB, min(64 * MIB, config.memory_cache_size // 4)))
    policy = ReadaheadPolicy.for_cache(config.memory_cache_size, config.read_ahead_kb * 1024)
    if config.shared_cache is not None:
        # One request per block: a block's shared-cache lease decides which mount fetches it,
        # and a part spanning blocks leased by other mounts would fetch those again.
        return ReadPaths(budget, policy, part_size=config.block_size)
    return ReadPaths(budget, policy)


def block_cache_bytes(config: MountConfig, paths: ReadPaths) -> tuple[int, int]:
    """The memory cache's share of ``--memory-cache-size`` and its write-behind bound: what is
    left after the parts in flight and the blocks being written to slower tiers, so all the
    block data the daemon holds fits the one size the user gave."""
    behind = max(config.block_size, config.memory_cache_size // 16)
    rest = config.memory_cache_size - paths.budget.limit - behind
    return max(rest, config.memory_cache_size // 4), behind


def _mount_device(mountpoint: Path) -> str | None:
    """``major:minor`` of the mount at ``mountpoint``, from /proc/self/mountinfo.

    Not ``os.stat``: before ``pyfuse3.main`` runs, a stat of our own mount would wait for an
    answer that only we can give.
    """
    device = None
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        target = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])
        if target == str(mountpoint):
            device = fields[2]  # the last match is the top of a stack of mounts
    return device


def raise_read_ahead(mountpoint: Path, kilobytes: int) -> None:
    """Set the mount's bdi ``read_ahead_kb`` (as gcsfuse does), so the kernel sends larger
    FUSE reads; needs root, otherwise the kernel's default is kept."""
    device = _mount_device(mountpoint) if kilobytes > 0 else None
    if device is None:
        return
    path = Path("/sys/class/bdi") / device / "read_ahead_kb"
    try:
        path.write_text(f"{kilobytes}\n")
    except OSError as exc:
        log.info("kernel readahead left at its default (%s: %s)", path, exc.strerror)
        return
    log.info("kernel readahead of %s set to %d KiB", mountpoint, kilobytes)


def fuse_options(config: MountConfig) -> set[str]:
    """libfuse options: read-only, named, private to the mounting user unless asked otherwise."""
    options = set(pyfuse3.default_options) | {"fsname=pixxelfs", "subtype=pixxelfs", "ro"}
    if config.allow_other:
        options.add("allow_other")
    if config.debug:
        options.add("debug")
    options.update(config.fuse_options)
    return options


@dataclass(frozen=True)
class PackageParts:
    """What every package of a mount reads through (the FUSE mount and ``pixxel://`` alike)."""

    resolver: SignedUrlResolver
    storage: StorageClient
    cache: BlockCache
    tiers: Sequence[BlockTier]
    paths: ReadPaths


def package_opener(
    parts: PackageParts,
    versions: EntryVersions,
    *,
    disk: DiskCache | None = None,
    shared: SharedStore | None = None,
) -> Callable[[str], RemotePackage]:
    """How a catalog entry's package is opened: a source pinned on first use, and a ZIP index
    saved by an earlier mount (disk) or another machine (shared store) when there is one."""

    def open_package(catalog_id: str) -> RemotePackage:
        source = PackageSource(catalog_id, parts.resolver, parts.storage)
        version = versions(catalog_id)
        saved = None if disk is None else disk.saved_index(catalog_id, version)
        if shared is not None:
            check = PackageSource(catalog_id, parts.resolver, parts.storage, probe_bytes=1)
            saved = shared.package_index(source, version, saved, check.size_and_etag)
        return RemotePackage(source, parts.cache, tiers=parts.tiers, paths=parts.paths, saved=saved)

    return open_package


@asynccontextmanager
async def open_operations(config: MountConfig) -> AsyncIterator[PixxelOperations]:
    """Build the whole read stack and load the catalog once (fail fast on a bad key/URL)."""
    headers = {"User-Agent": f"pixxelfs/{__version__}"}
    limits = httpx.Limits(
        max_connections=config.connections, max_keepalive_connections=config.connections
    )
    paths = read_paths(config)
    cache_bytes, behind = block_cache_bytes(config, paths)
    async with (
        PixxelClient(
            config.api_url,
            config.api_key,
            auth_scheme=config.auth_scheme,
            timeout=config.request_timeout,
            download_deadline=config.download_timeout,
        ) as api,
        httpx.AsyncClient(
            headers=headers, limits=limits, timeout=config.request_timeout
        ) as storage_http,
        # Before the cache: its fetch tasks, which use the store, end before the store closes.
        open_shared_store(
            config.shared_cache, account_scope(config.api_url, config.api_key)
        ) as shared,
        open_disk_cache(
            config.cache_dir,
            config.api_url,
            config.api_key,
            limit=config.cache_size,
            block_size=config.block_size,
        ) as disk,
        BlockCache.open(cache_bytes, config.block_size, write_behind=behind) as cache,
        trio.open_nursery() as background,
    ):
        storage = StorageClient(storage_http)
        gate = OfflineGate(config.offline)
        downloads = api if shared is None else shared.downloads(api)
        resolver = SignedUrlResolver(GatedDownloads(downloads, gate))
        snapshots = None if disk is None else SnapshotStore(disk.folder / SNAPSHOT_NAME)
        catalog = CatalogService(
            api,
            ttl=config.metadata_ttl,
            on_listings=None if snapshots is None else snapshots.save,
            share=None if shared is None else shared.listings(config.metadata_ttl),
        )
        tree = await start_catalog(
            catalog, api, snapshots, gate, background, ttl=config.metadata_ttl
        )
        log.info("catalog loaded: %d scenes", tree.scene_count)

        # Cache levels below memory (disk, shared store), nearest first.
        tiers: list[BlockTier] = []
        # Providers of virtual files and folders (views, control files), first wins.
        virtual_entries: list[VirtualEntries] = []
        virtual_entries.append(StacView(ScenePaths(catalog.current)))
        virtual_entries.append(TrueColourView())
        stats = MountStats()
        virtual_entries.append(ControlEntries(stats))
        if disk is not None:
            tiers.append(disk.tier)
        if shared is not None:  # the last tier: memory -> disk -> shared -> origin
            tiers.append(shared.block_tier(config.block_size))

        open_package = package_opener(
            PackageParts(resolver, storage, cache, tiers, paths),
            EntryVersions(catalog.current),
            disk=disk,
            shared=shared,
        )
        operations = PixxelOperations(
            catalog,
            SceneStore(open_package),
            metadata_ttl=config.metadata_ttl,
            block_size=config.block_size,
            virtual=CombinedVirtualEntries(virtual_entries),
            readahead=paths.policy,
            direct_io=config.direct_io,
            stub_reads=config.stub_reads,
        )
        # Sections of <mount>/.pixxelfs/stats.json: one line each.
        stats.add("memory_cache", mount_stats.memory_cache(cache))
        if disk is not None:
            stats.add("disk_cache", disk.stats)
        stats.add("storage", mount_stats.storage(storage, resolver))
        stats.add("read_paths", paths.stats)
        stats.add("api", mount_stats.api(api))
        stats.add("catalog", mount_stats.catalog(catalog))
        stats.add("connectivity", gate.stats)
        if shared is not None:
            stats.add("shared_cache", shared.stats)
        stats.add("errors", lambda: dict(operations.errors))
        try:
            yield operations
        finally:
            background.cancel_scope.cancel()


async def _terminate_on_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


# glibc's mallopt() parameters.
_M_ARENA_MAX = -8
_M_MMAP_THRESHOLD = -3


def tune_malloc(block_size: int, arenas: int = 2) -> None:
    """Keep the daemon's memory near what ``--memory-cache-size`` allows (glibc only).

    Two arenas: by default glibc gives each worker thread (disk cache I/O) its own arena, and
    every arena keeps freed block-sized buffers (~150 MB of RSS above the memory cache in
    random-window reads). A fixed mmap threshold of two blocks: glibc's dynamic threshold rises
    to the largest buffer ever freed, after which 4 MiB COG tiles are carved out of the heap
    and leave it fragmented (peak RSS 540-750 MB with a 512 MiB cache, W3); anything larger
    than two blocks now gets its own mapping, returned to the system when freed. Blocks and
    FUSE replies stay below it and reuse heap memory without page faults.
    """
    name = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(name), "mallopt", None) if name else None
    if mallopt is None:
        log.debug("not glibc's malloc: left as it is")
        return
    if not mallopt(_M_ARENA_MAX, arenas):
        log.debug("could not limit malloc arenas")
    if not mallopt(_M_MMAP_THRESHOLD, 2 * block_size):
        log.debug("could not set the mmap threshold")


async def _when_answering(config: MountConfig, on_ready: Callable[[], None]) -> None:
    """Once the kernel has handled FUSE INIT: raise the readahead, then report ready.

    The kernel caps the mount's readahead at what its INIT offered (its 128 KiB default) when
    the answer to INIT arrives, in ``pyfuse3.main``: a value written before that is silently
    undone. A stat of the mount returns only after INIT, and proves that the mount answers.
    """
    await trio.to_thread.run_sync(os.stat, config.mountpoint, abandon_on_cancel=True)
    raise_read_ahead(config.mountpoint, config.read_ahead_kb)
    log.info("mounted %s (api %s)", config.mountpoint, config.api_url)
    on_ready()


async def serve(config: MountConfig, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount, call ``on_ready`` once the mount answers, serve until unmounted or signalled,
    then release the mount."""
    tune_malloc(config.block_size)
    async with open_operations(config) as operations, trio.open_nursery() as nursery:
        await nursery.start(_terminate_on_signals)
        pyfuse3.init(operations, str(config.mountpoint), fuse_options(config))
        try:
            nursery.start_soon(_when_answering, config, on_ready)
            await pyfuse3.main()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", config.mountpoint)
            nursery.cancel_scope.cancel()
