"""``pixxelfs emulator``: its flags, their :class:`EmulatorConfig`, and the serving loop.

The main CLI wires :func:`add_arguments`, :func:`config_from_args` and :func:`run`. ``run`` prints
``PIXXEL_API_URL=...`` and ``PIXXEL_API_KEY=...`` first (flushed, so scripts can ``eval`` them) and
serves until SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

import trio

from pixxelfs.config import size_argument
from pixxelfs.emulator.config import COMPRESSION_MODES, DOWNLOAD_MODES, EmulatorConfig
from pixxelfs.emulator.faults import FaultPlan, FaultRule
from pixxelfs.emulator.server import serve_emulator


def _raster_size(text: str) -> tuple[int, int]:
    width, sep, height = text.lower().partition("x")
    if not sep or not width.isdigit() or not height.isdigit():
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    return int(width), int(height)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    server = parser.add_argument_group("server")
    server.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    server.add_argument(
        "--port", type=int, default=8700, help="port to bind; 0 picks a free one (default: 8700)"
    )
    server.add_argument(
        "--api-key", default="demo-key", help="the API key clients must send (default: demo-key)"
    )
    server.add_argument(
        "--public-url",
        help="base URL put into signed URLs, for running behind a proxy (default: own address)",
    )
    server.add_argument(
        "--data-dir",
        type=Path,
        help="where generated packages are cached (default: a temporary directory); "
        "any *.tif already in it is served as an extra scene",
    )
    data = parser.add_argument_group("synthetic data (deterministic for a given seed)")
    data.add_argument("--seed", type=int, default=1, help="seed of all ids and pixels (default: 1)")
    data.add_argument("--scenes", type=int, default=12, help="catalog entries (default: 12)")
    data.add_argument("--projects", type=int, default=3, help="projects (default: 3)")
    data.add_argument(
        "--capture-days",
        type=int,
        default=350,
        help="days the capture dates spread over; 1 puts every scene on one date (default: 350)",
    )
    data.add_argument(
        "--orphans",
        type=int,
        help="entries whose task no order item owns; pixxelfs shows them under _unassigned/ "
        "(default: 1 with 10 or more scenes, else 0)",
    )
    data.add_argument(
        "--raster-size",
        type=_raster_size,
        default=(128, 128),
        metavar="WxH",
        help="reflectance GeoTIFF size in pixels, e.g. 4096x4096 for ~1 GiB with 32 bands "
        "(default: 128x128)",
    )
    data.add_argument("--bands", type=int, default=8, help="spectral bands (default: 8)")
    data.add_argument("--tile-size", type=int, default=256, help="COG tile size (default: 256)")
    data.add_argument(
        "--cog-compress",
        default="NONE",
        help="GDAL COMPRESS of the GeoTIFFs, e.g. DEFLATE (default: NONE, predictable sizes)",
    )
    data.add_argument(
        "--compression",
        choices=COMPRESSION_MODES,
        default="default",
        help="ZIP member compression: default = GeoTIFFs and JPEG stored, text deflated",
    )
    downloads = parser.add_argument_group("downloads and signed URLs")
    downloads.add_argument(
        "--url-lifetime",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="lifetime of signed URLs (default: 3600; as low as 1 to test renewal)",
    )
    downloads.add_argument(
        "--download-polls",
        type=int,
        default=1,
        metavar="N",
        help="status polls before a download resource is ready (default: 1)",
    )
    downloads.add_argument(
        "--download-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="time before a download resource is ready (default: 0)",
    )
    downloads.add_argument(
        "--download-mode",
        choices=DOWNLOAD_MODES,
        default="success",
        help="how download resources end: success, failed, or never ready",
    )
    faults = parser.add_argument_group("faults (also settable at run time: POST /_emulator/faults)")
    faults.add_argument(
        "--fault-target",
        default="all",
        help="which routes the faults below hit: all, api, storage, or a route name such as "
        "catalogs.search or storage.get (default: all)",
    )
    faults.add_argument(
        "--latency-ms", type=float, default=0.0, help="added latency per request (ms)"
    )
    faults.add_argument(
        "--bandwidth", type=size_argument, help="cap on body bytes/s per connection, e.g. 50M"
    )
    faults.add_argument(
        "--error-rate", type=float, default=0.0, help="fraction of requests answered with an error"
    )
    faults.add_argument(
        "--error-status",
        type=int,
        default=503,
        choices=(429, 500, 503),
        help="status of those errors (429 and 503 carry Retry-After; default: 503)",
    )
    faults.add_argument(
        "--retry-after", type=int, default=1, metavar="SECONDS", help="Retry-After value"
    )
    faults.add_argument(
        "--fail-calls",
        type=_int_list,
        default=(),
        metavar="N,N,...",
        help="fail exactly these (1-based) calls of the target",
    )
    faults.add_argument(
        "--fail-status", type=int, default=500, help="status of --fail-calls (default: 500)"
    )
    faults.add_argument(
        "--reset-after",
        type=size_argument,
        metavar="BYTES",
        help="reset the connection after sending this many body bytes",
    )
    faults.add_argument(
        "--truncate-after",
        type=size_argument,
        metavar="BYTES",
        help="close the connection after this many body bytes (Content-Length promised more)",
    )
    faults.add_argument(
        "--fault-seed", type=int, default=0, help="seed of the error-rate draws (default: 0)"
    )


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    rule = FaultRule(
        target=args.fault_target,
        latency_ms=args.latency_ms,
        bandwidth=args.bandwidth,
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        fail_calls=args.fail_calls,
        fail_status=args.fail_status,
        reset_after_bytes=args.reset_after,
        truncate_after_bytes=args.truncate_after,
    )
    rules = () if rule == FaultRule(target=args.fault_target) else (rule,)
    width, height = args.raster_size
    return EmulatorConfig(
        host=args.host,
        port=args.port,
        api_key=args.api_key,
        public_url=args.public_url,
        data_dir=args.data_dir,
        seed=args.seed,
        scenes=args.scenes,
        projects=args.projects,
        capture_days=args.capture_days,
        orphan_scenes=args.orphans,
        width=width,
        height=height,
        bands=args.bands,
        tile_size=args.tile_size,
        cog_compress=args.cog_compress,
        compression=args.compression,
        url_lifetime=args.url_lifetime,
        download_polls=args.download_polls,
        download_delay=args.download_delay,
        download_mode=args.download_mode,
        faults=FaultPlan(rules=rules, seed=args.fault_seed),
    )


async def _serve_until_signalled(config: EmulatorConfig) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with serve_emulator(config) as emulator:
            print(f"PIXXEL_API_URL={emulator.base_url}", flush=True)
            print(f"PIXXEL_API_KEY={emulator.api_key}", flush=True)
            async for _ in signals:
                break


def run(config: EmulatorConfig) -> int:
    """Serve until interrupted; 0 on a clean stop, 1 if the server could not run."""
    try:
        trio.run(_serve_until_signalled, config)
    except (OSError, BaseExceptionGroup) as exc:
        error = _os_error(exc)
        if error is None:
            raise
        where = f"{config.host}:{config.port}"
        print(f"pixxelfs emulator: cannot serve on {where}: {error}", file=sys.stderr)
        return 1
    return 0


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError (e.g. address in use) inside trio's exception groups, if that is what failed."""
    if isinstance(exc, OSError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _os_error(inner)
            if found is not None:
                return found
    return None
