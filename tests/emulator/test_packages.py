"""Generated packages: members, compression modes, valid COGs readable straight from the ZIP."""

from __future__ import annotations

import json
import warnings
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.errors import NotGeoreferencedWarning

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator
from pixxelfs.emulator.rasters import effective_tile, overview_count


@pytest.fixture(scope="module", params=["stored", "deflated"])
def mode_emulator(request: pytest.FixtureRequest) -> Iterator[Emulator]:
    config = EmulatorConfig(
        seed=5, scenes=2, width=96, height=80, bands=4, compression=request.param
    )
    with running_emulator(config) as emu:
        yield emu


def _members(path: Path) -> dict[str, zipfile.ZipInfo]:
    with zipfile.ZipFile(path) as zf:
        return {Path(i.filename).name.split("_")[-1]: i for i in zf.infolist()}


def test_default_mode_stores_rasters_and_deflates_text(emulator: Emulator) -> None:
    catalog = emulator.catalog_ids()[0]
    members = _members(emulator.package_path(catalog))
    assert set(members) == {
        "SR.tif",
        "MASK.tif",
        "THUMBNAIL.jpg",
        "FOOTPRINT.geojson",
        "METADATA.json",
    }
    for name in ("SR.tif", "MASK.tif", "THUMBNAIL.jpg"):
        assert members[name].compress_type == zipfile.ZIP_STORED
    for name in ("FOOTPRINT.geojson", "METADATA.json"):
        assert members[name].compress_type == zipfile.ZIP_DEFLATED


def test_members_live_under_the_item_folder(emulator: Emulator) -> None:
    for catalog in emulator.catalog_ids()[:3]:
        with zipfile.ZipFile(emulator.package_path(catalog)) as zf:
            folders = {name.split("/")[0] for name in zf.namelist()}
        assert len(folders) == 1 and next(iter(folders)).startswith("FF0")


def _open_member(path: Path, suffix: str) -> rasterio.DatasetReader:
    with zipfile.ZipFile(path) as zf:
        name = next(n for n in zf.namelist() if n.endswith(suffix))
    return rasterio.open(f"/vsizip/{path}/{name}")


def test_every_member_type_in_each_mode(mode_emulator: Emulator) -> None:
    config = mode_emulator.config
    expected = zipfile.ZIP_STORED if config.compression == "stored" else zipfile.ZIP_DEFLATED
    catalog = mode_emulator.catalog_ids()[0]
    path = mode_emulator.package_path(catalog)
    assert {i.compress_type for i in _members(path).values()} == {expected}
    metadata = json.loads(zipfile.ZipFile(path).read(_name(path, "_METADATA.json")))
    item = metadata["item"]
    with _open_member(path, "_L2A_SR.tif") as src:
        assert (src.count, src.height, src.width) == (4, 80, 96)
        assert src.dtypes == ("uint16",) * 4 and src.nodata == 0
        assert src.crs.to_epsg() == item["properties"]["proj:epsg"]
        assert list(src.transform)[:6] == item["properties"]["proj:transform"]
        assert src.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert src.profile["tiled"] and src.overviews(1)
        data = src.read()
        assert data.min() > 0 and data.max() <= 50000 and np.unique(data).size > 100
    with _open_member(path, "_QA_MASK.tif") as qa:
        assert qa.dtypes == ("uint8",) and qa.tags(ns="IMAGE_STRUCTURE")["LAYOUT"] == "COG"
        assert qa.overviews(1) and qa.read().max() <= 15
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with _open_member(path, "_THUMBNAIL.jpg") as jpg:
            assert jpg.driver == "JPEG" and jpg.count == 3
    footprint = json.loads(zipfile.ZipFile(path).read(_name(path, "_FOOTPRINT.geojson")))
    assert footprint["geometry"] == item["geometry"]


def _name(path: Path, suffix: str) -> str:
    return next(n for n in zipfile.ZipFile(path).namelist() if n.endswith(suffix))


def test_packages_are_reproducible(mode_emulator: Emulator) -> None:
    """Same seed and settings give the same bytes, so ETags survive restarts."""
    catalog = mode_emulator.catalog_ids()[1]
    with running_emulator(mode_emulator.config) as twin:
        assert twin.package_path(catalog).read_bytes() == (
            mode_emulator.package_path(catalog).read_bytes()
        )


def test_tiny_scene_tiling() -> None:
    assert effective_tile(128, 128, 256) == 128
    assert effective_tile(4096, 4096, 256) == 256
    assert overview_count(4096, 4096, 256) == 4
    assert overview_count(100, 100, 64) == 1


def test_user_geotiffs_become_scenes(tmp_path: Path) -> None:
    profile = {
        "driver": "GTiff", "width": 40, "height": 30, "count": 2, "dtype": "uint16",
        "crs": "EPSG:32633", "transform": rasterio.Affine(10, 0, 400000, 0, -10, 5000000),
    }  # fmt: skip
    data = np.arange(2 * 30 * 40, dtype=np.uint16).reshape(2, 30, 40)
    with rasterio.open(tmp_path / "my scene.tif", "w", **profile) as dst:
        dst.write(data)
    config = EmulatorConfig(scenes=1, data_dir=tmp_path)
    with running_emulator(config) as emu:
        ids = emu.catalog_ids()
        assert len(ids) == 2
        user = [i for i in ids if "my_scene" in zipfile.ZipFile(emu.package_path(i)).namelist()[0]]
        with _open_member(emu.package_path(user[0]), "_L2A_SR.tif") as src:
            assert (src.read() == data).all() and src.crs.to_epsg() == 32633
