"""``mount.pixxelfs``: the helper ``mount -t fuse.pixxelfs`` runs, so fstab and systemd can mount.

mount(8) calls ``/sbin/mount.fuse.pixxelfs SOURCE MOUNTPOINT [-sfnv] [-o OPTIONS]`` (scripts/setup
links it to this console script). SOURCE is the API base URL (``pixxelfs#URL`` is accepted too;
anything else, e.g. ``pixxelfs``, means the default URL). Options:

* pixxelfs's own: ``api_url=URL``, ``api_key_file=PATH``, ``metadata_ttl=SECONDS``,
  ``memory_cache_size=BYTES``, ``log_file=PATH``, ``bearer``, ``debug``, and every other
  ``--long-option`` of ``pixxelfs mount`` spelt with underscores (``cache_dir=`` once the mount
  command has ``--cache-dir``);
* mount(8)'s own, which are not for the filesystem: ``_netdev``, ``nofail``, ``noauto``,
  ``auto``, ``user``, ``users``, ``defaults``, ``x-*``, ``comment=*``, ``rw``/``ro`` (always ro);
* everything else is a FUSE option (``allow_other``, ``default_permissions``, ...).

It then runs ``pixxelfs mount`` in daemon mode, which returns once the mount is ready.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pixxelfs import cli
from pixxelfs.errors import ConfigError

SOURCE_PREFIX = "pixxelfs#"
# Options that mount(8) or systemd act on themselves; the filesystem never sees them.
MOUNT_ONLY = frozenset(
    {"_netdev", "nofail", "noauto", "auto", "user", "users", "nouser", "defaults", "rw", "ro"}
    | {"noexec", "exec", "nosuid", "suid", "nodev", "dev"}
)
MOUNT_ONLY_PREFIXES = ("x-", "comment=")


def mount_options() -> dict[str, bool]:
    """``pixxelfs mount``'s documented long options as ``-o`` keys (``--api-key-file`` ->
    ``api_key_file``), each with whether it takes a value. Read from the parser, so an option
    added to the mount command (``--cache-dir``) is accepted here without a change."""
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    keys: dict[str, bool] = {}
    for action in commands.choices["mount"]._actions:
        if action.help == argparse.SUPPRESS:
            continue
        for option in action.option_strings:
            if option.startswith("--") and option not in ("--help", "--foreground"):
                keys[option[2:].replace("-", "_")] = action.nargs != 0
    return keys


def translate(source: str, mountpoint: str, options: Sequence[str]) -> list[str]:
    """The ``pixxelfs mount`` argument list for a mount(8) call."""
    known = mount_options()
    argv = ["mount", mountpoint]
    url = source.removeprefix(SOURCE_PREFIX)
    if url.startswith(("http://", "https://")):
        argv += ["--api-url", url]
    fuse: list[str] = []
    for option in options:
        key, has_value, value = option.partition("=")
        if key in MOUNT_ONLY or option.startswith(MOUNT_ONLY_PREFIXES):
            continue
        if key in known:
            if known[key] != bool(has_value):
                need = "needs a" if known[key] else "takes no"
                raise ConfigError(f"mount option {key} {need} value")
            argv += [f"--{key.replace('_', '-')}", *([value] if has_value else [])]
        else:
            fuse.append(option)
    if fuse:
        argv += ["-o", ",".join(fuse)]
    return argv


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mount.pixxelfs",
        description="mount(8) helper: mount -t fuse.pixxelfs URL MOUNTPOINT -o OPTIONS",
    )
    parser.add_argument("source", help="the API base URL, or 'pixxelfs' for the default")
    parser.add_argument("mountpoint")
    parser.add_argument("-o", dest="options", action="append", default=[], metavar="OPTIONS")
    for flag in ("-s", "-f", "-n", "-v"):  # sloppy, fake, no-mtab, verbose: passed by mount(8)
        parser.add_argument(flag, action="store_true", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    options = [o for value in args.options for o in value.split(",") if o]
    try:
        command = translate(args.source, args.mountpoint, options)
    except ConfigError as exc:
        print(f"mount.pixxelfs: error: {exc}", file=sys.stderr)
        return 2
    if args.f:  # mount -f: do everything but the mount itself
        return 0
    return cli.main(command)
