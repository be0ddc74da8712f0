"""Statistics of a mount: every component's counters gathered into one JSON-able dict.

This module owns the shape of ``<mount>/.pixxelfs/stats.json`` (and so of ``pixxelfs stats``).
Components register a *section*, a name and a function returning a JSON-able mapping, which is
called each time the statistics are rendered; adding a section is one line where the mount is
wired (``stats.add("shared_cache", shared.stats)``). The helpers below turn the existing
components' counters into sections with ratios where they help.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pixxelfs import __version__
from pixxelfs.api.client import PixxelClient
from pixxelfs.catalog.service import CatalogService
from pixxelfs.remote.block_cache import BlockCache
from pixxelfs.remote.signed_url import SignedUrlResolver
from pixxelfs.remote.storage import StorageClient

log = logging.getLogger(__name__)

Section = Callable[[], Mapping[str, Any]]


class MountStats:
    """Named sections of counters, rendered in the order they were added."""

    def __init__(self) -> None:
        self._sections: dict[str, Section] = {}

    def add(self, name: str, section: Section) -> None:
        """Register ``section`` under ``name`` (names are unique)."""
        if name in self._sections:
            raise ValueError(f"stats section {name!r} is already registered")
        self._sections[name] = section

    def collect(self) -> dict[str, Any]:
        """Every section now; a failing section shows its error instead of hiding the rest."""
        result: dict[str, Any] = {"pixxelfs": __version__, "time": round(time.time(), 3)}
        for name, section in self._sections.items():
            try:
                result[name] = dict(section())
            except Exception as exc:
                log.exception("stats section %s failed", name)
                result[name] = {"error": f"{type(exc).__name__}: {exc}"}
        return result

    def render(self) -> bytes:
        """The statistics as pretty-printed, newline-terminated JSON."""
        return (json.dumps(self.collect(), indent=2, sort_keys=False) + "\n").encode()


def ratio(part: int, whole: int) -> float | None:
    return round(part / whole, 4) if whole else None


def memory_cache(cache: BlockCache) -> Section:
    def section() -> dict[str, Any]:
        stats = dataclasses.asdict(cache.stats())
        return {**stats, "hit_ratio": ratio(stats["hits"], stats["hits"] + stats["misses"])}

    return section


def storage(client: StorageClient, resolver: SignedUrlResolver) -> Section:
    def section() -> dict[str, Any]:
        counts = client.stats()
        return {
            "requests": counts["requests"],
            "bytes_fetched": counts["bytes"],
            "retries": counts["retries"],
            "url_resolutions": resolver.resolutions,
            "url_renewals": resolver.renewals,
        }

    return section


def api(client: PixxelClient) -> Section:
    def section() -> dict[str, Any]:
        counts = client.stats()
        return {
            "calls": dict(counts.calls),
            "retries": counts.retries,
            "errors": dict(counts.errors),
            "skipped_elements": counts.skipped,
        }

    return section


def catalog(service: CatalogService) -> Section:
    def section() -> dict[str, Any]:
        tree = service.current()
        return {
            "scenes": tree.scene_count if tree is not None else 0,
            "builds": service.builds,
            "refresh_failures": service.api_failures,
            "generation": service.generation,
        }

    return section
