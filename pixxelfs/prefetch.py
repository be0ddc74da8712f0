"""``pixxelfs prefetch``: warm a mount's disk cache by reading files through the mount.

Reading through the mount (rather than talking to the daemon) keeps this simple and exactly
right: the daemon fetches, verifies and caches the blocks as for any reader, already cached
blocks cost a local disk read (so an interrupted prefetch resumes cheaply), and nothing here
needs the API key. Files are read in chunks by a pool of threads, so large files and many
small files both keep several range requests in flight. ``--overviews-only`` reads a GeoTIFF's
header, IFDs and overview tiles only: what a GIS viewer needs for its first render.

Progress goes to stdout: one self-updating line on a terminal, plain lines otherwise. The
summary names every file that was skipped and why; bytes downloaded from storage come from the
mount's ``.pixxelfs/stats.json`` before and after.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from pixxelfs.errors import ConfigError
from pixxelfs.fs.control import CONTROL_DIR, STATS_FILE
from pixxelfs.remote.cog import HEADER_PROBE, NeedMoreBytes, parse_layout

CHUNK = 4 << 20
READ_SIZE = 1 << 20
DEFAULT_JOBS = 8
GEOTIFF_SUFFIXES = (".tif", ".tiff")
# Plain progress lines (not a terminal) at most this often, in seconds.
PLAIN_INTERVAL = 1.0
TTY_INTERVAL = 0.2


@dataclass(frozen=True)
class Job:
    """Byte ranges of one file to read."""

    path: Path
    ranges: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(end - start for start, end in self.ranges)


@dataclass
class Outcome:
    done_files: int = 0
    skipped: list[tuple[Path, str]] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


def mount_root(path: Path) -> Path:
    """The pixxelfs mount holding ``path`` (ConfigError if there is none)."""
    path = path.absolute()
    if not path.exists():
        raise ConfigError(f"{path} does not exist")
    for candidate in (path, *path.parents):
        if os.path.ismount(candidate):
            if (candidate / CONTROL_DIR / STATS_FILE).exists():
                return candidate
            break
    raise ConfigError(f"{path} is not inside a pixxelfs mount")


def read_stats(root: Path) -> dict | None:
    """The mount's statistics (``.pixxelfs/stats.json``), None if unreadable."""
    try:
        return json.loads((root / CONTROL_DIR / STATS_FILE).read_bytes())
    except (OSError, ValueError):
        return None


def storage_bytes(roots: Iterable[Path]) -> int | None:
    """Bytes the mounts have downloaded from storage so far (None if unknown)."""
    total = 0
    for root in roots:
        stats = read_stats(root)
        if stats is None or "storage" not in stats:
            return None
        total += int(stats["storage"]["bytes_fetched"])
    return total


def files_under(path: Path, root: Path) -> Iterator[Path]:
    """Regular files at or below ``path``; the mount's hidden control folder is left out."""
    if path.is_file():
        yield path
        return
    for folder, dirs, names in os.walk(path):
        if Path(folder) == root:
            dirs[:] = [d for d in dirs if not d.startswith(".")]
        dirs.sort()
        for name in sorted(names):
            yield Path(folder) / name


def _pread(fd: int, start: int, end: int, on_bytes: Callable[[int], None]) -> bytes:
    parts: list[bytes] = []
    position = start
    while position < end:
        data = os.pread(fd, min(READ_SIZE, end - position), position)
        if not data:
            break
        parts.append(data)
        position += len(data)
        on_bytes(len(data))
    return b"".join(parts)


def overview_ranges(path: Path, size: int) -> list[tuple[int, int]] | None:
    """The header + IFD bytes and the overview tiles of a GeoTIFF, or None if not one.

    Reading the header here already brings it into the cache.
    """
    probe = min(HEADER_PROBE, size)
    with open(path, "rb", buffering=0) as stream:
        while probe:
            data = _pread(stream.fileno(), 0, probe, lambda _n: None)
            try:
                layout = parse_layout(data, size)
            except NeedMoreBytes as more:
                if probe >= size:
                    return None
                probe = min(size, max(more.size, 2 * probe))
                continue
            if layout is None:
                return None
            return [(0, layout.header_end), *layout.overview_ranges(size)]
    return None


def plan(paths: Iterable[Path], overviews_only: bool) -> tuple[list[Job], Outcome]:
    """What to read: every file under ``paths`` (whole, or its overviews)."""
    jobs: list[Job] = []
    outcome = Outcome()
    seen: set[Path] = set()
    for given in paths:
        root = mount_root(given)
        for path in files_under(given.absolute(), root):
            if path in seen:
                continue
            seen.add(path)
            try:
                job = _job(path, overviews_only)
            except OSError as exc:
                outcome.failed.append((path, exc.strerror or str(exc)))
                continue
            if job is None:
                outcome.skipped.append((path, "not a GeoTIFF with overviews"))
            else:
                jobs.append(job)
    return jobs, outcome


def _job(path: Path, overviews_only: bool) -> Job | None:
    size = path.stat().st_size
    if not overviews_only:
        return Job(path, ((0, size),) if size else ())
    if not path.name.lower().endswith(GEOTIFF_SUFFIXES):
        return None
    ranges = overview_ranges(path, size)
    return None if ranges is None else Job(path, tuple(ranges))


def _chunks(jobs: list[Job]) -> Iterator[tuple[Job, int, int]]:
    for job in jobs:
        for start, end in job.ranges:
            for position in range(start, end, CHUNK):
                yield job, position, min(position + CHUNK, end)


class Progress:
    """Bytes done of a total, with rate and ETA; one updating line on a terminal."""

    def __init__(self, total: int, files: int, out: TextIO, *, tty: bool | None = None):
        self.total = total
        self.files = files
        self.done = 0
        self.files_done = 0
        self._out = out
        self._tty = out.isatty() if tty is None else tty
        self._started = time.monotonic()
        self._shown = -math.inf
        self._lock = threading.Lock()

    def add(self, count: int) -> None:
        with self._lock:
            self.done += count
            self._maybe_show()

    def file_done(self) -> None:
        with self._lock:
            self.files_done += 1
            self._maybe_show()

    def finish(self) -> None:
        with self._lock:
            self._show()
            if self._tty:
                self._out.write("\n")
            self._out.flush()

    def elapsed(self) -> float:
        return time.monotonic() - self._started

    def _maybe_show(self) -> None:
        interval = TTY_INTERVAL if self._tty else PLAIN_INTERVAL
        if time.monotonic() - self._shown >= interval:
            self._show()

    def _show(self) -> None:
        self._shown = time.monotonic()
        line = self.line()
        if self._tty:
            self._out.write("\r\x1b[K" + line)
        else:
            self._out.write(line + "\n")
        self._out.flush()

    def line(self) -> str:
        elapsed = max(self.elapsed(), 1e-6)
        rate = self.done / elapsed
        percent = 100.0 * self.done / self.total if self.total else 100.0
        left = self.total - self.done
        eta = _clock(left / rate) if rate > 0 and left > 0 else "0:00"
        return (
            f"prefetch {percent:5.1f}%  {human(self.done)} of {human(self.total)}  "
            f"{human(rate)}/s  ETA {eta}  ({self.files_done}/{self.files} files)"
        )


def human(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def read_all(jobs: list[Job], outcome: Outcome, progress: Progress, workers: int) -> None:
    """Read every chunk with ``workers`` threads; a file's first error skips the rest of it."""
    remaining = {job.path: sum(1 for _ in _chunks([job])) for job in jobs}
    errors: dict[Path, str] = {}
    lock = threading.Lock()

    def chunk_done(job: Job) -> None:
        with lock:
            remaining[job.path] -= 1
            finished = remaining[job.path] == 0
        if finished and job.path not in errors:
            outcome.done_files += 1
            progress.file_done()

    def read(job: Job, start: int, end: int) -> None:
        try:
            if job.path not in errors:
                with open(job.path, "rb", buffering=0) as stream:
                    _pread(stream.fileno(), start, end, progress.add)
        except OSError as exc:
            with lock:
                errors.setdefault(job.path, exc.strerror or str(exc))
        chunk_done(job)

    for job in jobs:
        if not job.ranges:
            outcome.done_files += 1
            progress.file_done()
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for future in [pool.submit(read, *chunk) for chunk in _chunks(jobs)]:
            future.result()
    outcome.failed.extend(sorted(errors.items()))


def prefetch(
    paths: list[Path], *, overviews_only: bool, workers: int = DEFAULT_JOBS, out: TextIO
) -> int:
    """Run a prefetch; returns the exit status (1 if any file could not be read)."""
    jobs, outcome = plan(paths, overviews_only)
    roots = {mount_root(path) for path in paths}
    before = storage_bytes(roots)
    progress = Progress(sum(job.size for job in jobs), len(jobs), out)
    read_all(jobs, outcome, progress, workers)
    progress.finish()
    after = storage_bytes(roots)
    _summary(outcome, progress, None if before is None or after is None else after - before, out)
    return 1 if outcome.failed else 0


def _summary(outcome: Outcome, progress: Progress, downloaded: int | None, out: TextIO) -> None:
    elapsed = progress.elapsed()
    line = (
        f"prefetched {outcome.done_files} file(s), {human(progress.done)} in {elapsed:.1f} s "
        f"({human(progress.done / max(elapsed, 1e-6))}/s)"
    )
    if downloaded is not None:
        line += f"; downloaded {human(downloaded)} from storage"
    print(line, file=out)
    for path, reason in outcome.skipped:
        print(f"skipped {path}: {reason}", file=out)
    for path, reason in outcome.failed:
        print(f"failed {path}: {reason}", file=out)
    out.flush()
