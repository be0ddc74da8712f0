"""The emulator's mutable state, shared by the route handlers, and the API error type.

Everything here is touched only from the server's trio thread; other threads go through
:class:`pixxelfs.emulator.server.Emulator`, which hops into that thread first.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from pixxelfs.emulator.config import EmulatorConfig
from pixxelfs.emulator.faults import FaultState
from pixxelfs.emulator.hostile import HostilePlan
from pixxelfs.emulator.packages import PackageStore
from pixxelfs.emulator.signing import UrlSigner
from pixxelfs.emulator.stats import Stats
from pixxelfs.emulator.world import World, stable_uuid


class HttpError(Exception):
    """An API failure answered with the ``{"error": {code, message, details}}`` envelope."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details

    def envelope(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


def bad_request(message: str, details: Any = None) -> HttpError:
    return HttpError(400, "bad_request", message, details)


def not_found(what: str, ident: str) -> HttpError:
    return HttpError(404, "not_found", f"{what} {ident!r} not found", {"id": ident})


@dataclass
class Download:
    """A download resource: which scenes, and how far its (emulated) preparation has got."""

    id: str
    catalog_ids: list[str]
    created: float
    polls: int = 0


@dataclass
class EmulatorState:
    config: EmulatorConfig
    world: World
    packages: PackageStore
    faults: FaultState
    stats: Stats
    signer: UrlSigner
    public_url: str = ""
    downloads: dict[str, Download] = field(default_factory=dict)
    nursery: trio.Nursery | None = None
    hostile: HostilePlan = field(default_factory=HostilePlan)

    @classmethod
    def create(cls, config: EmulatorConfig, cache_dir: Path) -> EmulatorState:
        world = World(config)
        return cls(
            config=config,
            world=world,
            packages=PackageStore(world, config, cache_dir),
            faults=FaultState(config.faults),
            stats=Stats(),
            signer=UrlSigner(secrets.token_bytes(32)),
        )

    @property
    def url_lifetime(self) -> float:
        override = self.faults.plan.url_lifetime
        return override if override is not None else self.config.url_lifetime

    def revoke_urls(self) -> None:
        """New signing key: every URL signed so far is refused (403), as if it had expired."""
        self.signer = UrlSigner(secrets.token_bytes(32))

    def new_download(self, catalog_ids: list[str]) -> Download:
        download_id = stable_uuid(self.config.seed, "download", len(self.downloads))
        download = Download(download_id, catalog_ids, trio.current_time())
        self.downloads[download_id] = download
        return download

    def download_status(self, download: Download) -> str:
        """created -> in_progress -> success/failed, driven by polls and elapsed time."""
        plan, config = self.faults.plan, self.config
        mode = plan.download_mode or config.download_mode
        polls = plan.download_polls if plan.download_polls is not None else config.download_polls
        delay = plan.download_delay if plan.download_delay is not None else config.download_delay
        ready = download.polls >= polls and trio.current_time() - download.created >= delay
        if mode == "never" or not ready:
            return "created" if download.polls == 0 else "in_progress"
        return "success" if mode == "success" else "failed"

    def signed_url(self, download: Download) -> str:
        scenes = [self.world.by_id.get(cid) for cid in download.catalog_ids]
        single = scenes[0] if len(scenes) == 1 else None
        name = single.item_id if single is not None else "catalogs"
        now = dt.datetime.now(dt.UTC)
        return self.signer.sign(self.public_url, download.id, name, self.url_lifetime, now)
