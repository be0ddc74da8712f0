"""One GIS workload in a fresh process (so GDAL's caches start cold): prints JSON with seconds.

    bench_gis.py windows PATH COUNT              COUNT random 256x256 windows of band 1
    bench_gis.py overview PATH                   the whole image at its smallest useful overview
    bench_gis.py sequential PATH                 every block of band order, in file order
    bench_gis.py open PATH                       open + header (what gdalinfo needs)

PATH is a file (a mount, a local copy) or a GDAL path such as /vsizip//vsicurl/URL/member.
"""

from __future__ import annotations

import json
import random
import sys
import time

import rasterio
from rasterio.windows import Window

# What a GIS user would set for /vsicurl/: no directory listing, larger merged reads.
GDAL_ENV = {"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR", "GDAL_HTTP_MULTIRANGE": "YES"}


def windows(path: str, count: int) -> float:
    rng = random.Random(42)
    with rasterio.open(path) as src:
        spots = [
            (rng.randrange(0, src.width - 256), rng.randrange(0, src.height - 256))
            for _ in range(count)
        ]
        started = time.perf_counter()
        for col, row in spots:
            src.read(1, window=Window(col, row, 256, 256))
        return time.perf_counter() - started


def overview(path: str) -> float:
    started = time.perf_counter()
    with rasterio.open(path) as src:
        factor = max(src.width, src.height) // 256 or 1
        src.read(1, out_shape=(max(1, src.height // factor), max(1, src.width // factor)))
    return time.perf_counter() - started


def sequential(path: str) -> float:
    started = time.perf_counter()
    with rasterio.open(path) as src:
        for _, window in src.block_windows(1):
            src.read(window=window)
    return time.perf_counter() - started


def open_header(path: str) -> float:
    started = time.perf_counter()
    with rasterio.open(path) as src:
        src.profile  # noqa: B018 - reading the header is the point
    return time.perf_counter() - started


def main(argv: list[str]) -> int:
    mode, path, *rest = argv
    with rasterio.Env(**GDAL_ENV):
        if mode == "windows":
            seconds = windows(path, int(rest[0]))
        elif mode == "overview":
            seconds = overview(path)
        elif mode == "sequential":
            seconds = sequential(path)
        else:
            seconds = open_header(path)
    print(json.dumps({"seconds": seconds}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
