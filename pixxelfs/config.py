"""Configuration of a mount: one frozen dataclass, size parsing, and reading the API key.

Every default carries its reason. The API key lives only in :class:`MountConfig` (excluded
from ``repr``) and in the HTTP client's headers; it is read from ``PIXXEL_API_KEY`` or from a
key file that only its owner can read.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

from pixxelfs.errors import ConfigError

DEFAULT_API_URL = "https://api.pixxel.space"
API_KEY_ENV = "PIXXEL_API_KEY"

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(text: str) -> int:
    """``512M``, ``4G``, ``1.5GiB``, ``1048576`` -> bytes (binary multiples, as users expect)."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(
            f"not a size: {text!r} (use a number with an optional K, M, G or T suffix)"
        )
    number, unit, _ = match.groups()
    return int(float(number) * _UNITS[unit.lower()])


def size_argument(text: str) -> int:
    """:func:`parse_size` for argparse: a bad size is a usage error (exit status 2)."""
    try:
        return parse_size(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def read_api_key(key_file: str | None, environ: dict[str, str] | None = None) -> str:
    """The key from ``key_file`` (refused unless mode 0600 or stricter) or the environment."""
    env = os.environ if environ is None else environ
    if key_file:
        path = Path(key_file)
        try:
            info = path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(
                f"refusing the API key file {key_file}: its mode is "
                f"{stat.S_IMODE(info.st_mode):04o}; run `chmod 600 {key_file}`"
            )
        key = path.read_text(encoding="utf-8").strip()
        if not key:
            raise ConfigError(f"the API key file {key_file} is empty")
        return key
    key = env.get(API_KEY_ENV, "").strip()
    if not key:
        raise ConfigError(f"no API key: set {API_KEY_ENV} or pass --api-key-file PATH")
    return key


@dataclass(frozen=True)
class MountConfig:
    """Everything a mount needs; built by the CLI, consumed by :mod:`pixxelfs.mount`."""

    mountpoint: Path
    api_url: str
    api_key: str = field(repr=False)
    # Catalog listings are cached this long; new deliveries show up after at most ~this.
    metadata_ttl: float = 60.0
    # 512 MiB of blocks in memory: a few GeoTIFFs' working sets without pressuring the host.
    memory_cache_size: int = 512 << 20
    # 1 MiB blocks, as Mountpoint-S3 settled on: small enough for random tile reads, large
    # enough that a sequential read is not dominated by per-request latency.
    block_size: int = 1 << 20
    auth_scheme: str = "raw"
    fuse_options: tuple[str, ...] = ()
    allow_other: bool = False
    debug: bool = False
