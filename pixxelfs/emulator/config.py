"""Every knob of the emulator in one dataclass, with defaults that suit a quick demo.

The same :class:`EmulatorConfig` drives the CLI (``pixxelfs emulator``), the in-process test
fixtures and benchmarks, so sizes, seeds and readiness behaviour are reproducible everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pixxelfs.emulator.faults import FaultPlan

COMPRESSION_MODES = ("default", "stored", "deflated")
DOWNLOAD_MODES = ("success", "failed", "never")


@dataclass(frozen=True)
class EmulatorConfig:
    """What the emulator serves and how it behaves.

    ``port=0`` picks an ephemeral port. ``public_url`` (default: the bound address) is the base put
    into signed URLs, for use behind a proxy. ``data_dir`` caches generated packages (default: a
    temporary directory removed on shutdown) and contributes any ``*.tif`` in it as extra scenes.
    ``orphan_scenes=None`` means one orphan when there are at least 10 scenes, else none.
    """

    host: str = "127.0.0.1"
    port: int = 0
    api_key: str = "demo-key"
    public_url: str | None = None
    data_dir: Path | None = None
    seed: int = 1
    scenes: int = 12
    projects: int = 3
    # Scenes are captured on this many consecutive days (1: every scene on one date, for a
    # date directory of thousands of scenes).
    capture_days: int = 350
    width: int = 128
    height: int = 128
    bands: int = 8
    tile_size: int = 256
    cog_compress: str = "NONE"
    compression: str = "default"
    url_lifetime: float = 3600.0
    download_polls: int = 1
    download_delay: float = 0.0
    download_mode: str = "success"
    orphan_scenes: int | None = None
    faults: FaultPlan = field(default_factory=FaultPlan)

    def __post_init__(self) -> None:
        if self.compression not in COMPRESSION_MODES:
            raise ValueError(f"compression must be one of {COMPRESSION_MODES}")
        if self.download_mode not in DOWNLOAD_MODES:
            raise ValueError(f"download_mode must be one of {DOWNLOAD_MODES}")
        if self.url_lifetime < 1:
            raise ValueError("url_lifetime must be at least 1 second")
        if min(self.width, self.height, self.bands, self.tile_size) < 1:
            raise ValueError("raster width, height, bands and tile size must be positive")
        if self.scenes < 0 or self.projects < 1 or self.capture_days < 1:
            raise ValueError("need scenes >= 0, projects >= 1 and capture days >= 1")
        if self.download_polls < 0 or self.download_delay < 0:
            raise ValueError("download polls and delay must not be negative")

    @property
    def orphans(self) -> int:
        """Catalog entries whose task no order item owns (the client's ``_unassigned/`` case)."""
        if self.orphan_scenes is not None:
            return min(self.orphan_scenes, self.scenes)
        return 1 if self.scenes >= 10 else 0
