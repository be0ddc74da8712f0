"""``pixxel://`` (fsspec) over the read stack: listing, bytes, rasterio ``opener=``, Dask workers.

The Dask test runs two worker processes (``LocalCluster(processes=True)``) that read windows of
one COG through ``pixxel://`` with a shared redis-server: the arrays must equal the source and
the origin amplification across both workers must stay <= 1.05.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterator
from pathlib import Path

import fsspec
import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator
from pixxelfs.fsspec_fs import PixxelFileSystem
from tests.scale.cluster import member_sha256, origin_bytes
from tests.scale.redis_server import RedisServer

REFLECTANCE = "_L2A_SR.tif"
WINDOWS = [Window(col, row, 200, 200) for col in (0, 300, 700) for row in (0, 400, 800)]


@pytest.fixture(scope="module")
def cog_emulator(tmp_path_factory) -> Iterator[Emulator]:
    """One scene with a 1024 x 1024 x 8-band COG (a 16 MiB member)."""
    config = EmulatorConfig(
        seed=9, scenes=1, projects=1, width=1024, height=1024, bands=8,
        data_dir=tmp_path_factory.mktemp("cog-packages"),
    )  # fmt: skip
    with running_emulator(config) as emu:
        yield emu


def reflectance(fs: PixxelFileSystem) -> str:
    (path,) = [p for p in fs.find("") if p.endswith(REFLECTANCE)]
    return path


def source(emulator: Emulator) -> tuple[Path, str]:
    (catalog_id,) = emulator.catalog_ids()
    package = emulator.package_path(catalog_id)
    (name,) = [n for n in zipfile.ZipFile(package).namelist() if n.endswith(REFLECTANCE)]
    return package, name


def read_window(fs: PixxelFileSystem, path: str, window: Window) -> np.ndarray:
    with rasterio.open(f"pixxel://{path}", opener=fs.open) as ds:
        return ds.read(window=window)


def test_the_catalog_reads_through_fsspec(cog_emulator):
    fs = fsspec.filesystem("pixxel", api_url=cog_emulator.base_url, api_key=cog_emulator.api_key)
    assert isinstance(fs, PixxelFileSystem)
    path = reflectance(fs)
    package, name = source(cog_emulator)
    with fs.open(path) as f:
        import hashlib

        assert hashlib.sha256(f.read()).hexdigest() == member_sha256(package, name)
    scene = path.rsplit("/", 2)[0]
    assert fs.info(scene)["type"] == "directory"
    assert "metadata.json" in [p.rsplit("/", 1)[-1] for p in fs.ls(scene, detail=False)]
    with zipfile.ZipFile(package) as zf, zf.open(name) as member:
        expected_size = len(member.read())
    assert fs.info(f"pixxel://{path}")["size"] == expected_size
    with rasterio.open(f"zip://{package}!{name}") as ds:
        expected = ds.read(window=WINDOWS[4])
    np.testing.assert_array_equal(read_window(fs, path, WINDOWS[4]), expected)
    with pytest.raises(FileNotFoundError):
        fs.info(f"{scene}/no-such-file")
    with pytest.raises(PermissionError):
        fs.open(path, "wb")


def test_two_dask_worker_processes_share_blocks_through_redis(
    cog_emulator, redis_server: RedisServer
):
    distributed = pytest.importorskip("distributed")
    fs = PixxelFileSystem(
        cog_emulator.base_url,
        cog_emulator.api_key,
        shared_cache=[redis_server.url],
        skip_instance_cache=True,
    )
    path = reflectance(fs)
    package, name = source(cog_emulator)
    with rasterio.open(f"zip://{package}!{name}") as ds:
        expected = [ds.read(window=w) for w in WINDOWS]
    cog_emulator.reset_stats()
    with (
        distributed.LocalCluster(
            n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        workers = sorted(client.scheduler_info()["workers"])
        assert len(workers) == 2
        futures = [
            client.submit(read_window, fs, path, w, workers=[workers[i % 2]], pure=False)
            for i, w in enumerate(WINDOWS)
        ]
        arrays = client.gather(futures)
    for got, want in zip(arrays, expected, strict=True):
        np.testing.assert_array_equal(got, want)
    origin = origin_bytes(cog_emulator.stats()["storage_gets"])
    assert origin.amplification <= 1.05, origin


# rioxarray multiplies affine transforms with `*`, which affine 2.4+ marks as pending deprecation.
@pytest.mark.filterwarnings("ignore:Use `@` matmul:PendingDeprecationWarning")
def test_rioxarray_opens_a_scene_through_pixxel_urls(cog_emulator):
    """xarray users: ``rioxarray.open_rasterio`` on a ``pixxel://`` file object."""
    rioxarray = pytest.importorskip("rioxarray")
    fs = fsspec.filesystem("pixxel", api_url=cog_emulator.base_url, api_key=cog_emulator.api_key)
    package, name = source(cog_emulator)
    with rasterio.open(f"zip://{package}!{name}") as ds:
        expected, crs, transform = ds.read(window=WINDOWS[2]), ds.crs, ds.transform
    with fs.open(reflectance(fs)) as f, rioxarray.open_rasterio(f) as data:
        assert data.rio.crs == crs
        assert data.rio.transform() == transform
        window = WINDOWS[2]
        rows = slice(window.row_off, window.row_off + window.height)
        cols = slice(window.col_off, window.col_off + window.width)
        np.testing.assert_array_equal(data.isel(y=rows, x=cols).values, expected)
