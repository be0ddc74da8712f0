"""Offline use: the saved catalog and cached bytes keep working when the API cannot be reached.

This module owns how a mount starts its catalog and when it is offline. With a saved snapshot
the tree is served at once and refreshed in the background. A mount is offline with
``--offline`` or when the API does not answer at mount time; it then serves the snapshot and
whatever the memory and disk caches hold. Every network read of package bytes starts with a
signed URL, so :class:`GatedDownloads` is the one gate: offline, a read that the caches cannot
satisfy fails at once with :class:`~pixxelfs.errors.OfflineError` (EHOSTUNREACH) instead of
waiting for retries to run out. A mount that went offline by itself pings the API now and then
and goes back online when it answers.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from typing import Any

import trio

from pixxelfs.api.client import PixxelClient
from pixxelfs.api.models import DownloadResource
from pixxelfs.catalog.service import CatalogService
from pixxelfs.catalog.snapshot import SnapshotStore
from pixxelfs.catalog.tree import CatalogTree
from pixxelfs.errors import ApiUnavailableError, ConfigError, OfflineError, PixxelfsError
from pixxelfs.remote.signed_url import DownloadApi

log = logging.getLogger(__name__)

# How long the mount waits for the API's /ping before serving the snapshot offline.
PING_TIMEOUT = 10.0
# How often an automatically offline mount checks whether the API answers again.
RECONNECT_INTERVAL = 30.0


class OfflineGate:
    """Whether the mount is offline, and why (``--offline`` is for the mount's whole life)."""

    def __init__(self, forced: bool):
        self.forced = forced
        self.reason: str | None = "--offline" if forced else None

    @property
    def offline(self) -> bool:
        return self.reason is not None

    def go_offline(self, reason: str) -> None:
        self.reason = reason
        log.warning("offline (%s): serving the catalog snapshot and cached bytes only", reason)

    def go_online(self) -> None:
        self.reason = None
        log.info("the API answers again: back online")

    def stats(self) -> dict[str, Any]:
        return {"offline": self.offline, "reason": self.reason}


class GatedDownloads:
    """The download-resource API behind the gate (what the signed-URL resolver talks to)."""

    def __init__(self, api: DownloadApi, gate: OfflineGate):
        self._api = api
        self._gate = gate

    async def wait_for_download(self, catalog_id: str) -> DownloadResource:
        if self._gate.offline:
            raise OfflineError(
                f"catalog {catalog_id}: the data is not in the cache and pixxelfs is offline "
                f"({self._gate.reason})"
            )
        return await self._api.wait_for_download(catalog_id)


async def answers(api: PixxelClient) -> bool:
    """Whether the API answers at all (any HTTP answer counts, even an error)."""
    with trio.move_on_after(PING_TIMEOUT):
        try:
            await api.ping()
        except ApiUnavailableError:
            return False
        except PixxelfsError:
            return True
        return True
    return False


async def start_catalog(
    catalog: CatalogService,
    api: PixxelClient,
    snapshots: SnapshotStore | None,
    gate: OfflineGate,
    nursery: trio.Nursery,
    *,
    ttl: float,
) -> CatalogTree:
    """The mount's first tree: the saved snapshot at once (refreshed in the background), or,
    without one, a listing from the API (failing fast on a bad key or URL)."""
    saved = await snapshots.load() if snapshots is not None else None
    if saved is None:
        if gate.offline:
            raise ConfigError(
                "--offline needs a catalog snapshot in the cache dir: mount once while online"
            )
        return await catalog.tree()
    if not gate.offline and not await answers(api):
        gate.go_offline("the API did not answer at mount time")
    when = dt.datetime.fromtimestamp(saved.saved_at, dt.UTC).isoformat(timespec="seconds")
    if gate.offline:
        log.warning("serving the catalog snapshot saved at %s", when)
        catalog.seed(saved.tree, fresh_for=math.inf)
        if not gate.forced:
            nursery.start_soon(_reconnect, api, catalog, gate)
    else:
        log.info("serving the catalog snapshot saved at %s; refreshing it", when)
        catalog.seed(saved.tree, fresh_for=ttl)
        nursery.start_soon(catalog.refresh)
    return saved.tree


async def _reconnect(api: PixxelClient, catalog: CatalogService, gate: OfflineGate) -> None:
    while not await _answers_later(api):
        pass
    gate.go_online()
    await catalog.refresh()


async def _answers_later(api: PixxelClient) -> bool:
    await trio.sleep(RECONNECT_INTERVAL)
    return await answers(api)
