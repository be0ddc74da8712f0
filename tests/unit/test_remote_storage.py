"""StorageClient and PackageSource over httpx.MockTransport: range semantics and faults."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx
import pytest
import trio

from pixxelfs.api.models import DownloadResource
from pixxelfs.errors import (
    ApiUnavailableError,
    PackageChangedError,
    SignedUrlExpiredError,
    StorageError,
)
from pixxelfs.remote.retry import RetryPolicy
from pixxelfs.remote.signed_url import SignedUrlResolver
from pixxelfs.remote.storage import RECEIVE_BYTES, PackageSource, PieceCutter, StorageClient

Fault = Callable[[httpx.Request], httpx.Response | None]


class ObjectServer:
    """One object in 'storage': RFC 9110 ranges, ETag/If-Match, signatures, queued faults."""

    def __init__(self, data: bytes, etag: str | None = '"v1"'):
        self.data = data
        self.etag = etag
        self.valid_signatures = {"sig-0"}
        self.faults: list[Fault] = []
        self.requests: list[httpx.Request] = []

    def replace(self, data: bytes, etag: str) -> None:
        self.data, self.etag = data, etag

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        assert "authorization" not in request.headers
        if self.faults:
            answer = self.faults.pop(0)(request)
            if answer is not None:
                return answer
        signature = parse_qs(urlsplit(str(request.url)).query).get("sig", [""])[0]
        if signature not in self.valid_signatures:
            return httpx.Response(403, text="Request has expired")
        if_match = request.headers.get("if-match")
        if if_match is not None and self.etag is not None and if_match != self.etag:
            return httpx.Response(412)
        return self._ranged(request.headers.get("range"))

    def _ranged(self, header: str | None) -> httpx.Response:
        size = len(self.data)
        headers = {"Accept-Ranges": "bytes"} | ({"ETag": self.etag} if self.etag else {})
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", header or "")
        if match is None:
            return httpx.Response(200, content=self.data, headers=headers)
        first, last = match.groups()
        if first == "":
            start, end = max(size - int(last), 0), size
        else:
            start, end = int(first), min(int(last) + 1 if last else size, size)
        if start >= size:
            return httpx.Response(416, headers={"Content-Range": f"bytes */{size}"})
        headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
        return httpx.Response(206, content=self.data[start:end], headers=headers)


def url(signature: str = "sig-0") -> str:
    return f"https://storage.test/bucket/pkg.zip?X-Amz-Expires=600&sig={signature}"


FAST = RetryPolicy(attempts=4, base=0.01, cap=0.05, max_retry_after=5)
DATA = bytes(range(256)) * 40  # 10240 bytes


def make_storage(server: ObjectServer, policy: RetryPolicy = FAST) -> StorageClient:
    client = httpx.AsyncClient(transport=httpx.MockTransport(server.handler))
    return StorageClient(client, policy=policy)


def respond(status: int, **kwargs) -> Fault:
    return lambda request: httpx.Response(status, **kwargs)


async def test_a_storage_client_makes_httpcore_read_larger_chunks() -> None:
    """The installed httpcore still has the read size pixxelfs raises (else bodies are read
    64 KiB at a time again, at about a third more CPU per byte)."""
    async with httpx.AsyncClient() as client:
        StorageClient(client)
    assert httpcore.AsyncHTTP11Connection.READ_NUM_BYTES == RECEIVE_BYTES


async def test_fetch_range_returns_exactly_the_range() -> None:
    server = ObjectServer(DATA)
    storage = make_storage(server)
    assert await storage.fetch_range(url(), 100, 1100, etag='"v1"') == DATA[100:1100]
    request = server.requests[-1]
    assert request.headers["range"] == "bytes=100-1099"
    assert request.headers["if-match"] == '"v1"'
    assert storage.stats() == {"requests": 1, "bytes": 1000, "retries": 0}


async def test_fetch_split_cuts_one_request_into_pieces() -> None:
    server = ObjectServer(DATA)
    storage = make_storage(server)
    pieces = await storage.fetch_split(url(), 100, 1100, [1, 499, 500], etag='"v1"')
    assert pieces == [DATA[100:101], DATA[101:600], DATA[600:1100]]
    assert all(type(piece) is bytes for piece in pieces)
    assert len(server.requests) == 1 and storage.stats()["bytes"] == 1000
    for sizes in ([500, 499], [1000, 0]):
        with pytest.raises(ValueError):
            await storage.fetch_split(url(), 100, 1100, sizes, etag='"v1"')


def _cut(chunks: list[bytes], sizes: list[int]) -> tuple[list[bytes], list[tuple[int, bytes]]]:
    told: list[tuple[int, bytes]] = []
    cutter = PieceCutter(sizes, lambda index, piece: told.append((index, piece)))
    for chunk in chunks:
        cutter.feed(chunk)
    return cutter.pieces, told


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
@pytest.mark.parametrize("sizes", [[10], [1, 9], [3, 3, 4], [7, 1, 1, 1]])
def test_the_cutter_matches_slicing_the_join(chunk: int, sizes: list[int]) -> None:
    data = bytes(range(10))
    chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    expected = [data[start : start + size] for start, size in zip(starts, sizes, strict=True)]
    pieces, told = _cut(chunks, sizes)
    assert pieces == expected and told == list(enumerate(expected))


def test_the_cutter_tells_of_a_piece_as_soon_as_it_is_complete() -> None:
    told: list[int] = []
    cutter = PieceCutter([4, 4, 4], lambda index, _piece: told.append(index))
    cutter.feed(b"abcdef")
    assert told == [0]
    cutter.feed(b"gh")
    assert told == [0, 1]
    with pytest.raises(ValueError, match="more bytes"):
        cutter.feed(b"ijklm")


def test_the_cutter_hands_out_a_whole_chunk_without_copying() -> None:
    chunks = [b"a" * 8, b"b" * 8]
    pieces, _told = _cut(chunks, [8, 8])
    assert pieces[0] is chunks[0] and pieces[1] is chunks[1]


async def test_probe_and_head_give_size_etag_and_tail() -> None:
    server = ObjectServer(DATA)
    storage = make_storage(server)
    probe = await storage.probe(url(), 300)
    assert (probe.info.size, probe.info.etag, probe.tail) == (len(DATA), '"v1"', DATA[-300:])
    whole = await storage.probe(url(), 1_000_000)
    assert whole.tail == DATA
    info = await storage.head(url())
    assert (info.size, info.etag) == (len(DATA), '"v1"')


async def test_storage_client_refuses_an_authorization_header() -> None:
    client = httpx.AsyncClient(headers={"Authorization": "Bearer key"})
    with pytest.raises(ValueError, match="Authorization"):
        StorageClient(client)


async def test_wrong_content_range_is_rejected_without_retry() -> None:
    server = ObjectServer(DATA)
    server.faults.append(
        respond(206, content=DATA[0:10], headers={"Content-Range": f"bytes 0-9/{len(DATA)}"})
    )
    storage = make_storage(server)
    with pytest.raises(StorageError, match="wrong range"):
        await storage.fetch_range(url(), 10, 20, etag=None)
    assert storage.retries == 0


async def test_full_200_is_accepted_only_for_the_whole_object() -> None:
    server = ObjectServer(DATA)
    server.faults.append(respond(200, content=DATA))
    storage = make_storage(server)
    with pytest.raises(StorageError, match="ignored the Range"):
        await storage.fetch_range(url(), 0, 10, etag=None)
    server.faults.append(respond(200, content=DATA))
    assert await storage.fetch_range(url(), 0, len(DATA), etag=None) == DATA


async def test_short_body_is_retried_and_never_returned() -> None:
    server = ObjectServer(DATA)
    short = respond(206, content=DATA[10:15], headers={"Content-Range": "bytes 10-19/10240"})
    server.faults += [short, short]
    storage = make_storage(server)
    assert await storage.fetch_range(url(), 10, 20, etag=None) == DATA[10:20]
    assert storage.retries == 2 and storage.requests == 3
    server.faults += [short] * FAST.attempts
    with pytest.raises(ApiUnavailableError, match="truncated"):
        await storage.fetch_range(url(), 10, 20, etag=None)


async def test_long_body_is_an_error() -> None:
    server = ObjectServer(DATA)
    server.faults.append(
        respond(206, content=DATA[10:30], headers={"Content-Range": "bytes 10-19/10240"})
    )
    with pytest.raises(StorageError, match="longer"):
        await make_storage(server).fetch_range(url(), 10, 20, etag=None)


async def test_503_with_retry_after_is_honoured(autojump_clock) -> None:
    server = ObjectServer(DATA)
    server.faults += [respond(503, headers={"Retry-After": "3"}), respond(429)]
    storage = make_storage(server)
    started = trio.current_time()
    assert await storage.fetch_range(url(), 0, 5, etag=None) == DATA[:5]
    waited = trio.current_time() - started
    assert 3 <= waited < 3 + FAST.cap + 0.001
    assert storage.retries == 2


async def test_transport_errors_are_retried_then_give_up(autojump_clock) -> None:
    server = ObjectServer(DATA)

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    server.faults += [boom] * FAST.attempts
    storage = make_storage(server)
    with pytest.raises(ApiUnavailableError, match="after 4 attempts") as caught:
        await storage.fetch_range(url(), 0, 5, etag=None)
    assert "sig-0" not in str(caught.value)
    assert storage.retries == FAST.attempts - 1


@pytest.mark.parametrize(
    ("status", "error"),
    [(403, SignedUrlExpiredError), (412, PackageChangedError), (416, StorageError)],
)
async def test_status_codes_map_to_domain_errors(status: int, error: type) -> None:
    server = ObjectServer(DATA)
    server.faults.append(respond(status))
    storage = make_storage(server)
    with pytest.raises(error):
        await storage.fetch_range(url(), 0, 5, etag='"v1"')
    assert storage.retries == 0


async def test_unsatisfiable_range_from_the_server_is_a_storage_error() -> None:
    storage = make_storage(ObjectServer(DATA))
    with pytest.raises(StorageError, match="416"):
        await storage.fetch_range(url(), len(DATA) + 5, len(DATA) + 10, etag=None)


async def test_server_ignoring_if_match_is_caught_by_the_etag() -> None:
    server = ObjectServer(DATA)
    server.faults.append(
        respond(206, content=DATA[:5], headers={"Content-Range": "bytes 0-4/10240", "ETag": "x"})
    )
    with pytest.raises(PackageChangedError, match="ETag changed"):
        await make_storage(server).fetch_range(url(), 0, 5, etag='"v1"')


class FakeDownloads:
    """The API side: every resolution hands out the next signature."""

    def __init__(self, server: ObjectServer):
        self.server = server
        self.issued = 0

    async def wait_for_download(self, catalog_id: str) -> DownloadResource:
        signature = f"sig-{self.issued}"
        self.issued += 1
        self.server.valid_signatures.add(signature)
        return DownloadResource(id=f"dl-{self.issued}", status="success", signed_url=url(signature))


def make_source(
    server: ObjectServer, probe_bytes: int = 512
) -> tuple[PackageSource, FakeDownloads]:
    """A source whose URLs come from FakeDownloads (no URL is valid before it is issued)."""
    server.valid_signatures = set()
    downloads = FakeDownloads(server)
    source = PackageSource(
        "cat-1", SignedUrlResolver(downloads), make_storage(server), probe_bytes=probe_bytes
    )
    return source, downloads


async def test_package_source_pins_version_and_serves_ranges() -> None:
    server = ObjectServer(DATA)
    source, _ = make_source(server)
    info = await source.size_and_etag()
    assert source.identity == ("cat-1", '"v1"', len(DATA))
    assert await source.read_tail(100) == DATA[-100:]
    requests = len(server.requests)
    assert await source.read_tail(512) == DATA[-512:]
    assert len(server.requests) == requests  # served from the probe
    assert await source.read_tail(2000) == DATA[-2000:]
    assert await source.read_range(5, 50) == DATA[5:50]
    assert info.size == len(DATA)
    with pytest.raises(ValueError):
        await source.read_range(0, len(DATA) + 1)


async def test_expired_url_is_renewed_once_and_the_read_retried() -> None:
    server = ObjectServer(DATA)
    source, downloads = make_source(server)
    await source.size_and_etag()
    server.valid_signatures.clear()  # every URL issued so far has expired
    assert await source.read_range(0, 10) == DATA[:10]
    assert downloads.issued == 2
    server.faults += [respond(403), respond(403)]  # the renewed URL is refused too: give up
    with pytest.raises(SignedUrlExpiredError):
        await source.read_range(0, 10)
    assert downloads.issued == 3


async def test_package_replaced_behind_a_renewed_url_is_detected() -> None:
    server = ObjectServer(DATA)
    source, _ = make_source(server)
    await source.size_and_etag()
    server.replace(DATA[::-1], '"v2"')
    server.valid_signatures.clear()
    with pytest.raises(PackageChangedError):
        await source.read_range(0, 10)


async def test_package_replaced_without_etag_is_caught_by_the_size() -> None:
    server = ObjectServer(DATA, etag=None)
    source, _ = make_source(server)
    assert (await source.size_and_etag()).etag is None
    server.data = DATA + b"more"
    with pytest.raises(PackageChangedError, match="size changed"):
        await source.read_range(0, 10)
