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
from urllib.parse import urlsplit

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


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``45s``, ``30m``, ``12h``, ``7d``, ``2w``, ``90`` (seconds) -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ConfigError(f"not a duration: {text!r} (use a number with s, m, h, d or w)")
    number, unit = match.groups()
    return float(number) * _SECONDS[unit.lower()]


def duration_argument(text: str) -> float:
    """:func:`parse_duration` for argparse: a bad duration is a usage error."""
    try:
        return parse_duration(text)
    except ConfigError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def default_cache_dir(environ: dict[str, str] | None = None) -> Path:
    """``$XDG_CACHE_HOME/pixxelfs``, else ``~/.cache/pixxelfs``."""
    env = os.environ if environ is None else environ
    return Path(env.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "pixxelfs"


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


SHARED_CACHE_SCHEMES = ("redis", "rediss")


@dataclass(frozen=True)
class SharedCacheConfig:
    """The shared block store (``--shared-cache``): Redis nodes, deadlines, lifetimes.

    Several URLs spread the keys over independent nodes by consistent hashing. Signed URLs are
    bearer secrets, so sharing them needs every node to be authenticated (a password in the URL)
    or TLS (``rediss://``).
    """

    urls: tuple[str, ...] = field(repr=False)  # may hold passwords
    # Every Redis call gives up after this long and the read goes to the origin instead. A
    # 1 MiB GET takes a few ms in a zone, but the deadline also runs while the daemon itself is
    # busy: on a loaded node (4 mounts on 2 cores) calls to a healthy Redis took up to ~1 s.
    timeout: float = 1.0
    # Blocks expire after a day (0: never; leave it to Redis' maxmemory-policy allkeys-lru).
    ttl: float = 86400.0
    share_signed_urls: bool = False

    def __post_init__(self) -> None:
        if not self.urls:
            raise ConfigError("--shared-cache needs at least one redis://HOST:PORT/DB URL")
        if self.timeout <= 0 or self.ttl < 0:
            raise ConfigError("--shared-cache-timeout must be > 0 and --shared-cache-ttl >= 0")
        for url in self.urls:
            parts = urlsplit(url)
            if parts.scheme not in SHARED_CACHE_SCHEMES or not parts.hostname:
                raise ConfigError(
                    f"not a shared cache URL: {_without_password(url)!r} "
                    "(use redis://HOST:PORT/DB or rediss://HOST:PORT/DB)"
                )
            if self.share_signed_urls and parts.scheme != "rediss" and not parts.password:
                raise ConfigError(
                    "--share-signed-urls puts signed URLs (bearer secrets) in the shared cache: "
                    f"{_without_password(url)} must be authenticated (redis://:PASSWORD@HOST) "
                    "or TLS (rediss://)"
                )


def _without_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return url.replace(f":{parts.password}@", ":<redacted>@", 1)


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
    # The mount's kernel readahead (bdi read_ahead_kb): 1 MiB turns 128 KiB FUSE reads into
    # 1 MiB ones, ~3x the throughput of a Python read path (design.md). 0 keeps the default.
    read_ahead_kb: int = 1024
    # Large reads arrive at the caller's size, but the page cache is bypassed: opt-in.
    direct_io: bool = False
    # Parallel range requests to storage: enough for 8 MiB parts of a few streaming files.
    connections: int = 16
    # Benchmarks only: package files read as zeros, to measure the FUSE path alone.
    stub_reads: bool = False
    fuse_options: tuple[str, ...] = ()
    allow_other: bool = False
    debug: bool = False
    # One HTTP request (API or storage) fails when no byte arrives for this long; it is then
    # retried, so a stalled server costs a few of these before the read fails with EIO.
    request_timeout: float = 30.0
    # A download resource that is not ready after this long fails the look with EAGAIN.
    download_timeout: float = 300.0
    # The cluster-wide block store below memory and disk (None: not used).
    shared_cache: SharedCacheConfig | None = None
    # The persistent disk cache (blocks, catalog snapshot, ZIP indexes); None: memory only.
    # The CLI defaults it to default_cache_dir(); 20 GiB holds a few dozen full scenes.
    cache_dir: Path | None = None
    cache_size: int = 20 << 30
    # Serve the last snapshot and cached bytes only; never contact the API or storage.
    offline: bool = False
