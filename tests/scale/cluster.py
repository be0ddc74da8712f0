"""Helpers of the multi-mount tests: N mounts on one shared cache, origin accounting, sources.

Origin amplification A = origin bytes served / unique package bytes touched, both taken from
the emulator's record of storage GETs, so it is an exact count, not a timing.
"""

from __future__ import annotations

import hashlib
import struct
import zipfile
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.fuse.util import Mount, assert_clean_log, cleanup, mount, require_fuse, unmount

CHUNK = 1 << 20


@dataclass(frozen=True)
class OriginBytes:
    """Storage GETs of one run: bytes served and unique bytes touched."""

    served: int
    unique: int
    requests: int

    @property
    def amplification(self) -> float:
        return self.served / self.unique if self.unique else 0.0


def origin_bytes(storage_gets: Iterable[dict[str, Any]]) -> OriginBytes:
    """Served and unique bytes of the successful GETs (``end`` is inclusive)."""
    ranges = sorted((g["start"], g["end"] + 1) for g in storage_gets if g["status"] in (200, 206))
    served = sum(end - start for start, end in ranges)
    unique, reach = 0, 0
    for start, end in ranges:
        if end > reach:
            unique += end - max(start, reach)
            reach = end
    return OriginBytes(served, unique, len(ranges))


def gets_covering(storage_gets: Iterable[dict[str, Any]], offset: int) -> int:
    """How many successful GETs included package byte ``offset``."""
    return sum(
        1 for g in storage_gets if g["status"] in (200, 206) and g["start"] <= offset <= g["end"]
    )


def member_data_offset(package: Path, name: str) -> int:
    """Where member ``name``'s bytes start in the package (after its local header)."""
    with zipfile.ZipFile(package) as zf:
        info = zf.getinfo(name)
    with package.open("rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_length, extra_length = struct.unpack_from("<HH", header, 26)
    return info.header_offset + 30 + name_length + extra_length


def member_sha256(package: Path, name: str) -> str:
    digest = hashlib.sha256()
    with zipfile.ZipFile(package) as zf, zf.open(name) as member:
        while chunk := member.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path, start: int = 0, size: int | None = None) -> str:
    """SHA-256 of ``size`` bytes of ``path`` from ``start`` (to the end if None)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(start)
        left = size
        while left is None or left > 0:
            chunk = f.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            digest.update(chunk)
            if left is not None:
                left -= len(chunk)
    return digest.hexdigest()


def in_parallel(calls: Sequence[Any]) -> list[Any]:
    """Run the zero-argument ``calls`` in threads at once; their results in order."""
    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return [f.result() for f in [pool.submit(call) for call in calls]]


@contextmanager
def cluster(
    root: Path, api_url: str, api_key: str, redis_urls: Sequence[str], count: int = 4, *extra: str
) -> Iterator[list[Mount]]:
    """``count`` mounts (separate daemons, mountpoints and disk caches) sharing ``redis_urls``."""
    require_fuse()
    options = [arg for url in redis_urls for arg in ("--shared-cache", url)]
    nodes = []
    for n in range(count):
        point, cache = root / f"node{n}", root / f"cache{n}"
        point.mkdir(parents=True)
        nodes.append((point, ("--cache-dir", str(cache))))
    mounts: list[Mount] = []
    try:
        mounts = in_parallel(
            [lambda p=p, c=c: mount(p, api_url, api_key, *c, *options, *extra) for p, c in nodes]
        )
        yield mounts
    except BaseException:
        for m in mounts:
            cleanup(m)
        raise
    for m in mounts:
        unmount(m)
        assert_clean_log(m)


def find_member(mountpoint: Path, suffix: str) -> Path:
    """The one file below ``mountpoint`` whose name ends with ``suffix``."""
    found = sorted(mountpoint.glob(f"*/*/*/*/*/*{suffix}"))
    assert len(found) == 1, found
    return found[0]
