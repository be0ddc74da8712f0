"""The command line of the disk cache: mount options and the prefetch, cache and stats commands.

``cli`` calls in here, so the cache's options and commands live in one place:

    pixxelfs mount ... [--cache-dir DIR] [--cache-size BYTES] [--offline]
    pixxelfs prefetch PATH... [--overviews-only] [--jobs N]
    pixxelfs cache status [--cache-dir DIR]
    pixxelfs cache clear [--cache-dir DIR] [--older-than 7d]
    pixxelfs stats MOUNTPOINT

``cache`` works on the cache dir directly, with or without mounts running; ``stats`` and
``prefetch`` work through a mount.
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
from pathlib import Path
from typing import Any

from pixxelfs.catalog.snapshot import SNAPSHOT_NAME, age_of
from pixxelfs.config import default_cache_dir, duration_argument, size_argument
from pixxelfs.errors import ConfigError
from pixxelfs.fs.control import CONTROL_DIR, STATS_FILE
from pixxelfs.prefetch import DEFAULT_JOBS, human, prefetch
from pixxelfs.remote.block_store import BlockStore, usage
from pixxelfs.remote.disk_cache import BLOCKS, PACKAGES, accounts

COMMANDS = ("prefetch", "cache", "stats")
DEFAULT_CACHE_SIZE = 20 << 30


def add_mount_options(parser: argparse.ArgumentParser) -> None:
    """``--cache-dir``, ``--cache-size``, ``--offline`` for ``pixxelfs mount``."""
    _add_cache_dir(parser)
    parser.add_argument(
        "--cache-size",
        type=size_argument,
        default=DEFAULT_CACHE_SIZE,
        metavar="BYTES",
        help="disk cache limit, e.g. 20G; 0 turns the disk cache off (default: 20G)",
    )
    parser.add_argument(
        "--offline",
        action="store_true",
        help="serve the last catalog snapshot and cached bytes only; never use the network",
    )


def _add_cache_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        metavar="DIR",
        help="disk cache folder (default: $XDG_CACHE_HOME/pixxelfs or ~/.cache/pixxelfs)",
    )


def mount_settings(args: argparse.Namespace) -> dict[str, Any]:
    """MountConfig fields from the options (``demo`` has none: memory only)."""
    size = getattr(args, "cache_size", 0)
    cache_dir = getattr(args, "cache_dir", None) or default_cache_dir()
    return {
        "cache_dir": cache_dir.absolute() if size else None,
        "cache_size": size,
        "offline": getattr(args, "offline", False),
    }


def add_commands(commands: argparse._SubParsersAction) -> None:
    """The ``prefetch``, ``cache`` and ``stats`` commands."""
    warm = commands.add_parser(
        "prefetch",
        help="read files of a mount into its disk cache",
        description="Download files, scenes or whole folders of a mounted catalog into the "
        "disk cache (resumable: cached blocks are not downloaded again).",
    )
    warm.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="inside a mount")
    warm.add_argument(
        "--overviews-only",
        action="store_true",
        help="GeoTIFFs: only the header and overview levels (a viewer's first render)",
    )
    warm.add_argument(
        "--jobs",
        type=int,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"parallel reads (default: {DEFAULT_JOBS})",
    )

    cache = commands.add_parser(
        "cache",
        help="show or clear the disk cache",
        description="Inspect or clear the disk cache (mounts may keep running).",
    )
    actions = cache.add_subparsers(dest="cache_action", required=True, metavar="ACTION")
    _add_cache_dir(actions.add_parser("status", help="what the cache holds, per account"))
    clear = actions.add_parser("clear", help="delete cached data")
    _add_cache_dir(clear)
    clear.add_argument(
        "--older-than",
        type=duration_argument,
        metavar="AGE",
        help="only what was not used for AGE, e.g. 7d, 12h, 30m (default: everything)",
    )

    stats = commands.add_parser("stats", help="print a mount's statistics (JSON)")
    stats.add_argument("mountpoint", type=Path)


def run(args: argparse.Namespace) -> int:
    if args.command == "prefetch":
        if args.jobs < 1:
            raise ConfigError("--jobs must be at least 1")
        return prefetch(
            args.paths, overviews_only=args.overviews_only, workers=args.jobs, out=sys.stdout
        )
    if args.command == "stats":
        return _print_stats(args.mountpoint)
    root = args.cache_dir or default_cache_dir()
    if args.cache_action == "status":
        return _status(root)
    return _clear(root, args.older_than)


def _print_stats(mountpoint: Path) -> int:
    path = mountpoint / CONTROL_DIR / STATS_FILE
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{mountpoint} is not a pixxelfs mount (no {path})") from None
    sys.stdout.write(data.decode())
    return 0


def _when(stamp: float | None) -> str:
    if stamp is None:
        return "-"
    return dt.datetime.fromtimestamp(stamp).isoformat(sep=" ", timespec="seconds")


def _status(root: Path) -> int:
    folders = accounts(root)
    print(f"cache dir {root}: {len(folders)} account(s)")
    for folder in folders:
        held = usage(folder / BLOCKS)
        indexes = len(list((folder / PACKAGES).glob("*.json")))
        snapshot = age_of(folder / SNAPSHOT_NAME)
        print(f"  {folder.name}:")
        print(f"    blocks      {held.blocks} ({human(held.bytes)})")
        print(f"    last used   {_when(held.newest)}; least recently used {_when(held.oldest)}")
        print(f"    indexes     {indexes} package(s)")
        age = "none" if snapshot is None else f"saved {snapshot / 3600:.1f} h ago"
        print(f"    catalog     {age}")
    return 0


def _clear(root: Path, older_than: float | None) -> int:
    """Delete blocks (and, without --older-than, indexes and snapshots) of every account."""
    removed = 0
    for folder in accounts(root):
        store = BlockStore(folder / BLOCKS, limit=0)
        store.open()
        try:
            removed += store.remove_older_than(older_than or 0.0)
        finally:
            store.close()
        if older_than is None:
            shutil.rmtree(folder / PACKAGES, ignore_errors=True)
            (folder / SNAPSHOT_NAME).unlink(missing_ok=True)
    what = "" if older_than is None else f" unused for {older_than / 86400:g} day(s)"
    print(f"removed {removed} cached block(s){what} from {root}")
    return 0
