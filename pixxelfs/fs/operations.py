"""pyfuse3 Operations: the catalog tree and scene files as a read-only filesystem.

This is the only module that raises ``pyfuse3.FUSEError``. Lower layers raise domain errors
(:mod:`pixxelfs.errors`); :meth:`PixxelOperations._errors` maps them through the one errno
table, logs a line naming the operation, path and cause, and turns anything unexpected into
EIO (an escaping exception would stop ``pyfuse3.main``).

Inodes are keyed by path and never reused within a mount, so ``forget`` has nothing to free
that matters: the table holds one small tuple per path ever looked up. Paths are resolved
against the *current* catalog snapshot on every call, so a refreshed catalog is visible as
soon as the kernel's entry/attribute caches (``--metadata-ttl``) expire.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pyfuse3
from cachetools import LRUCache

from pixxelfs.catalog.service import CatalogService
from pixxelfs.catalog.tree import DirectoryNode, SceneNode
from pixxelfs.catalog.xattrs import scene_xattrs
from pixxelfs.errors import PackageChangedError, PixxelfsError, to_errno
from pixxelfs.fs.scene_files import (
    METADATA_NAME,
    MemberFile,
    MemoryFile,
    PackageDir,
    SceneEntry,
    lookup_entry,
    render_metadata,
    scene_root,
)
from pixxelfs.fs.scenes import LoadedScene, SceneStore
from pixxelfs.fs.virtual import NoVirtualEntries, VirtualEntries
from pixxelfs.remote.readahead import MemberHandle, ReadaheadPolicy

log = logging.getLogger(__name__)

Path = tuple[str, ...]
Node = DirectoryNode | SceneNode | SceneEntry
DirEntries = list[tuple[bytes, pyfuse3.EntryAttributes]]

# Directory listings kept between opendir calls, counted in entries (~260 bytes each, so ~26 MB
# at most; a 10,000-scene tree has ~19,000).
LISTING_CACHE_ENTRIES = 100_000


@dataclass(frozen=True)
class Resolved:
    """A path's node, the scene it lies in (None above scene level) and its time."""

    node: Node
    scene: SceneNode | None
    mtime: float

    @classmethod
    def of_catalog(cls, node: DirectoryNode | SceneNode) -> Resolved:
        return cls(node, node if isinstance(node, SceneNode) else None, node.mtime)


@dataclass(frozen=True)
class Listing:
    """A directory's entries as readdir answers them, valid while its node and package are."""

    node: Node
    package: LoadedScene | None
    entries: DirEntries


@dataclass
class OpenFile:
    path: Path
    reader: MemberHandle | None  # None: an in-memory file (metadata.json)
    data: bytes = b""
    catalog_id: str | None = None


class InodeTable:
    """Stable inode numbers for paths, allocated on first sight, never reused in a mount."""

    def __init__(self) -> None:
        self._by_path: dict[Path, int] = {(): pyfuse3.ROOT_INODE}
        self._paths: dict[int, Path] = {pyfuse3.ROOT_INODE: ()}
        self._next = pyfuse3.ROOT_INODE + 1

    def inode(self, path: Path) -> int:
        number = self._by_path.get(path)
        if number is None:
            number = self._next
            self._next += 1
            self._by_path[path] = number
            self._paths[number] = path
        return number

    def path(self, inode: int) -> Path:
        try:
            return self._paths[inode]
        except KeyError:
            raise pyfuse3.FUSEError(errno.ENOENT) from None

    def __len__(self) -> int:
        return len(self._paths)


class PixxelOperations(pyfuse3.Operations):
    """Read-only FUSE view of a Pixxel catalog."""

    def __init__(
        self,
        catalog: CatalogService,
        scenes: SceneStore,
        *,
        metadata_ttl: float,
        block_size: int,
        uid: int | None = None,
        gid: int | None = None,
        virtual: VirtualEntries | None = None,
        readahead: ReadaheadPolicy | None = None,
        direct_io: bool = False,
        stub_reads: bool = False,
    ) -> None:
        super().__init__()
        # Per-handle read paths; direct_io trades the page cache for large FUSE reads;
        # stub_reads (benchmarks only) answers package files with zeros, nothing remote.
        self.readahead = readahead or ReadaheadPolicy()
        self.direct_io = direct_io
        self.stub_reads = stub_reads
        self.catalog = catalog
        self.scenes = scenes
        self.virtual = virtual or NoVirtualEntries()
        self.ttl = metadata_ttl
        self.block_size = block_size
        self.uid = os.getuid() if uid is None else uid
        self.gid = os.getgid() if gid is None else gid
        self.inodes = InodeTable()
        self._files: dict[int, OpenFile] = {}
        self._dirs: dict[int, DirEntries] = {}
        # By directory inode: a catalog refresh or a package reload brings new node objects,
        # so an identity check is the whole invalidation.
        self._listings: LRUCache[int, Listing] = LRUCache(
            LISTING_CACHE_ENTRIES, getsizeof=lambda listing: len(listing.entries) + 1
        )
        self._next_handle = 1
        # Package identity last served per inode: keep the kernel page cache only while it holds.
        self._served: dict[int, object] = {}
        # Errors returned to callers, by errno name (for stats.json).
        self.errors: Counter[str] = Counter()

    # ---- errors --------------------------------------------------------------------------

    @contextmanager
    def _errors(self, operation: str, path: Path) -> Iterator[None]:
        """Map domain errors to errno with one log line; unexpected ones become EIO."""
        try:
            yield
        except pyfuse3.FUSEError:
            raise
        except PixxelfsError as exc:
            number = to_errno(exc)
            self.errors[errno.errorcode.get(number, str(number))] += 1
            log.warning(
                "%s /%s: %s: %s (-> %s)",
                operation,
                "/".join(path),
                type(exc).__name__,
                exc,
                errno.errorcode.get(number, number),
            )
            raise pyfuse3.FUSEError(number) from None
        except Exception:
            log.exception("%s /%s: unexpected error (-> EIO)", operation, "/".join(path))
            self.errors["EIO"] += 1
            raise pyfuse3.FUSEError(errno.EIO) from None

    @contextmanager
    def _forget_changed(self, catalog_id: str | None) -> Iterator[None]:
        """A package that changed is dropped, so the next open loads the new version."""
        try:
            yield
        except PackageChangedError:
            if catalog_id is not None:
                self.scenes.forget(catalog_id)
            raise

    # ---- resolution ----------------------------------------------------------------------

    async def _resolve(self, path: Path) -> Resolved | None:
        tree = await self.catalog.tree()
        node: DirectoryNode | SceneNode = tree.root
        for depth, name in enumerate(path):
            if isinstance(node, SceneNode):
                return await self._resolve_in_scene(node, path[depth:])
            child = node.children.get(name)
            if child is None:
                return self._resolve_virtual(node, path[:depth], name, path[depth + 1 :])
            node = child
        return Resolved.of_catalog(node)

    def _resolve_virtual(
        self, parent: DirectoryNode, parent_path: Path, name: str, rest: Path
    ) -> Resolved | None:
        extra = self.virtual.in_directory(parent_path, parent).get(name)
        entry = None if extra is None else lookup_entry(PackageDir({name: extra}), (name, *rest))
        return None if entry is None else Resolved(entry, None, parent.mtime)

    async def _resolve_in_scene(self, scene: SceneNode, rest: Sequence[str]) -> Resolved | None:
        if tuple(rest) == (METADATA_NAME,):
            entry: SceneEntry | None = MemoryFile(render_metadata(scene.catalog))  # no package
        else:
            entry = lookup_entry(await self._scene_root(scene), rest)
        return None if entry is None else Resolved(entry, scene, scene.mtime)

    async def _scene_root(self, scene: SceneNode) -> PackageDir:
        """The scene directory's entries; the first call loads the package's ZIP directory."""
        loaded = await self.scenes.load(scene.catalog.id)
        return scene_root(loaded.root, scene.catalog, self.virtual.in_scene(scene, loaded.root))

    async def _must_resolve(self, path: Path) -> Resolved:
        resolved = await self._resolve(path)
        if resolved is None:
            raise pyfuse3.FUSEError(errno.ENOENT)
        return resolved

    # ---- attributes ----------------------------------------------------------------------

    def _attributes(self, inode: int, resolved: Resolved) -> pyfuse3.EntryAttributes:
        node = resolved.node
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(inode)
        attrs.entry_timeout = self.ttl
        attrs.attr_timeout = self.ttl
        attrs.st_uid = self.uid
        attrs.st_gid = self.gid
        attrs.st_blksize = self.block_size
        if isinstance(node, MemoryFile | MemberFile):
            size = len(node.data) if isinstance(node, MemoryFile) else node.member.size
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFREG | 0o444)
            attrs.st_nlink = 1
            attrs.st_size = size
            attrs.st_blocks = (size + 511) // 512
        else:
            attrs.st_mode = pyfuse3.ModeT(stat.S_IFDIR | 0o555)
            attrs.st_nlink = 2
            attrs.st_size = 0
        stamp = int(resolved.mtime * 1e9)
        attrs.st_atime_ns = attrs.st_mtime_ns = attrs.st_ctime_ns = stamp
        return attrs

    async def getattr(self, inode, ctx=None):
        path = self.inodes.path(inode)
        with self._errors("getattr", path):
            return self._attributes(inode, await self._must_resolve(path))

    async def lookup(self, parent_inode, name, ctx=None):
        path = (*self.inodes.path(parent_inode), os.fsdecode(name))
        with self._errors("lookup", path):
            resolved = await self._resolve(path)
            if resolved is None:
                return self._negative_entry()
            return self._attributes(self.inodes.inode(path), resolved)

    def _negative_entry(self) -> pyfuse3.EntryAttributes:
        """A missing name that the kernel caches for the TTL (st_ino 0); ENOENT is not cached.

        GIS tools probe a dozen sidecars (``.aux.xml``, ``.ovr``, ``.msk``, ...) on every open:
        the kernel answers repeats itself, and no inode is allocated for names that do not exist.
        """
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = pyfuse3.InodeT(0)
        attrs.entry_timeout = self.ttl
        return attrs

    # ---- directories ---------------------------------------------------------------------

    async def _children(self, path: Path, resolved: Resolved) -> list[tuple[str, Resolved]]:
        node = resolved.node
        if isinstance(node, DirectoryNode):
            extra = {
                name: Resolved(entry, None, node.mtime)
                for name, entry in self.virtual.in_directory(path, node).items()
            }
            real = {name: Resolved.of_catalog(child) for name, child in node.children.items()}
            return sorted({**extra, **real}.items())
        if isinstance(node, SceneNode):
            root = await self._scene_root(node)
            return [
                (name, Resolved(entry, node, node.mtime)) for name, entry in root.children.items()
            ]
        if isinstance(node, PackageDir):
            return [
                (name, Resolved(entry, resolved.scene, resolved.mtime))
                for name, entry in node.children.items()
            ]
        raise pyfuse3.FUSEError(errno.ENOTDIR)

    async def _listing(self, inode: int, path: Path) -> DirEntries:
        """The directory's entries, built once per catalog tree and package version.

        A warm ``find`` opens thousands of directories; without this each opendir resolved
        and built every child's attributes again (pyfuse3 cannot let the kernel cache them).
        """
        resolved = await self._must_resolve(path)
        node = resolved.node
        package = None
        if isinstance(node, SceneNode):
            package = await self.scenes.load(node.catalog.id)
        cached = self._listings.get(inode)
        if cached is not None and cached.node is node and cached.package is package:
            return cached.entries
        entries = [
            (name.encode("utf-8"), self._attributes(self.inodes.inode((*path, name)), child))
            for name, child in await self._children(path, resolved)
        ]
        self._listings[inode] = Listing(node, package, entries)
        return entries

    async def opendir(self, inode, ctx=None):
        path = self.inodes.path(inode)
        with self._errors("opendir", path):
            listing = await self._listing(inode, path)
            handle = self._new_handle()
            self._dirs[handle] = listing
            return pyfuse3.FileHandleT(handle)

    async def readdir(self, fh, start_id, token):
        listing = self._dirs.get(fh)
        if listing is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        for position in range(start_id, len(listing)):
            name, attrs = listing[position]
            if not pyfuse3.readdir_reply(token, name, attrs, position + 1):
                break

    async def releasedir(self, fh):
        self._dirs.pop(fh, None)

    # ---- files ---------------------------------------------------------------------------

    def _new_handle(self) -> int:
        handle = self._next_handle
        self._next_handle += 1
        return handle

    async def open(self, inode, flags, ctx=None):
        path = self.inodes.path(inode)
        if flags & os.O_ACCMODE != os.O_RDONLY or flags & os.O_TRUNC:
            raise pyfuse3.FUSEError(errno.EROFS)
        with self._errors("open", path):
            resolved = await self._must_resolve(path)
            node = resolved.node
            handle = self._new_handle()
            if isinstance(node, MemoryFile):
                self._files[handle] = OpenFile(path, None, node.data)
                # A volatile file (stats.json) changes size: direct_io, never a stale size.
                return pyfuse3.FileInfo(fh=handle, keep_cache=False, direct_io=node.volatile)
            if not isinstance(node, MemberFile) or resolved.scene is None:
                raise pyfuse3.FUSEError(errno.EISDIR)
            catalog_id = resolved.scene.catalog.id
            loaded = await self.scenes.load(catalog_id)
            with self._forget_changed(catalog_id):
                reader = await loaded.package.open_member(node.member)
            member_handle = MemberHandle(reader, self.readahead)
            self._files[handle] = OpenFile(path, member_handle, catalog_id=catalog_id)
            identity = loaded.package.source.identity
            keep = self._served.get(inode) == identity
            self._served[inode] = identity
            return pyfuse3.FileInfo(fh=handle, keep_cache=keep, direct_io=self.direct_io)

    async def read(self, fh, off, size):
        handle = self._files.get(fh)
        if handle is None:
            raise pyfuse3.FUSEError(errno.EBADF)
        if handle.reader is None:
            return handle.data[off : off + size]
        if self.stub_reads:
            return bytes(max(0, min(size, handle.reader.reader.size - off)))
        with self._errors("read", handle.path), self._forget_changed(handle.catalog_id):
            return await handle.reader.read(off, size)

    async def release(self, fh):
        self._files.pop(fh, None)

    # ---- extended attributes -------------------------------------------------------------

    async def _xattrs(self, inode: int) -> dict[str, bytes]:
        path = self.inodes.path(inode)
        with self._errors("xattr", path):
            resolved = await self._must_resolve(path)
            return {} if resolved.scene is None else scene_xattrs(resolved.scene.catalog)

    async def getxattr(self, inode, name, ctx=None):
        if not name.startswith(b"user."):
            # `ls -l` asks every entry for its SELinux label and ACLs: never ours, so no lookup.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        value = (await self._xattrs(inode)).get(os.fsdecode(name))
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    async def listxattr(self, inode, ctx=None):
        return [name.encode("utf-8") for name in await self._xattrs(inode)]

    # ---- the filesystem as a whole -------------------------------------------------------

    async def statfs(self, ctx=None):
        stats = pyfuse3.StatvfsData()
        stats.f_bsize = self.block_size
        stats.f_frsize = self.block_size
        stats.f_blocks = stats.f_bfree = stats.f_bavail = 0
        tree = self.catalog.current()
        stats.f_files = tree.scene_count if tree is not None else 0
        stats.f_ffree = stats.f_favail = 0
        stats.f_namemax = 255
        return stats

    # ---- everything that would write: a read-only filesystem -----------------------------

    async def _read_only(self, *_args, **_kwargs):
        raise pyfuse3.FUSEError(errno.EROFS)

    setattr = mknod = mkdir = unlink = rmdir = symlink = rename = link = _read_only
    write = create = setxattr = removexattr = _read_only
