"""Signed-URL expiry parsing and the resolver's caching, renewal and single-flight."""

from __future__ import annotations

import calendar
import time

import pytest
import trio
import trio.testing

from pixxelfs.api.models import DownloadResource
from pixxelfs.errors import DownloadFailedError, MalformedResponseError
from pixxelfs.remote.signed_url import SignedUrl, SignedUrlResolver, expiry_from_url

NOW = 1_750_000_000.0
SIGNED_AT = "20250611T120000Z"
SIGNED_EPOCH = calendar.timegm(time.strptime(SIGNED_AT, "%Y%m%dT%H%M%SZ"))


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            f"https://b.s3.amazonaws.com/k.zip?X-Amz-Algorithm=AWS4&X-Amz-Date={SIGNED_AT}"
            "&X-Amz-Expires=3600&X-Amz-Signature=abc",
            SIGNED_EPOCH + 3600,
        ),
        (
            "https://b.s3.amazonaws.com/k.zip?AWSAccessKeyId=A&Expires=1750003600&Signature=s",
            1750003600,
        ),
        (
            f"https://storage.googleapis.com/b/k.zip?x-goog-date={SIGNED_AT}&x-goog-expires=600"
            "&x-goog-signature=ff",
            SIGNED_EPOCH + 600,
        ),
        (
            "https://acct.blob.core.windows.net/c/k.zip?sv=2022-11-02&se=2025-06-11T13%3A00%3A00Z"
            "&sr=b&sp=r&sig=abc%3D",
            SIGNED_EPOCH + 3600,
        ),
        (
            "https://acct.blob.core.windows.net/c/k.zip?se=2025-06-11&sig=x",
            SIGNED_EPOCH - 12 * 3600,
        ),
        ("https://b.example/k.zip?X-Amz-Expires=60&X-Amz-Signature=abc", NOW + 60),
        ("http://127.0.0.1:9000/pkg.zip?token=abc", None),
        ("https://b.example/k.zip?X-Amz-Date=garbage&Expires=soon", None),
        ("https://b.example/k.zip", None),
    ],
)
def test_expiry_from_url(url: str, expected: float | None) -> None:
    assert expiry_from_url(url, NOW) == expected


def test_signed_url_repr_hides_the_signature() -> None:
    assert "secret" not in repr(SignedUrl("https://h/p?sig=secret", None))


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


class FakeApi:
    """Issues numbered URLs with a chosen lifetime; can be gated to test single-flight."""

    def __init__(self, clock: Clock, lifetime: int | None = 600):
        self.clock = clock
        self.lifetime = lifetime
        self.calls = 0
        self.gate: trio.Event | None = None
        self.error: Exception | None = None

    async def wait_for_download(self, catalog_id: str) -> DownloadResource:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        expiry = f"&Expires={int(self.clock.now) + self.lifetime}" if self.lifetime else ""
        url = f"https://s.test/{catalog_id}.zip?n={self.calls}{expiry}"
        return DownloadResource(id=f"dl{self.calls}", status="success", signed_url=url)


def make(lifetime: int | None = 600, **kwargs) -> tuple[SignedUrlResolver, FakeApi, Clock]:
    clock = Clock()
    api = FakeApi(clock, lifetime)
    return SignedUrlResolver(api, clock=clock, **kwargs), api, clock


async def test_url_is_reused_until_the_refresh_margin() -> None:
    resolver, api, clock = make(lifetime=600, refresh_margin=60)
    first = await resolver.get("c1")
    assert first.expires_at == NOW + 600
    clock.now += 539
    assert await resolver.get("c1") is first
    clock.now += 2  # now within 60 s of expiry
    second = await resolver.get("c1")
    assert second != first and api.calls == 2 and resolver.resolutions == 2


async def test_short_lived_urls_are_still_reused_for_half_their_life() -> None:
    resolver, _, clock = make(lifetime=30, refresh_margin=60)
    first = await resolver.get("c1")
    clock.now += 14
    assert await resolver.get("c1") is first
    clock.now += 2
    assert await resolver.get("c1") != first


async def test_unknown_expiry_uses_the_default_lifetime() -> None:
    resolver, _, clock = make(lifetime=None, default_lifetime=100)
    first = await resolver.get("c1")
    assert first.expires_at is None
    clock.now += 99
    assert await resolver.get("c1") is first
    clock.now += 2
    assert await resolver.get("c1") != first


async def test_concurrent_gets_share_one_resolution() -> None:
    resolver, api, _ = make()
    api.gate = trio.Event()
    results: list[SignedUrl] = []

    async def get() -> None:
        results.append(await resolver.get("c1"))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        api.gate.set()
    assert api.calls == 1 and len(set(results)) == 1 and len(results) == 4


async def test_waiter_takes_over_when_the_leader_is_cancelled() -> None:
    resolver, api, _ = make()
    api.gate = trio.Event()
    results: list[SignedUrl] = []

    async def get() -> None:
        results.append(await resolver.get("c1"))

    async with trio.open_nursery() as outer:
        with trio.CancelScope() as leader_scope:
            async with trio.open_nursery() as inner:
                inner.start_soon(get)
                await trio.testing.wait_all_tasks_blocked()
                outer.start_soon(get)
                await trio.testing.wait_all_tasks_blocked()
                leader_scope.cancel()
        await trio.testing.wait_all_tasks_blocked()
        api.gate.set()
    assert len(results) == 1 and api.calls == 2


async def test_failure_reaches_all_waiters_and_is_not_cached() -> None:
    resolver, api, _ = make()
    api.gate = trio.Event()
    api.error = DownloadFailedError("package build failed")
    failures: list[Exception] = []

    async def get() -> None:
        try:
            await resolver.get("c1")
        except DownloadFailedError as exc:
            failures.append(exc)

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(get)
        await trio.testing.wait_all_tasks_blocked()
        api.gate.set()
    assert len(failures) == 3 and api.calls == 1
    api.error = None
    assert (await resolver.get("c1")).url.endswith("n=2&Expires=1750000600")


async def test_concurrent_renewals_of_one_stale_url_share_one_renewal() -> None:
    resolver, api, _ = make()
    stale = await resolver.get("c1")
    api.gate = trio.Event()
    renewed: list[SignedUrl] = []

    async def renew() -> None:
        renewed.append(await resolver.renew("c1", stale))

    async with trio.open_nursery() as nursery:
        for _ in range(3):
            nursery.start_soon(renew)
        await trio.testing.wait_all_tasks_blocked()
        api.gate.set()
    assert api.calls == 2 and resolver.renewals == 1
    assert len(set(renewed)) == 1 and renewed[0] != stale
    # A late renewer of the same stale URL gets the fresh one without another resolution.
    assert await resolver.renew("c1", stale) == renewed[0]
    assert api.calls == 2


async def test_resource_without_a_url_is_malformed() -> None:
    class NoUrl:
        async def wait_for_download(self, catalog_id: str) -> DownloadResource:
            return DownloadResource(id="d", status="success", signed_url=None)

    with pytest.raises(MalformedResponseError, match="no signed_url"):
        await SignedUrlResolver(NoUrl()).get("c1")
