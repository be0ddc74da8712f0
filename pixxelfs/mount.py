"""Wiring of a mount: builds the API client, caches and readers, mounts, serves, unmounts.

One trio run owns everything: the HTTP clients, the block cache's fetch nursery, the catalog
service and ``pyfuse3.main``. SIGINT and SIGTERM end ``pyfuse3.main``; the mount is always
released on the way out (``pyfuse3.close(unmount=True)``), also after an error.
"""

from __future__ import annotations

import logging
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pyfuse3
import trio

from pixxelfs import __version__
from pixxelfs.api.client import PixxelClient
from pixxelfs.catalog.service import CatalogService
from pixxelfs.config import MountConfig
from pixxelfs.fs.operations import PixxelOperations
from pixxelfs.fs.scenes import SceneStore
from pixxelfs.fs.virtual import CombinedVirtualEntries, VirtualEntries
from pixxelfs.remote.block_cache import BlockCache
from pixxelfs.remote.package import RemotePackage
from pixxelfs.remote.signed_url import SignedUrlResolver
from pixxelfs.remote.storage import PackageSource, StorageClient
from pixxelfs.remote.tiers import BlockTier

log = logging.getLogger(__name__)

# Storage connections: enough for parallel range parts of a few open files.
STORAGE_CONNECTIONS = 16


def fuse_options(config: MountConfig) -> set[str]:
    """libfuse options: read-only, named, private to the mounting user unless asked otherwise."""
    options = set(pyfuse3.default_options) | {"fsname=pixxelfs", "subtype=pixxelfs", "ro"}
    if config.allow_other:
        options.add("allow_other")
    if config.debug:
        options.add("debug")
    options.update(config.fuse_options)
    return options


@asynccontextmanager
async def open_operations(config: MountConfig) -> AsyncIterator[PixxelOperations]:
    """Build the whole read stack and load the catalog once (fail fast on a bad key/URL)."""
    headers = {"User-Agent": f"pixxelfs/{__version__}"}
    limits = httpx.Limits(
        max_connections=STORAGE_CONNECTIONS, max_keepalive_connections=STORAGE_CONNECTIONS
    )
    async with (
        PixxelClient(config.api_url, config.api_key, auth_scheme=config.auth_scheme) as api,
        httpx.AsyncClient(headers=headers, limits=limits, timeout=30.0) as storage_http,
        BlockCache.open(config.memory_cache_size, config.block_size) as cache,
    ):
        storage = StorageClient(storage_http)
        resolver = SignedUrlResolver(api)
        catalog = CatalogService(api, ttl=config.metadata_ttl)
        tree = await catalog.tree()
        log.info("catalog loaded: %d scenes", tree.scene_count)

        # Cache levels below memory (disk, shared store), nearest first.
        tiers: list[BlockTier] = []
        # Providers of virtual files and folders (views, control files), first wins.
        virtual_entries: list[VirtualEntries] = []

        def open_package(catalog_id: str) -> RemotePackage:
            source = PackageSource(catalog_id, resolver, storage)
            return RemotePackage(source, cache, tiers=tiers)

        yield PixxelOperations(
            catalog,
            SceneStore(open_package),
            metadata_ttl=config.metadata_ttl,
            block_size=config.block_size,
            virtual=CombinedVirtualEntries(virtual_entries),
        )


async def _terminate_on_signals(task_status=trio.TASK_STATUS_IGNORED) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()
        async for signum in signals:
            log.info("%s received: unmounting", signal.Signals(signum).name)
            pyfuse3.terminate()
            return


async def serve(config: MountConfig, on_ready: Callable[[], None] = lambda: None) -> None:
    """Mount, call ``on_ready``, serve until unmounted or signalled, then release the mount."""
    async with open_operations(config) as operations, trio.open_nursery() as nursery:
        await nursery.start(_terminate_on_signals)
        pyfuse3.init(operations, str(config.mountpoint), fuse_options(config))
        try:
            log.info("mounted %s (api %s)", config.mountpoint, config.api_url)
            on_ready()
            await pyfuse3.main()
        finally:
            pyfuse3.close(unmount=True)
            log.info("unmounted %s", config.mountpoint)
            nursery.cancel_scope.cancel()
