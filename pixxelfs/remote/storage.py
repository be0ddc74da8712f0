"""Range reads from object storage through signed URLs, and the package they address.

:class:`StorageClient` owns the HTTP conversation with storage: it sends ``Range`` and
``If-Match``, refuses any answer that cannot be exactly the bytes asked for (wrong
``Content-Range``, a short or long body, a full 200 for a partial range) and retries transient
failures. It never sends the API key: the ``httpx.AsyncClient`` it wraps must carry no
``Authorization`` header.

:class:`PackageSource` binds one catalog's package to that client and the signed-URL
resolver: it pins the package's ETag and size on first contact, renews an expired URL once per
read, and raises :class:`PackageChangedError` rather than ever mixing two versions.

The size probe is a suffix-range GET (``Range: bytes=-N``), not a HEAD: a presigned URL is
signed for one method, so S3 and GCS refuse HEAD on a URL signed for GET; and the probe's body
is the package tail, where the ZIP directory lives, so opening a package costs one request.
"""

from __future__ import annotations

import email.utils
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from functools import cached_property
from typing import TypeVar

import httpcore
import httpx
import trio

from pixxelfs.errors import PackageChangedError, SignedUrlExpiredError, StorageError
from pixxelfs.logs import redact_url
from pixxelfs.remote.retry import RetryPolicy, TransientError, retrying
from pixxelfs.remote.signed_url import SignedUrl, SignedUrlResolver

log = logging.getLogger(__name__)

T = TypeVar("T")

_CONTENT_RANGE = re.compile(r"^\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$", re.IGNORECASE)

# Ranges address the stored bytes only if no content coding is applied on the way.
_IDENTITY = {"Accept-Encoding": "identity"}

# What the first contact with a package reads from its end: 64 KiB of ZIP comment plus the
# end records, rounded up; it usually holds the whole central directory too.
DEFAULT_PROBE_BYTES = 128 * 1024


@dataclass(frozen=True)
class ObjectInfo:
    """What identifies one version of a stored object."""

    size: int
    etag: str | None


@dataclass(frozen=True)
class Probe:
    """The answer to a suffix-range probe: the object's identity and its last bytes."""

    info: ObjectInfo
    tail: bytes


@dataclass(frozen=True)
class _ContentRange:
    start: int
    end_exclusive: int
    total: int | None


def _parse_content_range(value: str | None) -> _ContentRange | None:
    match = _CONTENT_RANGE.match(value or "")
    if match is None:
        return None
    first, last, total = match.groups()
    return _ContentRange(int(first), int(last) + 1, None if total == "*" else int(total))


def _retry_after(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds: either delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - now, 0.0)


def _is_transient(exc: Exception) -> bool:
    return isinstance(exc, TransientError | httpx.TransportError)


# httpcore reads a response 64 KiB at a time. For the multi-MiB range bodies streamed here,
# 256 KiB reads cut the Python work per byte received by about a third (a 1.43 GB `cp` on the
# bench machine: 1.78 s -> 1.23 s of the daemon's user CPU). ``READ_NUM_BYTES`` is a class
# attribute of httpcore's HTTP/1.1 connection; a version without it is left as it is.
RECEIVE_BYTES = 256 * 1024


def _receive_larger_chunks() -> None:
    connection = getattr(httpcore, "AsyncHTTP11Connection", None)
    if (
        connection is not None
        and getattr(connection, "READ_NUM_BYTES", RECEIVE_BYTES) < RECEIVE_BYTES
    ):
        connection.READ_NUM_BYTES = RECEIVE_BYTES


@dataclass(frozen=True)
class _RangeGet:
    """One range request: the bytes asked for and what the answer must match (``etag`` as
    If-Match and against the answer's ETag; ``object_size`` against the Content-Range total)."""

    url: str
    start: int
    end_exclusive: int
    etag: str | None
    object_size: int | None

    @cached_property
    def describe(self) -> str:
        return f"GET bytes {self.start}-{self.end_exclusive - 1} of {redact_url(self.url)}"


class StorageClient:
    """Validated, retried range GETs on signed URLs. Counts requests, bytes and retries."""

    def __init__(self, client: httpx.AsyncClient, *, policy: RetryPolicy | None = None):
        if "authorization" in client.headers:
            raise ValueError("the storage client must not carry an Authorization header")
        _receive_larger_chunks()
        self._client = client
        self._policy = policy or RetryPolicy()
        self.requests = 0
        self.bytes_received = 0
        self.retries = 0

    def stats(self) -> dict[str, int]:
        return {"requests": self.requests, "bytes": self.bytes_received, "retries": self.retries}

    async def head(self, url: str) -> ObjectInfo:
        """Size and ETag of the object (one 1-byte suffix probe; see the module docstring)."""
        return (await self.probe(url, 1)).info

    async def probe(self, url: str, tail_bytes: int) -> Probe:
        """The object's size, ETag and its last ``tail_bytes`` bytes (fewer if it is smaller)."""
        if tail_bytes < 1:
            raise ValueError("tail_bytes must be positive")
        describe = f"GET last {tail_bytes} bytes of {redact_url(url)}"
        return await retrying(
            self._policy,
            lambda: self._probe_once(url, tail_bytes),
            _is_transient,
            describe,
            on_retry=self._count_retry,
        )

    async def fetch_range(
        self,
        url: str,
        start: int,
        end_exclusive: int,
        *,
        etag: str | None,
        object_size: int | None = None,
    ) -> bytes:
        """Exactly the bytes ``[start, end_exclusive)`` of the object, or a domain error.

        ``etag`` is sent as ``If-Match`` and compared with the answer's ETag; ``object_size``
        (when known) is compared with the ``Content-Range`` total. Either mismatch means the
        object was replaced: :class:`PackageChangedError`.
        """
        pieces = await self.fetch_split(
            url, start, end_exclusive, [end_exclusive - start], etag=etag, object_size=object_size
        )
        return pieces[0]

    async def fetch_split(
        self,
        url: str,
        start: int,
        end_exclusive: int,
        sizes: Sequence[int],
        *,
        etag: str | None,
        object_size: int | None = None,
        on_piece: PieceSink | None = None,
    ) -> list[bytes]:
        """Like :meth:`fetch_range`, but the bytes cut into pieces of ``sizes`` (which must add
        up to the range), each copied once from the body: no joined copy of the whole range.
        ``on_piece(index, piece)`` hears of each piece as soon as its bytes are in (again
        for an attempt that is retried), so that a reader need not wait for the whole range."""
        if not 0 <= start < end_exclusive:
            raise ValueError(f"bad range [{start}, {end_exclusive})")
        if sum(sizes) != end_exclusive - start or min(sizes, default=0) <= 0:
            raise ValueError("the piece sizes must be positive and add up to the range")
        get = _RangeGet(url, start, end_exclusive, etag, object_size)
        return await retrying(
            self._policy,
            lambda: self._fetch_once(get, PieceCutter(sizes, on_piece)),
            _is_transient,
            get.describe,
            on_retry=self._count_retry,
        )

    def _count_retry(self, exc: Exception, wait: float) -> None:
        self.retries += 1

    async def _fetch_once(self, get: _RangeGet, cutter: PieceCutter) -> list[bytes]:
        start, end_exclusive, etag, describe = get.start, get.end_exclusive, get.etag, get.describe
        headers = {"Range": f"bytes={start}-{end_exclusive - 1}", **_IDENTITY}
        if etag is not None:
            headers["If-Match"] = etag
        self.requests += 1
        log.debug("%s", describe)
        async with self._client.stream("GET", get.url, headers=headers) as response:
            self._check_status(response, describe)
            _check_etag(response, etag, describe)
            expected = end_exclusive - start
            if response.status_code == 200:
                # Range ignored: acceptable only if the whole object is exactly this range.
                if start != 0 or _content_length(response) != expected:
                    raise StorageError(f"{describe}: storage ignored the Range header (200)")
            else:
                got = _parse_content_range(response.headers.get("content-range"))
                if got is None or (got.start, got.end_exclusive) != (start, end_exclusive):
                    raise StorageError(
                        f"{describe}: answer covers the wrong range "
                        f"(Content-Range {response.headers.get('content-range')!r})"
                    )
                if get.object_size is not None and got.total not in (None, get.object_size):
                    raise PackageChangedError(
                        f"{describe}: object size changed from {get.object_size} to {got.total}"
                    )
            await self._read_body(response, expected, describe, cutter)
            return cutter.pieces

    async def _probe_once(self, url: str, tail_bytes: int) -> Probe:
        describe = f"GET last {tail_bytes} bytes of {redact_url(url)}"
        self.requests += 1
        log.debug("%s", describe)
        headers = {"Range": f"bytes=-{tail_bytes}", **_IDENTITY}
        async with self._client.stream("GET", url, headers=headers) as response:
            self._check_status(response, describe)
            etag = response.headers.get("etag")
            if response.status_code == 200:
                size = _content_length(response)
                if size is None or size > tail_bytes:
                    raise StorageError(f"{describe}: storage ignored the Range header (200)")
                tail = await self._read_whole(response, size, describe)
                return Probe(ObjectInfo(size, etag), tail)
            got = _parse_content_range(response.headers.get("content-range"))
            if got is None or got.total is None or got.end_exclusive != got.total:
                raise StorageError(
                    f"{describe}: not a tail of the object "
                    f"(Content-Range {response.headers.get('content-range')!r})"
                )
            if got.end_exclusive - got.start != min(tail_bytes, got.total):
                raise StorageError(f"{describe}: answer has the wrong length")
            tail = await self._read_whole(response, got.end_exclusive - got.start, describe)
            return Probe(ObjectInfo(got.total, etag), tail)

    def _check_status(self, response: httpx.Response, describe: str) -> None:
        status = response.status_code
        if status in (200, 206):
            return
        if status == 403:
            raise SignedUrlExpiredError(f"{describe}: storage refused the signed URL (403)")
        if status == 412:
            raise PackageChangedError(f"{describe}: the package changed (412)")
        if status == 429 or status >= 500:
            hint = _retry_after(response.headers.get("retry-after"), time.time())
            raise TransientError(f"HTTP {status}", retry_after=hint)
        raise StorageError(f"{describe}: unexpected HTTP {status}")

    async def _read_whole(self, response: httpx.Response, size: int, describe: str) -> bytes:
        cutter = PieceCutter([size])
        await self._read_body(response, size, describe, cutter)
        return cutter.pieces[0] if cutter.pieces else b""  # an empty body completes no piece

    async def _read_body(
        self, response: httpx.Response, expected: int, describe: str, cutter: PieceCutter
    ) -> None:
        """Feed the body, which must be exactly ``expected`` bytes, to ``cutter``; short bodies
        are transient."""
        received = 0
        async with aclosing(response.aiter_bytes()) as body:
            async for chunk in body:
                received += len(chunk)
                if received > expected:
                    raise StorageError(f"{describe}: body longer than the {expected} bytes")
                cutter.feed(chunk)
        self.bytes_received += received
        if received < expected:
            raise TransientError(f"truncated body: {received} of {expected} bytes")


PieceSink = Callable[[int, bytes], None]


class PieceCutter:
    """A body cut into pieces of ``sizes`` as its chunks arrive, each byte copied once (a
    piece that is exactly one chunk is that chunk, not a copy); ``on_piece(index, piece)`` is
    told of each piece once it is complete."""

    def __init__(self, sizes: Sequence[int], on_piece: PieceSink | None = None):
        self.pieces: list[bytes] = []
        self._sizes = sizes
        self._on_piece = on_piece
        self._views: list[bytes | memoryview] = []
        self._missing = sizes[0] if sizes else 0  # bytes the current piece still needs

    def feed(self, chunk: bytes) -> None:
        offset = 0
        while offset < len(chunk):
            if not self._missing:
                raise ValueError("more bytes than the pieces hold")
            take = min(self._missing, len(chunk) - offset)
            whole = offset == 0 and take == len(chunk)
            self._views.append(chunk if whole else memoryview(chunk)[offset : offset + take])
            offset += take
            self._missing -= take
            if not self._missing:
                self._complete()

    def _complete(self) -> None:
        views, self._views = self._views, []
        piece = views[0] if len(views) == 1 and isinstance(views[0], bytes) else b"".join(views)
        self.pieces.append(piece)
        if self._on_piece is not None:
            self._on_piece(len(self.pieces) - 1, piece)
        following = len(self.pieces)
        self._missing = self._sizes[following] if following < len(self._sizes) else 0


def _content_length(response: httpx.Response) -> int | None:
    value = response.headers.get("content-length", "")
    return int(value) if value.isdigit() else None


def _check_etag(response: httpx.Response, pinned: str | None, describe: str) -> None:
    """Some servers ignore If-Match: compare the ETag ourselves too."""
    current = response.headers.get("etag")
    if pinned is not None and current is not None and current != pinned:
        raise PackageChangedError(f"{describe}: ETag changed from {pinned} to {current}")


class PackageSource:
    """One catalog's delivery package: pinned to the version (ETag, size) first seen.

    Reads renew an expired signed URL once and retry; a version change is an error, never a
    silent switch, because blocks of the old version may already be cached or returned.
    """

    def __init__(
        self,
        catalog_id: str,
        resolver: SignedUrlResolver,
        storage: StorageClient,
        *,
        probe_bytes: int = DEFAULT_PROBE_BYTES,
    ):
        self.catalog_id = catalog_id
        self._resolver = resolver
        self._storage = storage
        self._probe_bytes = probe_bytes
        self._info: ObjectInfo | None = None
        self._tail = b""
        self._probe_lock = trio.Lock()

    @property
    def info(self) -> ObjectInfo | None:
        """The pinned version, or None before the first probe."""
        return self._info

    @property
    def identity(self) -> tuple[str, str | None, int]:
        """``(catalog_id, etag, size)``: the key of this package version in caches."""
        if self._info is None:
            raise RuntimeError("PackageSource.identity needs size_and_etag() first")
        return (self.catalog_id, self._info.etag, self._info.size)

    def pin(self, info: ObjectInfo) -> None:
        """Pin a version known from an earlier mount (a saved index) instead of probing."""
        if self._info is None:
            self._info = info

    async def size_and_etag(self) -> ObjectInfo:
        """The pinned version, probed once (the probe also keeps the package tail)."""
        if self._info is not None:
            return self._info
        async with self._probe_lock:
            if self._info is None:
                probe = await self._with_renewal(
                    lambda url: self._storage.probe(url.url, self._probe_bytes)
                )
                self._info, self._tail = probe.info, probe.tail
                log.debug(
                    "catalog %s: package is %d bytes, etag %s",
                    self.catalog_id,
                    probe.info.size,
                    probe.info.etag,
                )
        return self._info

    async def read_tail(self, length: int) -> bytes:
        """The last ``length`` bytes of the package (free if the probe already has them)."""
        info = await self.size_and_etag()
        length = min(length, info.size)
        if length <= len(self._tail):
            return self._tail[len(self._tail) - length :]
        return await self.read_range(info.size - length, info.size)

    async def read_range(self, start: int, end_exclusive: int) -> bytes:
        """Bytes ``[start, end_exclusive)`` of the pinned version."""
        info = await self._check_range(start, end_exclusive)
        return await self._with_renewal(
            lambda url: self._storage.fetch_range(
                url.url, start, end_exclusive, etag=info.etag, object_size=info.size
            )
        )

    async def read_split(
        self,
        start: int,
        end_exclusive: int,
        sizes: Sequence[int],
        on_piece: PieceSink | None = None,
    ) -> list[bytes]:
        """Bytes ``[start, end_exclusive)`` of the pinned version, as pieces of ``sizes`` (one
        request; see :meth:`StorageClient.fetch_split`)."""
        info = await self._check_range(start, end_exclusive)
        return await self._with_renewal(
            lambda url: self._storage.fetch_split(
                url.url,
                start,
                end_exclusive,
                sizes,
                etag=info.etag,
                object_size=info.size,
                on_piece=on_piece,
            )
        )

    async def _check_range(self, start: int, end_exclusive: int) -> ObjectInfo:
        info = await self.size_and_etag()
        if not 0 <= start < end_exclusive <= info.size:
            raise ValueError(f"range [{start}, {end_exclusive}) outside a {info.size}-byte package")
        return info

    async def _with_renewal(self, call: Callable[[SignedUrl], Awaitable[T]]) -> T:
        signed = await self._resolver.get(self.catalog_id)
        try:
            return await call(signed)
        except SignedUrlExpiredError:
            log.info("catalog %s: signed URL refused; renewing once", self.catalog_id)
        renewed = await self._resolver.renew(self.catalog_id, signed)
        return await call(renewed)
