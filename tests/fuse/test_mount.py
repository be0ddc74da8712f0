"""The catalog mounted for real: tree, bytes, GDAL, errors, xattrs, concurrency."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import shutil
import subprocess
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.fuse.util import Mount

pytestmark = pytest.mark.fuse


def _api(emulator) -> httpx.Client:
    return httpx.Client(base_url=emulator.base_url, headers={"Authorization": emulator.api_key})


def _catalog_entries(emulator) -> list[dict]:
    with _api(emulator) as api:
        body = api.post("/v0/catalogs/search", json={"limit": 1000}).raise_for_status().json()
    return body["catalogs"]


def _expected_scene_dirs(emulator) -> dict[str, tuple[str, ...]]:
    """catalog id -> expected path, joined independently of pixxelfs from the emulator's API."""
    with _api(emulator) as api:
        projects = api.get("/v0/projects", params={"page_num": 1, "page_size": 1000}).json()
        items = api.get("/v0/order-items", params={"limit": 1000}).json()["order_items"]
    names = {p["id"]: p["name"] for p in projects["projects"]}
    by_task = {t["id"]: item for item in items for t in item.get("tasks") or []}
    expected = {}
    for entry in _catalog_entries(emulator):
        scene = entry["details"]["id"]
        date = entry["details"]["properties"]["datetime"][:10]
        item = by_task.get(entry["task_id"])
        if item is None:
            continue  # placed under _unassigned/, checked separately
        expected[entry["id"]] = (names[item["project_id"]], item["usecase"], date, scene)
    return expected


def _scene_dirs(mountpoint: Path) -> dict[str, Path]:
    """catalog id -> scene directory, found by walking the tree without entering scenes."""
    scenes = {}
    for top, dirs, _files in os.walk(mountpoint):
        if "user.pixxel.catalog_id" in os.listxattr(top):
            scenes[os.getxattr(top, "user.pixxel.catalog_id").decode()] = Path(top)
            dirs.clear()
    return scenes


def _scene_dir(mounted: Mount, emulator, catalog_id: str) -> Path:
    return _scene_dirs(mounted.mountpoint)[catalog_id]


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _source_members(emulator, catalog_id: str) -> dict[str, bytes]:
    with zipfile.ZipFile(emulator.package_path(catalog_id)) as package:
        members = [info for info in package.infolist() if not info.is_dir()]
        return {info.filename: package.read(info) for info in members}


def test_tree_matches_the_catalog_join(mounted: Mount, emulator) -> None:
    expected = _expected_scene_dirs(emulator)
    assert expected, "the emulator should place most scenes"
    found = subprocess.run(
        ["find", str(mounted.mountpoint), "-mindepth", "4", "-maxdepth", "4", "-type", "d"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    relative = {tuple(Path(p).relative_to(mounted.mountpoint).parts) for p in found}
    for path in expected.values():
        assert path in relative
    scenes = _scene_dirs(mounted.mountpoint)
    assert set(scenes) == {entry["id"] for entry in _catalog_entries(emulator)}
    for catalog_id, path in scenes.items():
        if catalog_id not in expected:
            assert path.relative_to(mounted.mountpoint).parts[0] == "_unassigned"


def test_scene_files_are_byte_identical_after_cp_r(mounted: Mount, emulator, tmp_path) -> None:
    catalog_id = emulator.catalog_ids()[0]
    scene = _scene_dir(mounted, emulator, catalog_id)
    shutil.copytree(scene, tmp_path / "copy")
    source = _source_members(emulator, catalog_id)
    copied = {
        str(p.relative_to(tmp_path / "copy")): p.read_bytes()
        for p in (tmp_path / "copy").rglob("*")
        if p.is_file()
    }
    metadata = copied.pop("metadata.json")
    views = [k for k in copied if k == "item.json" or k.endswith("_TRUE_COLOUR.vrt")]
    assert len(views) == 2  # the GIS views; tests/fuse/test_gis.py checks their content
    for name in views:
        del copied[name]
    assert {k: _sha256(v) for k, v in copied.items()} == {k: _sha256(v) for k, v in source.items()}
    with _api(emulator) as api:
        entry = api.get(f"/v0/catalogs/{catalog_id}").json()
    assert json.loads(metadata) == entry
    assert metadata.endswith(b"\n")
    assert (scene / "metadata.json").stat().st_size == len(metadata)


def test_stat_sizes_modes_and_owner(mounted: Mount, emulator) -> None:
    catalog_id = emulator.catalog_ids()[1]
    scene = _scene_dir(mounted, emulator, catalog_id)
    source = _source_members(emulator, catalog_id)
    for name, data in source.items():
        info = (scene / name).stat()
        assert info.st_size == len(data)
        assert info.st_mode & 0o777 == 0o444
        assert info.st_uid == os.getuid()
    assert scene.stat().st_mode & 0o777 == 0o555


def test_random_offset_reads(mounted: Mount, emulator) -> None:
    catalog_id = emulator.catalog_ids()[2]
    scene = _scene_dir(mounted, emulator, catalog_id)
    rng = random.Random(7)
    for name, data in _source_members(emulator, catalog_id).items():
        fd = os.open(scene / name, os.O_RDONLY)
        try:
            for _ in range(25):
                offset = rng.randrange(0, len(data) + 10)
                size = rng.choice([1, 17, 4096, 65536, 300_000])
                assert os.pread(fd, size, offset) == data[offset : offset + size]
        finally:
            os.close(fd)


def test_rasterio_reads_the_same_arrays_as_the_package(mounted: Mount, emulator) -> None:
    rasterio = pytest.importorskip("rasterio")
    catalog_id = emulator.catalog_ids()[3]
    scene = _scene_dir(mounted, emulator, catalog_id)
    (tif,) = scene.rglob("*_L2A_SR.tif")
    member = str(tif.relative_to(scene))
    with (
        rasterio.open(tif) as mounted_ds,
        rasterio.open(f"/vsizip/{emulator.package_path(catalog_id)}/{member}") as source_ds,
    ):
        assert mounted_ds.crs == source_ds.crs
        assert mounted_ds.transform == source_ds.transform
        assert mounted_ds.overviews(1) == source_ds.overviews(1)
        assert (mounted_ds.read() == source_ds.read()).all()
    result = subprocess.run(["gdalinfo", str(tif)], capture_output=True, text=True, check=True)
    assert "Driver: GTiff" in result.stdout
    assert "Overviews" in result.stdout


def test_writes_are_refused_and_missing_names_are_enoent(mounted: Mount, emulator) -> None:
    scene = _scene_dir(mounted, emulator, emulator.catalog_ids()[0])
    for attempt in (
        lambda: open(scene / "metadata.json", "w"),  # noqa: SIM115
        lambda: open(scene / "new-file", "w"),  # noqa: SIM115
        lambda: os.mkdir(scene / "new-dir"),
        lambda: os.unlink(scene / "metadata.json"),
        lambda: os.rename(scene / "metadata.json", scene / "x.json"),
    ):
        with pytest.raises(OSError) as caught:
            attempt()
        assert caught.value.errno == errno.EROFS
    with pytest.raises(FileNotFoundError):
        (mounted.mountpoint / "no-such-project").stat()
    with pytest.raises(FileNotFoundError):
        (scene / "no-such-file.tif").stat()


def test_xattrs_describe_the_scene(mounted: Mount, emulator) -> None:
    entry = _catalog_entries(emulator)[0]
    scene = _scene_dir(mounted, emulator, entry["id"])
    names = set(os.listxattr(scene))
    assert {"user.pixxel.catalog_id", "user.stac.id", "user.stac.eo:cloud_cover"} <= names
    assert os.getxattr(scene, "user.stac.id").decode() == entry["details"]["id"]
    cloud = float(os.getxattr(scene, "user.stac.eo:cloud_cover"))
    assert cloud == pytest.approx(entry["details"]["properties"]["eo:cloud_cover"])
    tif = next(scene.rglob("*.tif"))
    assert os.getxattr(tif, "user.pixxel.catalog_id").decode() == entry["id"]
    dump = subprocess.run(
        ["getfattr", "-d", str(scene)], capture_output=True, text=True, check=True
    )
    assert entry["id"] in dump.stdout


def test_concurrent_readers_share_one_fetch_per_block(mounted: Mount, emulator) -> None:
    catalog_ids = emulator.catalog_ids()[4:6]
    scenes = [_scene_dir(mounted, emulator, cid) for cid in catalog_ids]
    files = [next(s.rglob("*_L2A_SR.tif")) for s in scenes]
    expected = {
        f: _source_members(emulator, cid)[str(f.relative_to(s))]
        for f, s, cid in zip(files, scenes, catalog_ids, strict=True)
    }
    emulator.reset_stats()
    jobs = [files[i % 2] for i in range(8)]
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda f: f.read_bytes(), jobs))
    for path, data in zip(jobs, results, strict=True):
        assert data == expected[path]
    gets = emulator.stats()["storage_gets"]
    ranges = [(r["package"], r["start"], r["end"]) for r in gets if r["status"] == 206]
    assert ranges, "the reads should have fetched from storage"
    assert len(ranges) == len(set(ranges)), "a block was fetched more than once"
