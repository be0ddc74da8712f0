"""Delivery packages (ZIP files) on disk: built on first use, cached, versioned, single-flighted.

A package is identified by ``(catalog id, version)``; :meth:`PackageStore.replace` bumps the
version, which changes the bytes and therefore the ETag. File names carry a fingerprint of every
setting that affects the bytes, so a ``--data-dir`` cache survives restarts safely. Builds run in
a worker thread (``trio.to_thread``) and concurrent requests for the same package share one build.
A download of several scenes gets one combined ZIP holding every scene's members.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from pixxelfs.emulator import hostile, rasters
from pixxelfs.emulator.config import EmulatorConfig
from pixxelfs.emulator.stac import Member, footprint_geometry, members, stac_item
from pixxelfs.emulator.world import Scene, World

log = logging.getLogger(__name__)

_COPY_CHUNK = 1 << 20
_BINARY_SUFFIXES = (".tif", ".jpg")


@dataclass(frozen=True)
class PackageInfo:
    """A built package: where it is and the validators the storage route advertises."""

    path: Path
    size: int
    etag: str
    modified: dt.datetime


class PackageStore:
    """Builds and remembers packages; every method runs in the server's trio thread."""

    def __init__(self, world: World, config: EmulatorConfig, cache_dir: Path) -> None:
        self.world = world
        self.config = config
        self.cache_dir = cache_dir
        self.versions: dict[str, int] = {}
        self.modified: dict[str, dt.datetime] = {}
        self._ready: dict[tuple[str, ...], PackageInfo] = {}
        self._inflight: dict[tuple[str, ...], trio.Event] = {}

    def version(self, catalog_id: str) -> int:
        return self.versions.get(catalog_id, 0)

    def replace(self, catalog_id: str, now: dt.datetime | None = None) -> int:
        """Publish new bytes for a scene; old signed URLs then see the new ETag."""
        if catalog_id not in self.world.by_id:
            raise KeyError(catalog_id)
        self.versions[catalog_id] = self.version(catalog_id) + 1
        self.modified[catalog_id] = now or dt.datetime.now(dt.UTC)
        return self.versions[catalog_id]

    async def ensure(self, catalog_id: str) -> PackageInfo:
        """The current package of one scene (KeyError if the scene is unknown)."""
        scene = self.world.by_id[catalog_id]
        version = self.version(catalog_id)
        key = (catalog_id, str(version))
        return await self._single_flight(key, lambda: self._build_scene(scene, version))

    async def ensure_crafted(self, catalog_id: str, names: tuple[str, ...]) -> PackageInfo:
        """A package whose members are called exactly ``names`` (see :mod:`.hostile`)."""
        key = ("crafted", catalog_id, *names)
        return await self._single_flight(key, lambda: self._build_crafted(key, names))

    async def ensure_combined(self, download_id: str, catalog_ids: list[str]) -> PackageInfo:
        """One ZIP with every listed scene's members (for multi-scene downloads)."""
        parts = [await self.ensure(cid) for cid in catalog_ids]
        key = ("combined", download_id, *(p.etag for p in parts))
        return await self._single_flight(key, lambda: self._build_combined(key, parts))

    async def _single_flight(
        self, key: tuple[str, ...], build: Callable[[], PackageInfo]
    ) -> PackageInfo:
        while key not in self._ready:
            event = self._inflight.get(key)
            if event is None:
                event = self._inflight[key] = trio.Event()
                try:
                    self._ready[key] = await trio.to_thread.run_sync(build)
                finally:
                    del self._inflight[key]
                    event.set()
            else:
                await event.wait()  # if that build failed, the loop tries again
        return self._ready[key]

    # -- building (worker thread) -----------------------------------------------------------------

    def _fingerprint(self, scene: Scene, version: int) -> str:
        c = self.config
        parts: list[object] = [
            c.seed, scene.index, scene.item_id, scene.width, scene.height, scene.bands,
            c.tile_size, c.cog_compress, c.compression, version, "v1",
        ]  # fmt: skip
        if scene.source_tif is not None:
            stat = scene.source_tif.stat()
            parts += [str(scene.source_tif), stat.st_size, stat.st_mtime_ns]
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]

    def _build_scene(self, scene: Scene, version: int) -> PackageInfo:
        path = self.cache_dir / f"{scene.id}-{self._fingerprint(scene, version)}.zip"
        if not path.exists():
            log.info("building package for %s (version %d)", scene.item_id, version)
            _atomic_write(path, lambda tmp: self._write_scene_zip(scene, version, tmp))
        modified = self.modified.get(scene.id, scene.created)
        return _info(path, version, modified)

    def _write_scene_zip(self, scene: Scene, version: int, dest: Path) -> None:
        with tempfile.TemporaryDirectory(dir=self.cache_dir) as tmp:
            files = self._member_files(scene, version, Path(tmp))
            with zipfile.ZipFile(dest, "w", allowZip64=True) as zf:
                for member in members(scene):
                    _add_file(
                        zf, member.path, files[member.key], scene.created, self._method(member)
                    )

    def _member_files(self, scene: Scene, version: int, tmp: Path) -> dict[str, Path]:
        field = rasters.SyntheticField(scene, self.config.seed, version)
        tile = rasters.effective_tile(scene.width, scene.height, self.config.tile_size)
        compress = self.config.cog_compress
        files: dict[str, Path] = {}
        for member in members(scene):
            target = tmp / Path(member.path).name
            if member.key == "reflectance" and scene.source_tif is not None:
                target = scene.source_tif
            elif member.key == "reflectance":
                rasters.write_reflectance(field, scene, target, tile, compress)
            elif member.key == "quality_mask":
                rasters.write_quality_mask(field, scene, target, tile, compress)
            elif member.key == "thumbnail":
                rasters.write_thumbnail(field, scene, target)
            else:
                target.write_bytes(self._sidecar(member, scene, version))
            files[member.key] = target
        return files

    def _sidecar(self, member: Member, scene: Scene, version: int) -> bytes:
        if member.key == "footprint":
            feature = {
                "type": "Feature",
                "id": scene.item_id,
                "bbox": list(scene.bbox),
                "geometry": footprint_geometry(scene),
                "properties": {"item_id": scene.item_id, "catalog_id": scene.id},
            }
            return (json.dumps(feature, indent=2) + "\n").encode()
        document = {
            "item": stac_item(scene),
            "package": {"version": version, "producer": "pixxelfs emulator", "level": "L2A"},
        }
        return (json.dumps(document, indent=2) + "\n").encode()

    def _method(self, member: Member) -> int:
        mode = self.config.compression
        if mode == "stored" or (mode == "default" and member.path.endswith(_BINARY_SUFFIXES)):
            return zipfile.ZIP_STORED
        return zipfile.ZIP_DEFLATED

    def _build_crafted(self, key: tuple[str, ...], names: tuple[str, ...]) -> PackageInfo:
        digest = hashlib.sha256(repr(key).encode("utf-8", "surrogatepass")).hexdigest()[:16]
        path = self.cache_dir / f"crafted-{key[1]}-{digest}.zip"
        if not path.exists():
            _atomic_write(path, lambda tmp: hostile.write_package(tmp, names))
        return _info(path, 0, dt.datetime(2025, 1, 1, tzinfo=dt.UTC))

    def _build_combined(self, key: tuple[str, ...], parts: list[PackageInfo]) -> PackageInfo:
        digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
        path = self.cache_dir / f"combined-{key[1]}-{digest}.zip"
        if not path.exists():
            _atomic_write(path, lambda tmp: _merge_zips(tmp, [p.path for p in parts]))
        return _info(path, 0, max(p.modified for p in parts))


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write via a temporary sibling and rename, so readers never see half a package."""
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".zip")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _add_file(zf: zipfile.ZipFile, name: str, src: Path, when: dt.datetime, method: int) -> None:
    info = zipfile.ZipInfo(name, date_time=when.timetuple()[:6])
    info.compress_type = method
    info.external_attr = 0o644 << 16
    info.file_size = src.stat().st_size  # lets zipfile choose ZIP64 for large members up front
    with src.open("rb") as fin, zf.open(info, "w") as fout:
        shutil.copyfileobj(fin, fout, _COPY_CHUNK)


def _merge_zips(dest: Path, sources: list[Path]) -> None:
    with zipfile.ZipFile(dest, "w", allowZip64=True) as out:
        for source in sources:
            with zipfile.ZipFile(source) as zin:
                for info in zin.infolist():
                    copy = zipfile.ZipInfo(info.filename, date_time=info.date_time)
                    copy.compress_type, copy.external_attr = info.compress_type, info.external_attr
                    copy.file_size = info.file_size
                    with zin.open(info) as fin, out.open(copy, "w") as fout:
                        shutil.copyfileobj(fin, fout, _COPY_CHUNK)


def _info(path: Path, version: int, modified: dt.datetime) -> PackageInfo:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_COPY_CHUNK):
            digest.update(chunk)
    etag = f'"{digest.hexdigest()[:32]}-{version}"'
    return PackageInfo(path=path, size=path.stat().st_size, etag=etag, modified=modified)
