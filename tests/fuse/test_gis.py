"""GIS clients on a real mount: pystac, GDAL's command-line tools and (if installed) QGIS.

Everything read through the mount is compared with the original package member, which GDAL
reads straight from the emulator's ZIP through ``/vsizip/``.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio

from pixxelfs.views.vrt import WHITE_REFLECTANCE
from tests.fuse.util import Mount, mount, require_fuse, unmounted_after
from tests.stac_offline import offline_validation

pytestmark = pytest.mark.fuse
# No PAM sidecar writes (the mount is read-only) and no network, as on a locked-down host.
GDAL_ENV = {**os.environ, "GDAL_PAM_ENABLED": "NO", "GDAL_HTTP_TIMEOUT": "1"}
KNOWN_VRT_WRITE = re.compile(r"^ERROR 4: Failed to open .*_TRUE_COLOUR\.vrt to write\.$")
WINDOW = ("-srcwin", "17", "33", "64", "48")


@pytest.fixture(scope="module")
def gis_mount(emulator, tmp_path_factory) -> Iterator[Mount]:
    """A mount with a long TTL (no catalog refresh mid-test) and libfuse request logging."""
    require_fuse()
    if shutil.which("gdalinfo") is None:
        pytest.skip("gdal-bin is not installed")
    mountpoint = tmp_path_factory.mktemp("gis")
    with unmounted_after(
        mount(mountpoint, emulator.base_url, emulator.api_key, "--metadata-ttl", "600", "--debug"),
        clean_log=True,
    ) as m:
        yield m


@pytest.fixture(scope="module")
def scene(gis_mount: Mount, emulator) -> dict:
    """The first scene with a VRT: its directory, GeoTIFF, VRT and original package."""
    scene_dir = next(p.parent for p in sorted(gis_mount.mountpoint.glob("*/*/*/*/item.json")))
    item = json.loads((scene_dir / "item.json").read_text())
    tif = scene_dir / item["assets"]["reflectance"]["href"]
    catalog_id = json.loads((scene_dir / "metadata.json").read_text())["id"]
    package = emulator.package_path(catalog_id)
    member = next(n for n in zipfile.ZipFile(package).namelist() if n.endswith("_L2A_SR.tif"))
    return {
        "dir": scene_dir,
        "tif": tif,
        "vrt": next(scene_dir.glob("*_TRUE_COLOUR.vrt")),
        "original": f"/vsizip/{package}/{member}",
        "package": package,
        "member": member,
    }


def _run(*command: str | Path) -> str:
    result = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, env=GDAL_ENV, timeout=120
    )
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stderr.splitlines() if "ERROR" in line]
    # GDAL 3.6 stores computed statistics inside a VRT and says so when it cannot: harmless.
    assert all(KNOWN_VRT_WRITE.search(line) for line in errors), result.stderr
    return result.stdout


def _band_stats(path: str | Path) -> list[dict]:
    info = json.loads(_run("gdalinfo", "-json", "-stats", path))
    return [
        {k: band[k] for k in ("minimum", "maximum", "mean", "stdDev") if k in band}
        for band in info["bands"]
    ]


def _translate(source: str | Path, dest: Path, *options: str) -> np.ndarray:
    _run("gdal_translate", "-q", *options, source, dest)
    with rasterio.open(dest) as out:
        return out.read()


def test_stac_catalog_walks_and_validates_offline(gis_mount: Mount, emulator) -> None:
    with offline_validation() as validator:
        root = pystac.Catalog.from_file(str(gis_mount.mountpoint / "catalog.json"))
        items = list(root.get_items(recursive=True))
        assert root.validate_all() == len(items)
    assert all(item.properties["datetime"] for item in items)
    assert len(items) == len(emulator.catalog_ids())
    assert any("/eo/" in uri for uri in validator.checked_extensions)
    item = items[0]
    reflectance = Path(item.assets["reflectance"].get_absolute_href())
    catalog_id = json.loads((reflectance.parents[1] / "metadata.json").read_text())["id"]
    with zipfile.ZipFile(emulator.package_path(catalog_id)) as package:
        member = next(n for n in package.namelist() if n.endswith("_L2A_SR.tif"))
        expected = hashlib.sha256(package.read(member)).hexdigest()
    assert hashlib.sha256(reflectance.read_bytes()).hexdigest() == expected


def test_gdal_reads_the_geotiff_like_the_original(scene: dict, tmp_path: Path) -> None:
    assert _band_stats(scene["tif"]) == _band_stats(scene["original"])
    mounted = _translate(scene["tif"], tmp_path / "mounted.tif", *WINDOW)
    original = _translate(scene["original"], tmp_path / "original.tif", *WINDOW)
    assert mounted.shape == original.shape and mounted.shape[1:] == (48, 64)
    assert hashlib.sha256(mounted).digest() == hashlib.sha256(original).digest()


def _expected_true_colour(scene: dict, window: tuple[int, int, int, int]) -> np.ndarray:
    """Bytes 1..255 for reflectance 0..0.3 (0 stays nodata), computed from the original."""
    info = json.loads(_run("gdalinfo", "-json", scene["vrt"]))
    bands = [int(b["description"].split()[0].lstrip("B")) for b in info["bands"]]
    xoff, yoff, width, height = window
    with rasterio.open(scene["original"]) as src:
        raw = src.read(bands, window=((yoff, yoff + height), (xoff, xoff + width)))
    reflectance = raw * 0.00002
    scaled = np.clip(np.round(1 + reflectance * 254 / WHITE_REFLECTANCE), 0, 255)
    return np.where(raw == 0, 0, scaled).astype(np.uint8)


def test_true_colour_vrt_opens_in_gdal_with_physical_scaling(scene: dict, tmp_path: Path) -> None:
    info = json.loads(_run("gdalinfo", "-json", "-stats", scene["vrt"]))
    assert [b["colorInterpretation"] for b in info["bands"]] == ["Red", "Green", "Blue"]
    assert all(b["type"] == "Byte" and b["scale"] > 0 for b in info["bands"])
    assert "32" in info["coordinateSystem"]["wkt"]
    window = tuple(int(v) for v in WINDOW[1:])
    pixels = _translate(scene["vrt"], tmp_path / "rgb.tif", *WINDOW)
    expected = _expected_true_colour(scene, window)
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= 1
    physical = _translate(
        scene["vrt"], tmp_path / "refl.tif", *WINDOW, "-unscale", "-ot", "Float32"
    )
    step = WHITE_REFLECTANCE / 254
    assert np.allclose(physical, (expected.astype(np.float64) - 1) * step, atol=step * 1.01)


def _lookups(m: Mount) -> int:
    return m.log().count("opcode: LOOKUP")


def test_sidecar_probes_cost_nothing_remote_and_are_cached(
    gis_mount: Mount, scene: dict, emulator
) -> None:
    scene["tif"].read_bytes()  # warm the block cache: what remains is GDAL's probing
    _run("gdalinfo", scene["tif"])
    emulator.reset_stats()
    for path in (scene["tif"], scene["vrt"]):
        _run("gdalinfo", "-stats", "-json", path)
    stats = emulator.stats()
    assert stats["requests"] == {} and stats["storage_gets"] == [], stats
    sidecar = Path(f"{scene['tif']}.{uuid.uuid4().hex}.aux.xml")  # a name no tool probed yet
    before = _lookups(gis_mount)
    assert not sidecar.exists()
    first = _lookups(gis_mount)
    assert not sidecar.exists()
    assert first == before + 1, "the missing name was not looked up once"
    assert _lookups(gis_mount) == first, "the kernel did not cache the negative entry"


def test_qgis_computes_statistics_of_the_mounted_vrt(scene: dict, tmp_path: Path) -> None:
    qgis = shutil.which("qgis_process.bin")
    if qgis is None:
        pytest.skip("QGIS is not installed (scripts/setup installs it)")
    result = subprocess.run(
        [
            qgis,
            "run",
            "native:rasterlayerstatistics",
            "--",
            f"INPUT={scene['vrt']}",
            "BAND=1",
            f"OUTPUT_HTML_FILE={tmp_path / 'stats.html'}",
        ],
        capture_output=True,
        text=True,
        env={**GDAL_ENV, "QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path)},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    values = dict(line.split(":\t", 1) for line in result.stdout.splitlines() if ":\t" in line)
    expected = _expected_true_colour(scene, (0, 0, *_size(scene["vrt"])))[0]
    step = WHITE_REFLECTANCE / 254
    assert float(values["MIN"]) == pytest.approx(
        (expected[expected > 0].min() - 1) * step, abs=step
    )
    assert float(values["MAX"]) == pytest.approx((expected.max() - 1) * step, abs=step)


def _size(path: Path) -> tuple[int, int]:
    with rasterio.open(path) as dataset:
        return dataset.width, dataset.height
