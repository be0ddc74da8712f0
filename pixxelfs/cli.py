"""The ``pixxelfs`` command: mount, unmount, demo and emulator.

Exit codes: 0 ok, 2 usage or configuration error, 1 runtime failure, each failure with one
line on stderr that says what to do. Without ``--foreground``, ``mount`` starts itself again
as a background daemon and returns once that daemon reports the mount ready (or failed).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import trio

from pixxelfs import __version__, cache_cli
from pixxelfs.config import (
    API_KEY_ENV,
    DEFAULT_API_URL,
    MountConfig,
    SharedCacheConfig,
    read_api_key,
    size_argument,
)
from pixxelfs.errors import ConfigError, PixxelfsError
from pixxelfs.logs import setup_logging

log = logging.getLogger("pixxelfs")

READY = "ready"
# Shared-cache URLs reach the daemon here, never on its command line (they may hold a password).
SHARED_CACHE_ENV = "PIXXELFS_SHARED_CACHE"
MOUNT_EXAMPLES = """\
examples:
  export PIXXEL_API_KEY=...                  # or --api-key-file ~/.config/pixxel.key (chmod 600)
  pixxelfs mount ~/pixxel                    # returns once mounted; a daemon serves it
  gdalinfo ~/pixxel/PROJECT/USECASE/DATE/SCENE/SCENE_TRUE_COLOUR.vrt   # natural colour in QGIS
  pixxelfs unmount ~/pixxel

Every catalog directory has a STAC catalog.json (pystac.Catalog.from_file walks the mount),
every scene an item.json and a true-colour VRT. As root, /etc/fstab and systemd mount it too:
mount -t fuse.pixxelfs URL DIR -o api_key_file=PATH (man pixxelfs: FSTAB AND SYSTEMD).
"""
DEMO_SCENES = 20


def _add_mount_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by ``mount`` and ``demo``."""
    parser.add_argument("mountpoint", type=Path, help="an existing empty directory")
    parser.add_argument(
        "--foreground", "-f", action="store_true", help="stay in the foreground (logs to stderr)"
    )
    parser.add_argument(
        "--memory-cache-size",
        type=size_argument,
        default=512 << 20,
        metavar="BYTES",
        help="memory block cache size, e.g. 512M (default: 512M)",
    )
    parser.add_argument(
        "--metadata-ttl",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long catalog listings are cached; new deliveries appear after this (default: 60)",
    )
    parser.add_argument(
        "--request-timeout",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="an API or storage request with no answer for this long is retried (default: 30)",
    )
    parser.add_argument(
        "--download-timeout",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="longest wait for a scene's download resource to become ready (default: 300)",
    )
    parser.add_argument(
        "--read-ahead-kb",
        type=int,
        default=1024,
        metavar="KB",
        help="kernel readahead of the mount, when permitted; 0 keeps the kernel's (default: 1024)",
    )
    parser.add_argument(
        "--direct-io",
        action="store_true",
        help="bypass the kernel page cache: larger reads, but no caching of repeated reads",
    )
    parser.add_argument(
        "--connections",
        type=int,
        default=16,
        metavar="N",
        help="parallel range requests to storage (default: 16)",
    )
    parser.add_argument(
        "--stub-reads",
        action="store_true",
        help="benchmarks only: package files read as zeros, to measure FUSE overhead alone",
    )
    parser.add_argument(
        "-o",
        dest="fuse_options",
        action="append",
        default=[],
        metavar="OPTIONS",
        help="comma-separated FUSE mount options, e.g. -o allow_other",
    )
    parser.add_argument(
        "--debug", action="store_true", help="log at debug level (secrets redacted)"
    )
    parser.add_argument(
        "--log-file", type=Path, help="daemon log file (default: under the cache dir)"
    )


def _add_shared_cache_options(parser: argparse.ArgumentParser) -> None:
    """The cluster-wide block store below memory (and disk); see docs/CLUSTER.md."""
    parser.add_argument(
        "--shared-cache",
        action="append",
        default=[],
        metavar="URL",
        help="shared block store redis://[:PASSWORD@]HOST:PORT/DB or rediss://...; repeat to "
        f"spread blocks over several nodes (or set ${SHARED_CACHE_ENV}, space-separated, to "
        "keep a password off command lines)",
    )
    parser.add_argument(
        "--shared-cache-timeout",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="deadline of each shared-cache call; then the origin is read (default: 1)",
    )
    parser.add_argument(
        "--shared-cache-ttl",
        type=float,
        default=86400.0,
        metavar="SECONDS",
        help="lifetime of shared blocks, 0 = until Redis evicts them (default: 86400)",
    )
    parser.add_argument(
        "--share-signed-urls",
        action="store_true",
        help="share signed URLs through the shared cache (needs a password or rediss://)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pixxelfs",
        description="Mount a Pixxel imagery catalog as a read-only filesystem.",
        epilog="Try it without an account: pixxelfs demo /tmp/pixxel",
    )
    parser.add_argument("--version", action="version", version=f"pixxelfs {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    mount = commands.add_parser(
        "mount",
        help="mount the catalog of your Pixxel workspace",
        description=f"Mount the catalog. The API key comes from ${API_KEY_ENV} or --api-key-file.",
        epilog=MOUNT_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_mount_options(mount)
    mount.add_argument(
        "--api-url",
        default=DEFAULT_API_URL,
        help=f"Pixxel API base URL (default: {DEFAULT_API_URL})",
    )
    mount.add_argument(
        "--api-key-file", metavar="PATH", help="file holding the API key (mode 0600 or stricter)"
    )
    mount.add_argument(
        "--bearer", action="store_true", help="send the key as 'Bearer <key>' instead of raw"
    )
    _add_shared_cache_options(mount)
    cache_cli.add_mount_options(mount)
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)

    unmount = commands.add_parser("unmount", help="unmount a pixxelfs mount")
    unmount.add_argument("mountpoint", type=Path)

    demo = commands.add_parser(
        "demo",
        help="mount a sample catalog served by the embedded emulator",
        description="Start the embedded Pixxel emulator with a sample catalog and mount it "
        "(always in the foreground; Ctrl-C unmounts).",
    )
    _add_mount_options(demo)

    emulator = commands.add_parser(
        "emulator",
        help="run the Pixxel API + object storage emulator",
        description="Serve a local, deterministic emulator of the Pixxel API and its storage.",
    )
    from pixxelfs.emulator.cli import add_arguments

    add_arguments(emulator)
    cache_cli.add_commands(commands)
    return parser


def _fuse_option_list(values: Sequence[str]) -> tuple[str, ...]:
    return tuple(opt for value in values for opt in value.split(",") if opt)


def _check_mountpoint(path: Path) -> None:
    if not path.is_dir():
        raise ConfigError(
            f"mountpoint {path} is not a directory (create it with `mkdir -p {path}`)"
        )
    if os.path.ismount(path):
        raise PixxelfsError(
            f"{path} is already a mount point (unmount it with `pixxelfs unmount {path}`)"
        )
    if not os.path.exists("/dev/fuse"):
        raise PixxelfsError("/dev/fuse is missing: install fuse3 and load the fuse module")


def _mount_config(args: argparse.Namespace, api_url: str, api_key: str) -> MountConfig:
    options = _fuse_option_list(args.fuse_options)
    return MountConfig(
        mountpoint=args.mountpoint.resolve(),
        api_url=api_url,
        api_key=api_key,
        metadata_ttl=args.metadata_ttl,
        memory_cache_size=args.memory_cache_size,
        request_timeout=args.request_timeout,
        shared_cache=_shared_cache_config(args),
        download_timeout=args.download_timeout,
        auth_scheme="bearer" if getattr(args, "bearer", False) else "raw",
        read_ahead_kb=args.read_ahead_kb,
        direct_io=args.direct_io,
        connections=args.connections,
        stub_reads=args.stub_reads,
        allow_other="allow_other" in options,
        fuse_options=tuple(o for o in options if o != "allow_other"),
        debug=args.debug,
        **cache_cli.mount_settings(args),
    )


def _shared_cache_urls(args: argparse.Namespace) -> tuple[str, ...]:
    """``--shared-cache`` URLs, else those of the environment (how the daemon receives them)."""
    urls = tuple(getattr(args, "shared_cache", ()))
    return urls or tuple(os.environ.get(SHARED_CACHE_ENV, "").split())


def _without_shared_cache(argv: Sequence[str]) -> list[str]:
    """``argv`` minus ``--shared-cache URL``: a URL may hold a password, argv is public."""
    kept: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--shared-cache":
            skip = True
        elif not arg.startswith("--shared-cache="):
            kept.append(arg)
    return kept


def _shared_cache_config(args: argparse.Namespace) -> SharedCacheConfig | None:
    urls = _shared_cache_urls(args)
    if not urls:
        if getattr(args, "share_signed_urls", False):
            raise ConfigError("--share-signed-urls needs --shared-cache URL")
        return None
    return SharedCacheConfig(
        urls,
        timeout=args.shared_cache_timeout,
        ttl=args.shared_cache_ttl,
        share_signed_urls=args.share_signed_urls,
    )


def _default_log_file(mountpoint: Path) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixxelfs" / "logs"
    base.mkdir(parents=True, exist_ok=True)
    name = str(mountpoint.resolve()).strip("/").replace("/", "_") or "root"
    return base / f"mount-{name}.log"


def _spawn_daemon(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Start ``mount --foreground`` detached; wait for its one-line ready/error report."""
    log_file = args.log_file or _default_log_file(args.mountpoint)
    read_end, write_end = os.pipe()
    command = [
        sys.executable,
        "-m",
        "pixxelfs",
        *_without_shared_cache(argv),
        "--foreground",
        "--ready-fd",
        str(write_end),
    ]
    env = dict(os.environ)
    if urls := _shared_cache_urls(args):
        env[SHARED_CACHE_ENV] = " ".join(urls)
    with open(log_file, "ab") as log_stream:
        process = subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_stream,
            stderr=log_stream,
            pass_fds=(write_end,),
            start_new_session=True,
        )
    os.close(write_end)
    with os.fdopen(read_end) as report:
        line = report.readline().strip()
    if line == READY:
        print(f"pixxelfs: mounted {args.mountpoint} (pid {process.pid}, log {log_file})")
        return 0
    process.wait()
    message = line or f"the daemon exited with status {process.returncode}; see {log_file}"
    print(f"pixxelfs: {message}", file=sys.stderr)
    return 1


def _report(fd: int | None) -> Callable[[str], None]:
    """Write one line to the parent's pipe (daemon mode), at most once."""

    def send(line: str) -> None:
        nonlocal fd
        if fd is not None:
            os.write(fd, (line + "\n").encode())
            os.close(fd)
            fd = None

    return send


def _run_mount(args: argparse.Namespace, argv: Sequence[str]) -> int:
    api_key = read_api_key(args.api_key_file)
    _check_mountpoint(args.mountpoint)
    _shared_cache_config(args)  # refuse bad options before a daemon starts
    if not args.foreground:
        return _spawn_daemon(args, argv)
    config = _mount_config(args, args.api_url, api_key)
    setup_logging(debug=args.debug, secrets=(api_key,))
    report = _report(args.ready_fd)
    from pixxelfs.mount import serve

    try:
        trio.run(serve, config, lambda: report(READY))
    except BaseException as exc:
        report(_one_line(_leaf(exc)))
        raise
    return 0


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, PixxelfsError):
        return str(exc)
    if isinstance(exc, KeyboardInterrupt):
        return "interrupted"
    return f"{type(exc).__name__}: {exc}"


def _run_unmount(args: argparse.Namespace) -> int:
    fusermount = shutil.which("fusermount3") or shutil.which("fusermount")
    if fusermount is None:
        raise PixxelfsError("fusermount3 not found: install the fuse3 package")
    mountpoint = str(args.mountpoint)
    result = subprocess.run([fusermount, "-u", mountpoint], capture_output=True, text=True)
    if result.returncode != 0:
        # A daemon that died leaves "Transport endpoint is not connected": detach lazily.
        lazy = subprocess.run([fusermount, "-u", "-z", mountpoint], capture_output=True, text=True)
        if lazy.returncode != 0:
            raise PixxelfsError(f"cannot unmount {mountpoint}: {result.stderr.strip()}")
    return 0


def _run_demo(args: argparse.Namespace) -> int:
    from pixxelfs.emulator import EmulatorConfig, running_emulator
    from pixxelfs.mount import serve

    _check_mountpoint(args.mountpoint)
    setup_logging(debug=args.debug)
    data_dir = Path(tempfile.gettempdir()) / "pixxelfs-demo-packages"
    emulator_config = EmulatorConfig(port=0, scenes=DEMO_SCENES, data_dir=data_dir)
    with running_emulator(emulator_config) as emulator:
        setup_logging(debug=args.debug, secrets=(emulator.api_key,))
        config = _mount_config(args, emulator.base_url, emulator.api_key)
        trio.run(serve, config, lambda: _print_demo_tips(config.mountpoint, emulator.base_url))
    return 0


def _print_demo_tips(mountpoint: Path, api_url: str) -> None:
    print(
        f"""
pixxelfs demo: a sample Pixxel catalog ({DEMO_SCENES} scenes, emulator at {api_url})
is mounted at {mountpoint}. In another terminal, try:

    ls {mountpoint}
    find {mountpoint} -maxdepth 4
    cat {mountpoint}/*/*/*/*/metadata.json | head -40
    gdalinfo "$(find {mountpoint} -name '*_L2A_SR.tif' | head -1)"
    getfattr -d "$(find {mountpoint} -mindepth 4 -maxdepth 4 -type d | head -1)"

Press Ctrl-C here to unmount.
""",
        flush=True,
    )


def _run_emulator(args: argparse.Namespace) -> int:
    from pixxelfs.emulator.cli import config_from_args, run

    setup_logging(debug=False)
    return run(config_from_args(args))


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, as trio nurseries raise them."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


def _dispatch(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.command == "mount":
        return _run_mount(args, argv)
    if args.command in cache_cli.COMMANDS:
        return cache_cli.run(args)
    if args.command == "unmount":
        return _run_unmount(args)
    if args.command == "demo":
        return _run_demo(args)
    return _run_emulator(args)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args, argv)
    except BaseException as exc:
        error = _leaf(exc)
        if isinstance(error, ConfigError):
            print(f"pixxelfs: error: {error}", file=sys.stderr)
            return 2
        if isinstance(error, KeyboardInterrupt):
            return 130
        if isinstance(error, Exception):
            print(f"pixxelfs: {_one_line(error)}", file=sys.stderr)
            return 1
        raise
