"""Cache levels below the memory block cache: the seam for the disk and shared block stores.

A read that misses the memory cache walks down a chain of tiers: each tier either answers
from its own store or calls the level below (ending at the origin, a signed-URL range GET)
and may keep what comes back. A tier is strictly an optimisation: when its store fails it must
fall through to ``below`` instead of failing the read.

    memory BlockCache  ->  tier[0] (e.g. disk)  ->  tier[1] (e.g. shared Redis)  ->  origin
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pixxelfs.remote.block_cache import BlockKey, Fetch


class BlockTier(Protocol):
    """One cache level: return block ``key``'s bytes, from its store or from ``below``."""

    async def fetch(self, key: BlockKey, below: Fetch) -> bytes: ...

    def holds(self, key: BlockKey) -> bool:
        """Whether the tier knows, without asking anyone, that it can answer ``key`` (a hint
        for speculative reads; False when it cannot tell)."""
        ...


def chain(tiers: Sequence[BlockTier], key: BlockKey, origin: Fetch) -> Fetch:
    """A fetch function that asks ``tiers`` in order, the origin last."""
    fetch = origin
    for tier in reversed(tiers):
        fetch = _bind(tier, key, fetch)
    return fetch


def _bind(tier: BlockTier, key: BlockKey, below: Fetch) -> Fetch:
    async def fetch() -> bytes:
        return await tier.fetch(key, below)

    return fetch
