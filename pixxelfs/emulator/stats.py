"""Request accounting, so tests and benchmarks can assert what a client actually asked for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StorageGet:
    """One storage request: which package, which byte range (inclusive), with what outcome."""

    package: str
    start: int | None
    end: int | None
    status: int


@dataclass
class Stats:
    requests: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    by_route: dict[str, Counter[int]] = field(default_factory=dict)
    bytes_sent: int = 0
    storage_gets: list[StorageGet] = field(default_factory=list)

    def record(self, route: str, status: int, body_bytes: int) -> None:
        self.requests[route] += 1
        self.statuses[status] += 1
        self.by_route.setdefault(route, Counter())[status] += 1
        self.bytes_sent += body_bytes

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": dict(self.requests),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "by_route": {r: {str(k): v for k, v in c.items()} for r, c in self.by_route.items()},
            "bytes_sent": self.bytes_sent,
            "storage_gets": [vars(g) for g in self.storage_gets],
        }
