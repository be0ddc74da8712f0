"""Signed object storage: ranges, HEAD, validators, preconditions, expiry and signatures."""

from __future__ import annotations

import time
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import httpx
import pytest

from pixxelfs.emulator import Emulator, FaultPlan
from pixxelfs.emulator.storage import parse_range
from tests.emulator.conftest import signed_url


@pytest.fixture
def scene(emulator: Emulator) -> str:
    return emulator.catalog_ids()[1]


@pytest.fixture
def url(api: httpx.Client, scene: str) -> str:
    return signed_url(api, scene)


@pytest.fixture
def package(emulator: Emulator, scene: str) -> bytes:
    return emulator.package_path(scene).read_bytes()


def test_whole_object_and_headers(url: str, package: bytes) -> None:
    response = httpx.get(url, headers={"Authorization": "ignored-by-storage"})
    assert response.status_code == 200
    assert response.content == package
    assert response.headers["content-type"] == "application/zip"
    assert response.headers["accept-ranges"] == "bytes"
    assert response.headers["etag"].startswith('"') and response.headers["etag"].endswith('"')
    assert response.headers["last-modified"].endswith("GMT")
    assert package[:4] == b"PK\x03\x04"


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [("bytes=0-99", 0, 99), ("bytes=100-", 100, None), ("bytes=-22", -22, None)],
)
def test_ranges(url: str, package: bytes, spec: str, start: int, end: int | None) -> None:
    response = httpx.get(url, headers={"Range": spec})
    assert response.status_code == 206
    expected = package[start : None if end is None else end + 1]
    assert response.content == expected
    assert int(response.headers["content-length"]) == len(expected)
    first = start % len(package)
    assert response.headers["content-range"] == (
        f"bytes {first}-{first + len(expected) - 1}/{len(package)}"
    )


def test_range_past_end_is_clamped(url: str, package: bytes) -> None:
    response = httpx.get(url, headers={"Range": f"bytes={len(package) - 5}-{len(package) + 50}"})
    assert response.status_code == 206 and response.content == package[-5:]


def test_unsatisfiable_range(url: str, package: bytes) -> None:
    response = httpx.get(url, headers={"Range": f"bytes={len(package)}-"})
    assert response.status_code == 416
    assert response.headers["content-range"] == f"bytes */{len(package)}"


def test_head(url: str, package: bytes) -> None:
    response = httpx.head(url)
    assert response.status_code == 200 and response.content == b""
    assert int(response.headers["content-length"]) == len(package)


def test_if_match(url: str) -> None:
    etag = httpx.head(url).headers["etag"]
    ok = httpx.get(url, headers={"If-Match": etag, "Range": "bytes=0-9"})
    assert ok.status_code == 206
    stale = httpx.get(url, headers={"If-Match": '"0000-0"', "Range": "bytes=0-9"})
    assert stale.status_code == 412
    assert b"PreconditionFailed" in stale.content


def test_each_status_get_signs_a_fresh_url(api: httpx.Client, scene: str) -> None:
    created = api.post("/v0/catalogs/download", json={"catalog_ids": [scene]}).json()
    first = api.get(f"/v0/catalogs/download/{created['id']}").json()["signed_url"]
    time.sleep(1.05)  # X-Amz-Date has one-second resolution; this is not synchronisation
    second = api.get(f"/v0/catalogs/download/{created['id']}").json()["signed_url"]
    assert (
        parse_qs(urlsplit(first).query)["X-Amz-Date"]
        != parse_qs(urlsplit(second).query)["X-Amz-Date"]
    )


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    query.update(changes)
    return urlunsplit(parts._replace(query=urlencode(query)))


def test_tampered_signature_is_refused(url: str) -> None:
    forged = _with_query(url, **{"X-Amz-Expires": "999999"})
    response = httpx.get(forged)
    assert response.status_code == 403
    assert b"<Code>SignatureDoesNotMatch</Code>" in response.content


def test_catalog_key_urls_are_signed_too(emulator: Emulator, scene: str) -> None:
    unsigned = f"{emulator.base_url}/storage/pixxel-deliveries/{scene}/x.zip"
    assert httpx.get(unsigned).status_code == 403


def test_expired_url(private_api: httpx.Client, private_emulator: Emulator) -> None:
    private_emulator.set_faults(FaultPlan(url_lifetime=1))
    url = signed_url(private_api, private_emulator.catalog_ids()[0])
    assert "X-Amz-Expires=1" in url
    assert httpx.get(url, headers={"Range": "bytes=0-0"}).status_code == 206
    deadline = time.monotonic() + 5
    while (response := httpx.get(url)).status_code != 403 and time.monotonic() < deadline:
        time.sleep(0.2)  # polling a wall-clock expiry, bounded
    assert response.status_code == 403
    assert b"<Code>AccessDenied</Code><Message>Request has expired</Message>" in response.content


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=5-", (5, 9)),
        ("bytes=-3", (7, 9)),
        ("bytes=-30", (0, 9)),
        ("bytes=3-1", None),
        ("bytes=0-1,4-5", None),
        ("items=0-1", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 10) == expected


def test_stats_record_storage_gets(private_api: httpx.Client, private_emulator: Emulator) -> None:
    catalog = private_emulator.catalog_ids()[0]
    url = signed_url(private_api, catalog)
    private_emulator.reset_stats()
    httpx.get(url, headers={"Range": "bytes=10-19"})
    stats = private_emulator.stats()
    assert stats["requests"] == {"storage.get": 1}
    assert stats["bytes_sent"] == 10
    [record] = stats["storage_gets"]
    assert (record["start"], record["end"], record["status"]) == (10, 19, 206)
