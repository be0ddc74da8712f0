"""Synthetic imagery: reflectance and QA-mask Cloud-Optimized GeoTIFFs and an RGB thumbnail.

Pixels come from a smooth analytic field (sines plus a red-edge spectrum), so any window can be
computed on its own: the reflectance GeoTIFF is written strip by strip and a 1 GiB scene never has
to sit in memory. The COG is made with GDAL's COG driver from a tiled GTiff, uncompressed by
default so package sizes are predictable. Output is byte-for-byte reproducible for a given scene,
seed and package version.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window

from pixxelfs.emulator.stac import wavelengths
from pixxelfs.emulator.world import Scene

QA_CLOUD, QA_SHADOW, QA_WATER, QA_HAZE = 1, 2, 4, 8
THUMBNAIL_SIZE = 256


class SyntheticField:
    """A deterministic, smooth function of (band, row, col) for one scene and package version."""

    def __init__(self, scene: Scene, seed: int, version: int) -> None:
        rng = np.random.default_rng([seed, scene.index, version])
        size = max(scene.width, scene.height)
        self.freq = rng.uniform(1.5, 4.0, size=2) / size
        self.phase = rng.uniform(0.0, 2 * math.pi, size=3)
        centres = np.array(wavelengths(scene.bands))
        # Vegetation-like spectrum: low in the visible, a red edge near 710 nm, high in the NIR.
        self.spectrum = 0.08 + 0.4 / (1.0 + np.exp(-(centres - 710.0) / 15.0))

    def base(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Structure in [-1.5, 1.5] on the grid ``rows x cols``."""
        y = rows[:, None].astype(np.float64)
        x = cols[None, :].astype(np.float64)
        fy, fx = self.freq
        p0, p1, p2 = self.phase
        wave = np.sin(2 * math.pi * fx * x + p0) * np.cos(2 * math.pi * fy * y + p1)
        return wave + 0.5 * np.sin(math.pi * (fx + fy) * (x + y) + p2)

    def reflectance(self, bands: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """uint16 reflectance scaled 0..50000, never 0 (0 is nodata)."""
        base = self.base(rows, cols)
        scaled = self.spectrum[bands, None, None] * (1.0 + 0.4 * base[None, :, :]) * 50000.0
        return np.clip(scaled, 1, 50000).astype(np.uint16)

    def quality(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        base = self.base(rows, cols)
        shadow = self.base(rows + 7, cols + 7)
        mask = np.where(base > 1.0, QA_CLOUD, 0)
        mask |= np.where((shadow > 1.0) & (base <= 1.0), QA_SHADOW, 0)
        mask |= np.where(base < -1.0, QA_WATER, 0)
        mask |= np.where((base > 0.8) & (base <= 1.0), QA_HAZE, 0)
        return mask.astype(np.uint8)


def effective_tile(width: int, height: int, tile: int) -> int:
    """The configured tile size, shrunk to 128 for scenes no larger than one tile.

    A 128x128 scene in 256 px tiles would be mostly padding; 128 is the smallest block GDAL's COG
    driver accepts without complaint.
    """
    if max(width, height) > tile or tile <= 128:
        return tile
    return 128


def overview_count(width: int, height: int, tile: int) -> int:
    """Halvings until the image fits one tile; at least one so even tiny test scenes have one."""
    size, count = max(width, height), 0
    while size > tile:
        size, count = (size + 1) // 2, count + 1
    return max(1, count) if max(width, height) >= 2 else 0


def _profile(scene: Scene, count: int, dtype: str, tile: int) -> dict[str, object]:
    return {
        "driver": "GTiff",
        "width": scene.width,
        "height": scene.height,
        "count": count,
        "dtype": dtype,
        "crs": CRS.from_epsg(scene.epsg),
        "transform": Affine(*scene.transform),
        "tiled": True,
        "blockxsize": tile,
        "blockysize": tile,
        "nodata": 0 if dtype == "uint16" else None,
        "BIGTIFF": "IF_SAFER",
    }


def _to_cog(src: Path, dst: Path, scene: Scene, tile: int, compress: str, resampling: str) -> None:
    rasterio.shutil.copy(
        src,
        dst,
        driver="COG",
        COMPRESS=compress,
        BLOCKSIZE=tile,
        OVERVIEW_COUNT=overview_count(scene.width, scene.height, tile),
        OVERVIEW_RESAMPLING=resampling,
        BIGTIFF="IF_SAFER",
    )


def write_reflectance(
    field: SyntheticField, scene: Scene, dst: Path, tile: int, compress: str
) -> None:
    """The multi-band uint16 reflectance COG, produced strip by strip through a temporary GTiff."""
    plain = dst.with_suffix(".plain.tif")
    all_bands = np.arange(scene.bands)
    cols = np.arange(scene.width)
    with rasterio.open(plain, "w", **_profile(scene, scene.bands, "uint16", tile)) as out:
        for top in range(0, scene.height, tile):
            rows = np.arange(top, min(top + tile, scene.height))
            data = field.reflectance(all_bands, rows, cols)
            out.write(data, window=Window(0, top, scene.width, len(rows)))
    _to_cog(plain, dst, scene, tile, compress, "AVERAGE")
    plain.unlink()


def write_quality_mask(
    field: SyntheticField, scene: Scene, dst: Path, tile: int, compress: str
) -> None:
    plain = dst.with_suffix(".plain.tif")
    cols = np.arange(scene.width)
    with rasterio.open(plain, "w", **_profile(scene, 1, "uint8", tile)) as out:
        for top in range(0, scene.height, tile):
            rows = np.arange(top, min(top + tile, scene.height))
            out.write(
                field.quality(rows, cols)[None], window=Window(0, top, scene.width, len(rows))
            )
    _to_cog(plain, dst, scene, tile, compress, "NEAREST")  # averaging bit flags is meaningless
    plain.unlink()


def write_thumbnail(field: SyntheticField, scene: Scene, dst: Path) -> None:
    """An RGB JPEG at most 256 px on its long side, sampled from the field (not the COG)."""
    step = max(1, math.ceil(max(scene.width, scene.height) / THUMBNAIL_SIZE))
    rows, cols = np.arange(0, scene.height, step), np.arange(0, scene.width, step)
    centres = np.array(wavelengths(scene.bands))
    rgb_bands = np.array([int(np.abs(centres - w).argmin()) for w in (650.0, 550.0, 480.0)])
    refl = field.reflectance(rgb_bands, rows, cols).astype(np.float64)
    rgb = np.clip(refl / refl.max() * 255.0, 0, 255).astype(np.uint8)
    mem_profile = {"driver": "GTiff", "width": len(cols), "height": len(rows), "count": 3}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)  # a preview has no georeference
        with (
            rasterio.Env(GDAL_PAM_ENABLED="NO"),
            rasterio.MemoryFile() as memfile,
            memfile.open(**mem_profile, dtype="uint8") as mem,
        ):
            mem.write(rgb)
            rasterio.shutil.copy(mem, dst, driver="JPEG", QUALITY=85)
