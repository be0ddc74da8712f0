"""``pixxel://``: the catalog as an fsspec filesystem, for Dask and xarray workers without a mount.

This module owns the fsspec face of the same read stack a mount uses (API client, catalog
tree, signed URLs, ZIP index, memory block cache, and the shared Redis block store when
``shared_cache`` is given): paths are the mount's paths, ``pixxel://<project>/<usecase>/<date>/
<scene>/<member path>``. The stack runs in its own trio thread (an anyio blocking portal), one
per filesystem instance, so any thread of a worker may read; each worker process has its own
memory cache and shares the Redis tier with every other worker and mount.

    fs = fsspec.filesystem("pixxel", shared_cache=["redis://:pw@cache:6379/0"])
    with rasterio.open("pixxel://.../X_L2A_SR.tif", opener=fs.open) as ds: ...

The API key comes from ``api_key=`` or ``$PIXXEL_API_KEY`` (on the workers: prefer the
environment, as storage options travel with pickled tasks); the API URL from ``api_url=`` or
``$PIXXEL_API_URL``. Read-only: every write raises ``PermissionError``.
"""

from __future__ import annotations

import os
import weakref
from collections.abc import AsyncIterator, Sequence
from contextlib import AbstractContextManager, asynccontextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
from anyio.from_thread import BlockingPortal, start_blocking_portal
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

from pixxelfs import __version__
from pixxelfs.api.client import PixxelClient
from pixxelfs.catalog.service import CatalogService
from pixxelfs.catalog.snapshot import EntryVersions
from pixxelfs.catalog.tree import DirectoryNode, SceneNode
from pixxelfs.config import DEFAULT_API_URL, MountConfig, SharedCacheConfig, read_api_key
from pixxelfs.fs.scene_files import MemberFile, MemoryFile, PackageDir, lookup_entry, scene_root
from pixxelfs.fs.scenes import SceneStore
from pixxelfs.mount import PackageParts, block_cache_bytes, package_opener, read_paths
from pixxelfs.remote.block_cache import BlockCache
from pixxelfs.remote.member import MemberReader
from pixxelfs.remote.package import RemotePackage
from pixxelfs.remote.shared_cache import account_scope, open_shared_store
from pixxelfs.remote.signed_url import SignedUrlResolver
from pixxelfs.remote.storage import StorageClient
from pixxelfs.remote.tiers import BlockTier

API_URL_ENV = "PIXXEL_API_URL"
PROTOCOL = "pixxel"


@dataclass(frozen=True)
class _Found:
    """What a path names: a catalog directory, a scene's entry, or nothing."""

    kind: str  # "directory" or "file"
    size: int
    children: tuple[str, ...] = ()
    entry: MemberFile | MemoryFile | None = None
    package: RemotePackage | None = None


class _Core:
    """The read stack, living in the portal's trio thread."""

    def __init__(self, catalog: CatalogService, scenes: SceneStore):
        self.catalog = catalog
        self.scenes = scenes

    async def find(self, path: str) -> _Found | None:
        parts = [p for p in path.split("/") if p]
        tree = await self.catalog.tree()
        for depth in range(len(parts) + 1):
            node = tree.lookup(parts[:depth])
            if node is None:
                return None
            if isinstance(node, SceneNode):
                return await self._in_scene(node, parts[depth:])
            if depth == len(parts):
                assert isinstance(node, DirectoryNode)
                return _Found("directory", 0, tuple(sorted(node.children)))
        return None

    async def _in_scene(self, scene: SceneNode, rest: Sequence[str]) -> _Found | None:
        loaded = await self.scenes.load(scene.catalog.id)
        entry = lookup_entry(scene_root(loaded.root, scene.catalog, {}), rest)
        if isinstance(entry, PackageDir):
            return _Found("directory", 0, tuple(sorted(entry.children)))
        if isinstance(entry, MemberFile):
            return _Found("file", entry.member.size, entry=entry, package=loaded.package)
        if isinstance(entry, MemoryFile):
            return _Found("file", len(entry.data), entry=entry)
        return None

    async def reader(self, found: _Found) -> MemberReader | bytes:
        if isinstance(found.entry, MemoryFile):
            return found.entry.data
        assert isinstance(found.entry, MemberFile) and found.package is not None
        return await found.package.open_member(found.entry.member)


@asynccontextmanager
async def _open_core(config: MountConfig) -> AsyncIterator[_Core]:
    """The mount's stack without FUSE: client, storage, shared store, memory cache, catalog."""
    headers = {"User-Agent": f"pixxelfs/{__version__} fsspec"}
    paths = read_paths(config)
    cache_bytes, behind = block_cache_bytes(config, paths)
    async with (
        PixxelClient(config.api_url, config.api_key, timeout=config.request_timeout) as api,
        httpx.AsyncClient(headers=headers, timeout=config.request_timeout) as storage_http,
        open_shared_store(
            config.shared_cache, account_scope(config.api_url, config.api_key)
        ) as shared,
        BlockCache.open(cache_bytes, config.block_size, write_behind=behind) as cache,
    ):
        resolver = SignedUrlResolver(api if shared is None else shared.downloads(api))
        tiers: list[BlockTier] = [] if shared is None else [shared.block_tier(config.block_size)]
        share = None if shared is None else shared.listings(config.metadata_ttl)
        catalog = CatalogService(api, ttl=config.metadata_ttl, share=share)
        parts = PackageParts(resolver, StorageClient(storage_http), cache, tiers, paths)
        open_package = package_opener(parts, EntryVersions(catalog.current), shared=shared)
        yield _Core(catalog, SceneStore(open_package))


class _Runtime:
    """A trio thread (blocking portal) holding one open :class:`_Core`."""

    def __init__(self, config: MountConfig):
        self._portal_cm: AbstractContextManager[BlockingPortal] = start_blocking_portal("trio")
        self.portal = self._portal_cm.__enter__()
        try:
            self._core_cm = self.portal.wrap_async_context_manager(_open_core(config))
            self.core = self._core_cm.__enter__()
        except BaseException:
            self._portal_cm.__exit__(None, None, None)
            raise

    def close(self) -> None:
        try:
            self._core_cm.__exit__(None, None, None)
        finally:
            self._portal_cm.__exit__(None, None, None)


class PixxelFileSystem(AbstractFileSystem):
    """Read-only fsspec filesystem over a Pixxel catalog (see the module docstring)."""

    protocol = PROTOCOL
    root_marker = ""

    def __init__(
        self,
        api_url: str | None = None,
        api_key: str | None = None,
        *,
        shared_cache: Sequence[str] = (),
        shared_cache_timeout: float = 1.0,
        shared_cache_ttl: float = 86400.0,
        share_signed_urls: bool = False,
        memory_cache_size: int = 256 << 20,
        metadata_ttl: float = 60.0,
        **kwargs: Any,
    ):
        super().__init__(**kwargs)
        shared = None
        if shared_cache:
            shared = SharedCacheConfig(
                tuple(shared_cache),
                timeout=shared_cache_timeout,
                ttl=shared_cache_ttl,
                share_signed_urls=share_signed_urls,
            )
        self._config = MountConfig(
            mountpoint=Path(os.devnull),  # no mount: only the read stack's settings are used
            api_url=api_url or os.environ.get(API_URL_ENV) or DEFAULT_API_URL,
            api_key=api_key or read_api_key(None),
            metadata_ttl=metadata_ttl,
            memory_cache_size=memory_cache_size,
            shared_cache=shared,
        )
        self._runtime: _Runtime | None = None

    def _core_call(self, method: str, *args: Any) -> Any:
        if self._runtime is None:
            self._runtime = _Runtime(self._config)
            weakref.finalize(self, self._runtime.close)
        runtime = self._runtime
        return runtime.portal.call(getattr(runtime.core, method), *args)

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = str(path)
        if path.startswith(f"{PROTOCOL}://"):
            path = path[len(PROTOCOL) + 3 :]
        return path.strip("/")

    def _find(self, path: str) -> _Found:
        path = self._strip_protocol(path)
        found = self._core_call("find", path)
        if found is None:
            raise FileNotFoundError(path)
        return found

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        found = self._find(path)
        return {"name": self._strip_protocol(path), "size": found.size, "type": found.kind}

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        found = self._find(path)
        if found.kind == "file":
            entries = [path]
        else:
            entries = [f"{path}/{name}" if path else name for name in found.children]
        return [self.info(e) for e in entries] if detail else entries

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, **kwargs: Any):
        if mode != "rb":
            raise PermissionError(f"{PROTOCOL}:// is read-only (mode {mode!r})")
        found = self._find(path)
        if found.kind != "file":
            raise IsADirectoryError(path)
        reader = self._core_call("reader", found)
        return PixxelFile(self, self._strip_protocol(path), found.size, reader, **kwargs)

    def _rm(self, path: str) -> None:
        raise PermissionError(f"{PROTOCOL}:// is read-only")

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        raise PermissionError(f"{PROTOCOL}:// is read-only")

    def cp_file(self, path1: str, path2: str, **kwargs: Any) -> None:
        raise PermissionError(f"{PROTOCOL}:// is read-only")


class PixxelFile(AbstractBufferedFile):
    """A member (or ``metadata.json``) opened for reading; ranges come from the core's cache.

    fsspec's own buffering is off (``cache_type="none"``): the core already caches blocks.
    """

    def __init__(
        self,
        fs: PixxelFileSystem,
        path: str,
        size: int,
        reader: MemberReader | bytes,
        **kwargs: Any,
    ):
        kwargs.setdefault("cache_type", "none")
        super().__init__(fs, path, mode="rb", size=size, **kwargs)
        self._reader = reader

    def _fetch_range(self, start: int, end: int) -> bytes:
        if isinstance(self._reader, bytes):
            return self._reader[start:end]
        assert isinstance(self.fs, PixxelFileSystem) and self.fs._runtime is not None
        # exact: a random reader (GDAL) gets whole GeoTIFF tiles rather than blocks.
        read = partial(self._reader.read, start, end - start, exact=True)
        return self.fs._runtime.portal.call(read)
