"""The Pixxel API: an async client and the typed models of its answers."""

from __future__ import annotations

from pixxelfs.api.client import ClientStats, PixxelClient, parse_retry_after
from pixxelfs.api.models import (
    Catalog,
    DownloadResource,
    OrderItem,
    Pagination,
    Project,
    Task,
)

__all__ = [
    "Catalog",
    "ClientStats",
    "DownloadResource",
    "OrderItem",
    "Pagination",
    "PixxelClient",
    "Project",
    "Task",
    "parse_retry_after",
]
