"""The signed-URL lifecycle: catalog id -> a usable pre-signed package URL.

This module owns asking the API for download resources (through the narrow
:class:`DownloadApi` protocol), remembering the signed URLs until shortly before they expire,
and renewing them when storage says they expired. It never talks to storage and never logs a
URL's query string (the signature is a bearer credential).

Expiry is read from the URL itself when it has a known presigned form (S3 SigV4 and legacy,
GCS V4, Azure SAS); the API does not document a lifetime, so unknown forms fall back to a
conservative default lifetime.
"""

from __future__ import annotations

import calendar
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol
from urllib.parse import parse_qsl, urlsplit

import trio
from cachetools import LRUCache

from pixxelfs.api.models import DownloadResource, parse_timestamp
from pixxelfs.errors import MalformedResponseError
from pixxelfs.logs import redact_url

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SignedUrl:
    """A signed URL and when it stops working (a ``time.time()`` epoch, None if unknown)."""

    url: str
    expires_at: float | None

    def __repr__(self) -> str:  # never show the signature
        return f"SignedUrl({redact_url(self.url)!r}, expires_at={self.expires_at!r})"


class DownloadApi(Protocol):
    """What the resolver needs from the API client: create a resource and poll to success."""

    async def wait_for_download(self, catalog_id: str) -> DownloadResource: ...


def _query(url: str) -> Mapping[str, str]:
    """Query parameters with lower-cased names (presigners differ in case)."""
    return {k.lower(): v for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)}


def _compact_utc(value: str) -> float | None:
    """``YYYYMMDDTHHMMSSZ`` (S3 and GCS V4 signing time) to an epoch."""
    try:
        parsed = time.strptime(value, "%Y%m%dT%H%M%SZ")
    except ValueError:
        return None
    return float(calendar.timegm(parsed))


def _seconds(value: str | None) -> float | None:
    if value is None or not value.isdigit():
        return None
    return float(value)


def expiry_from_url(url: str, now: float) -> float | None:
    """When a presigned URL expires (epoch seconds), or None for an unknown form.

    A relative lifetime without a signing time (a malformed S3/GCS URL) is counted from
    ``now``: the URL was just issued, so this errs on the early side.
    """
    query = _query(url)
    for date_key, lifetime_key in (
        ("x-amz-date", "x-amz-expires"),
        ("x-goog-date", "x-goog-expires"),
    ):
        lifetime = _seconds(query.get(lifetime_key))
        if lifetime is None:
            continue
        signed_at = _compact_utc(query.get(date_key, ""))
        return (signed_at if signed_at is not None else now) + lifetime
    legacy = _seconds(query.get("expires"))
    if legacy is not None:
        return legacy
    if "se" in query and "sig" in query:
        expiry = parse_timestamp(query["se"])  # Azure SAS: ISO 8601
        return expiry.timestamp() if expiry else None
    return None


@dataclass
class _Flight:
    """One in-progress resolution that concurrent callers wait on."""

    done: trio.Event = field(default_factory=trio.Event)
    result: SignedUrl | None = None
    error: Exception | None = None


@dataclass(frozen=True)
class _Entry:
    signed: SignedUrl
    fresh_until: float


class SignedUrlResolver:
    """Catalog id -> cached :class:`SignedUrl`, with single-flight resolution and renewal.

    A URL is reused until ``expires_at - margin``; the margin shrinks to half the lifetime for
    short-lived URLs, so a URL valid for less than ``refresh_margin`` is still used instead of
    being re-requested on every read. Concurrent callers for one catalog id share one
    download-resource creation; if the task doing the work is cancelled, a waiter takes over.
    """

    def __init__(
        self,
        api: DownloadApi,
        *,
        refresh_margin: float = 60.0,
        default_lifetime: float = 900.0,
        clock: Callable[[], float] = time.time,
        max_entries: int = 4096,
    ):
        self._api = api
        self._margin = refresh_margin
        self._default_lifetime = default_lifetime
        self._clock = clock
        self._entries: LRUCache[str, _Entry] = LRUCache(maxsize=max_entries)
        self._flights: dict[str, _Flight] = {}
        self.resolutions = 0
        self.renewals = 0

    async def get(self, catalog_id: str) -> SignedUrl:
        """A signed URL for the catalog's package that is not about to expire."""
        while True:
            entry = self._entries.get(catalog_id)
            if entry is not None and self._clock() < entry.fresh_until:
                return entry.signed
            flight = self._flights.get(catalog_id)
            if flight is None:
                return await self._resolve(catalog_id)
            await flight.done.wait()
            if flight.error is not None:
                raise flight.error
            if flight.result is not None:
                return flight.result
            # The leader was cancelled before finishing: loop and take over.

    async def renew(self, catalog_id: str, stale: SignedUrl) -> SignedUrl:
        """Forget ``stale`` (if it is still the cached URL) and return a fresh one.

        Renewers holding the same stale URL share one renewal: the first drops it, the
        others find either the renewal in flight or its result.
        """
        entry = self._entries.get(catalog_id)
        if entry is not None and entry.signed.url == stale.url:
            del self._entries[catalog_id]
            self.renewals += 1
            log.info("renewing the signed URL of catalog %s", catalog_id)
        return await self.get(catalog_id)

    def forget(self, catalog_id: str) -> None:
        """Drop any cached URL for the catalog (e.g. when its package changed)."""
        self._entries.pop(catalog_id, None)

    async def _resolve(self, catalog_id: str) -> SignedUrl:
        flight = _Flight()
        self._flights[catalog_id] = flight
        try:
            flight.result = await self._fetch(catalog_id)
        except Exception as exc:
            flight.error = exc
            raise
        finally:
            del self._flights[catalog_id]
            flight.done.set()
        return flight.result

    async def _fetch(self, catalog_id: str) -> SignedUrl:
        self.resolutions += 1
        resource = await self._api.wait_for_download(catalog_id)
        if not resource.signed_url:
            raise MalformedResponseError(
                f"download resource {resource.id} for catalog {catalog_id} has no signed_url"
            )
        now = self._clock()
        expires_at = expiry_from_url(resource.signed_url, now)
        signed = SignedUrl(resource.signed_url, expires_at)
        self._entries[catalog_id] = _Entry(signed, self._fresh_until(now, expires_at))
        log.debug(
            "catalog %s: signed URL %s expires in %s s",
            catalog_id,
            redact_url(signed.url),
            "?" if expires_at is None else f"{expires_at - now:.0f}",
        )
        return signed

    def _fresh_until(self, now: float, expires_at: float | None) -> float:
        if expires_at is None:
            return now + self._default_lifetime
        lifetime = expires_at - now
        return expires_at - min(self._margin, max(lifetime, 0.0) / 2)
