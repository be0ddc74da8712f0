"""Unit tests of pixxelfs.api.client against an in-memory API behind httpx.MockTransport."""

from __future__ import annotations

import email.utils
import itertools
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import trio

from pixxelfs.api import Catalog, PixxelClient, parse_retry_after
from pixxelfs.api import client as client_module
from pixxelfs.errors import (
    ApiError,
    ApiUnavailableError,
    AuthError,
    BadRequestError,
    ConfigError,
    DownloadFailedError,
    DownloadTimeoutError,
    MalformedResponseError,
    NotFoundError,
)
from pixxelfs.remote.retry import RetryPolicy

KEY = "pxl-SECRET-0123456789abcdef"
BASE = "http://api.test"
Fault = httpx.Response | Exception | None


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": None}}


class FakeApi:
    """A small Pixxel API: paged listings, by-id gets, downloads, and scripted faults.

    ``faults`` are served before normal routing, one per request (None = route normally).
    ``paging`` = False makes every listing ignore offset/page_num, as a broken server would.
    """

    def __init__(self, *, n_catalogs: int = 0, n_order_items: int = 0, n_projects: int = 0):
        self.catalogs = [self.catalog(i) for i in range(n_catalogs)]
        self.order_items = [
            {"id": f"oi-{i:04d}", "project_id": "p-1"} for i in range(n_order_items)
        ]
        self.projects = [{"id": f"p-{i:04d}", "name": f"proj{i}"} for i in range(n_projects)]
        self.requests: list[httpx.Request] = []
        self.faults: list[Fault] = []
        self.paging = True
        self.total_override: Any = None  # None: the true count; anything else is sent as is
        self.download_statuses: list[dict[str, Any]] = []

    @staticmethod
    def catalog(i: int) -> dict[str, Any]:
        return {
            "id": f"cat-{i:04d}",
            "delivery_status": "SUCCESSFUL",
            "details": {"id": f"TD1_{i}"},
        }

    def calls(self, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if r.url.path == path]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.faults:
            fault = self.faults.pop(0)
            if isinstance(fault, Exception):
                raise fault
            if fault is not None:
                return fault
        return self.route(request)

    def route(self, request: httpx.Request) -> httpx.Response:
        path, params = request.url.path, request.url.params
        if path == "/ping":
            return httpx.Response(200, json="pong")
        if path == "/v0/projects":
            size = int(params.get("page_size", "10"))
            page = int(params["page_num"]) - client_module.FIRST_PAGE_NUM
            start = page * size if self.paging else 0
            total = len(self.projects) if self.total_override is None else self.total_override
            return httpx.Response(
                200, json={"count": total, "projects": self.projects[start : start + size]}
            )
        if path == "/v0/order-items":
            items = self.order_items
            if "ids" in params:
                items = [o for o in items if o["id"] in params["ids"].split(",")]
            return self.paged("order_items", items, int(params["limit"]), int(params["offset"]))
        if path == "/v0/catalogs/search":
            body = json.loads(request.content)
            return self.paged("catalogs", self.catalogs, body.get("limit", 2), body["offset"])
        if path.startswith("/v0/catalogs/download"):
            return self.download(request)
        if path.startswith("/v0/catalogs/"):
            wanted = path.rsplit("/", 1)[1]
            for catalog in self.catalogs:
                if catalog["id"] == wanted:
                    return httpx.Response(200, json=catalog)
            return httpx.Response(404, json=error_body("not_found", "no such catalog"))
        if path.startswith("/v0/projects/"):
            return httpx.Response(200, json={"project": self.projects[0]})
        return httpx.Response(404, json=error_body("not_found", "no route"))

    def paged(self, key: str, items: list[Any], limit: int, offset: int) -> httpx.Response:
        start = offset if self.paging else 0
        total = len(items) if self.total_override is None else self.total_override
        return httpx.Response(
            200,
            json={
                key: items[start : start + limit],
                "pagination": {"limit": limit, "offset": offset, "total": total},
            },
        )

    def download(self, request: httpx.Request) -> httpx.Response:
        state = self.download_statuses.pop(0) if self.download_statuses else {}
        body = {"id": "dl-1", "status": "in_progress", **state}
        return httpx.Response(201 if request.method == "POST" else 200, json=body)


@pytest.fixture
def api() -> FakeApi:
    return FakeApi()


@pytest.fixture
async def client(api: FakeApi) -> AsyncIterator[PixxelClient]:
    async with make_client(api) as c:
        yield c


def make_client(api: FakeApi, **kwargs: Any) -> PixxelClient:
    kwargs.setdefault("retry", RetryPolicy(attempts=4, base=0.5, cap=4.0, max_retry_after=30.0))
    return PixxelClient(BASE, KEY, transport=httpx.MockTransport(api), **kwargs)


async def collect(aiter: AsyncIterator[Any]) -> list[Any]:
    return [x async for x in aiter]


# ------------------------------------------------------------------------------ auth and secrets


@pytest.mark.parametrize(("scheme", "expected"), [("raw", KEY), ("bearer", f"Bearer {KEY}")])
async def test_authorization_header_and_user_agent(
    api: FakeApi, scheme: Any, expected: str
) -> None:
    async with make_client(api, auth_scheme=scheme) as c:
        assert await c.ping() == "pong"
    (request,) = api.requests
    assert request.headers["authorization"] == expected
    assert request.headers["user-agent"].startswith("pixxelfs/")


async def test_key_is_absent_from_logs_errors_and_repr(
    api: FakeApi, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = httpx.Response(403, json=error_body("forbidden", f"key {KEY} is revoked"))
    api.faults = [echo, *[httpx.Response(503)] * 4, httpx.ReadTimeout(f"boom {KEY}")]
    errors: list[Exception] = []
    async with make_client(api) as c:
        assert KEY not in repr(c)
        for expected in (AuthError, ApiUnavailableError):
            with pytest.raises(expected) as info:
                await c.get_catalog("cat-0001")
            errors.append(info.value)
        with pytest.raises(ApiUnavailableError) as info:
            await c.create_download(catalog_ids=["cat-0001"])
        errors.append(info.value)
    assert "GET /v0/catalogs/{id} -> 403 in" in caplog.text  # method, template, status, time
    assert KEY not in caplog.text
    for exc in errors:
        assert KEY not in str(exc)
        assert KEY not in repr(exc)
    assert "<redacted>" in str(errors[0])


@pytest.mark.parametrize("bad_key", ["", "key with space", "key\n", "kéy"])
def test_unusable_key_is_refused_without_quoting_it(bad_key: str) -> None:
    with pytest.raises(ConfigError) as info:
        PixxelClient(BASE, bad_key)
    assert not bad_key or bad_key not in str(info.value)


# ------------------------------------------------------------------------------ pagination


def list_catalogs(c: PixxelClient) -> AsyncIterator[Any]:
    return c.iter_catalogs({"collections": ["x"]})


def list_order_items(c: PixxelClient) -> AsyncIterator[Any]:
    return c.iter_order_items()


def list_projects(c: PixxelClient) -> AsyncIterator[Any]:
    return c.iter_projects()


LISTINGS: list[tuple[str, Callable[[PixxelClient], AsyncIterator[Any]], str]] = [
    ("catalogs", list_catalogs, "/v0/catalogs/search"),
    ("order_items", list_order_items, "/v0/order-items"),
    ("projects", list_projects, "/v0/projects"),
]


def fake_with(kind: str, n: int) -> FakeApi:
    return FakeApi(**{f"n_{kind}": n})


def stored(api: FakeApi, kind: str) -> list[dict[str, Any]]:
    return {"catalogs": api.catalogs, "order_items": api.order_items, "projects": api.projects}[
        kind
    ]


def sent_page_size(request: httpx.Request) -> int:
    if request.method == "POST":
        return json.loads(request.content)["limit"]
    params = request.url.params
    return int(params.get("limit") or params["page_size"])


@pytest.mark.parametrize(("kind", "listing", "path"), LISTINGS)
@pytest.mark.parametrize(("n", "page_size", "pages"), [(250, 100, 3), (200, 100, 2), (0, 100, 1)])
async def test_listing_walks_every_page(
    kind: str, listing: Any, path: str, n: int, page_size: int, pages: int
) -> None:
    api = fake_with(kind, n)
    async with make_client(api, page_size=page_size) as c:
        got = await collect(listing(c))
    assert [m.id for m in got] == [x["id"] for x in stored(api, kind)]
    assert len(api.calls(path)) == pages
    assert all(sent_page_size(r) == page_size for r in api.calls(path))


async def test_catalog_search_sends_filter_and_its_own_limit() -> None:
    api = fake_with("catalogs", 5)
    async with make_client(api, page_size=150) as c:
        got = await collect(c.iter_catalogs({"ids": ["a"], "limit": 2, "offset": 9}))
    assert len(got) == 5  # the spec default limit (2) would have truncated this
    (request,) = api.requests
    assert json.loads(request.content) == {"ids": ["a"], "limit": 150, "offset": 0}


@pytest.mark.parametrize(("kind", "listing", "path"), LISTINGS)
async def test_listing_stops_when_server_ignores_paging(
    kind: str, listing: Any, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    api = fake_with(kind, 300)
    api.paging = False
    api.total_override = 10**9
    async with make_client(api) as c:
        with trio.fail_after(5):
            got = await collect(listing(c))
    assert [m.id for m in got] == [x["id"] for x in stored(api, kind)[:100]]
    assert len(api.calls(path)) == 2
    assert "ignores paging" in caplog.text


@pytest.mark.parametrize(("kind", "listing", "path"), LISTINGS)
@pytest.mark.parametrize("total", [-5, 10**12, "many"])
async def test_listing_survives_bogus_totals(
    kind: str, listing: Any, path: str, total: Any
) -> None:
    api = fake_with(kind, 150)
    api.total_override = total
    async with make_client(api) as c:
        got = await collect(listing(c))
    assert len(got) == 150
    assert len(api.calls(path)) == 2


async def test_listing_stops_on_a_page_of_seen_ids_in_a_new_order() -> None:
    """A server ignoring offset but shuffling its answer is caught by the ids, not the bytes."""
    rotation = iter(range(10**6))

    def rotating(request: httpx.Request) -> httpx.Response:
        shift = next(rotation)
        ids = [f"c-{(i + shift) % 100}" for i in range(100)]
        page = [{"id": i} for i in ids]
        return httpx.Response(200, json={"catalogs": page, "pagination": {"total": 10**9}})

    async with PixxelClient(BASE, KEY, transport=httpx.MockTransport(rotating)) as c:
        with trio.fail_after(5):
            got = await collect(c.iter_catalogs())
    assert sorted(m.id for m in got) == sorted(f"c-{i}" for i in range(100))
    assert next(rotation) == 2  # the second page repeated every id: no third request


async def test_listing_stops_on_a_repeated_page_of_malformed_elements(
    api: FakeApi, client: PixxelClient
) -> None:
    api.catalogs = [{"id": None}] * 100
    api.paging = False
    api.total_override = 10**9
    with trio.fail_after(5):
        assert await collect(client.iter_catalogs()) == []
    assert len(api.requests) == 2


async def test_listing_without_total_is_bounded_by_max_pages(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counter = iter(range(10**6))

    def endless(request: httpx.Request) -> httpx.Response:
        fresh = [{"id": f"c-{next(counter)}"} for _ in range(100)]
        return httpx.Response(200, json={"catalogs": fresh, "pagination": {}})

    monkeypatch.setattr(client_module, "MAX_PAGES", 7)
    async with PixxelClient(BASE, KEY, transport=httpx.MockTransport(endless)) as c:
        got = await collect(c.iter_catalogs())
    assert len(got) == 700


async def test_short_page_honours_a_smaller_server_limit() -> None:
    """A server that caps ``limit`` (and says so) is paged on, not mistaken for the end."""
    api = fake_with("catalogs", 120)

    def capped(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        api.requests.append(request)
        return api.paged("catalogs", api.catalogs, min(body["limit"], 50), body["offset"])

    async with PixxelClient(BASE, KEY, transport=httpx.MockTransport(capped)) as c:
        got = await collect(c.iter_catalogs())
    assert [m.id for m in got] == [x["id"] for x in api.catalogs]
    assert [json.loads(r.content)["offset"] for r in api.requests] == [0, 50, 100]


async def test_malformed_elements_are_skipped_with_a_warning(
    api: FakeApi, client: PixxelClient, caplog: pytest.LogCaptureFixture
) -> None:
    api.catalogs = [api.catalog(0), {"id": ""}, 42, {"no": "id"}, api.catalog(1)]
    got = await collect(client.iter_catalogs())
    assert [c.id for c in got] == ["cat-0000", "cat-0001"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 3
    assert all("catalog search" in r.getMessage() for r in warnings)
    assert client.stats().skipped == 3


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json=[]),
        httpx.Response(200, json={"catalogs": {"id": "x"}}),
        httpx.Response(200, json={"catalogs": "nope"}),
        httpx.Response(200, json={"pagination": {"total": 3}}),
        httpx.Response(200, text="<html>gateway</html>", headers={"content-type": "text/html"}),
    ],
)
async def test_malformed_envelope_raises(
    api: FakeApi, client: PixxelClient, answer: httpx.Response
) -> None:
    api.faults = [answer]
    with pytest.raises(MalformedResponseError):
        await collect(client.iter_catalogs())
    assert client.stats().errors == {"MalformedResponseError": 1}


async def test_null_list_is_an_empty_listing(api: FakeApi, client: PixxelClient) -> None:
    api.faults = [httpx.Response(200, json={"order_items": None, "pagination": {"total": 0}})]
    assert await collect(client.iter_order_items()) == []


async def test_order_item_filters_are_comma_joined(api: FakeApi, client: PixxelClient) -> None:
    api.order_items = [{"id": f"oi-{i}"} for i in range(4)]
    got = await collect(
        client.iter_order_items(ids=["oi-1", "oi-3"], project_ids="p-9", status="ACTIVE")
    )
    assert [o.id for o in got] == ["oi-1", "oi-3"]
    params = api.requests[0].url.params
    assert params["ids"] == "oi-1,oi-3"
    assert params["project_ids"] == "p-9"
    assert params["status"] == "ACTIVE"
    assert "type" not in params


async def test_empty_id_filter_matches_nothing_without_asking(
    api: FakeApi, client: PixxelClient
) -> None:
    api.order_items = [{"id": "oi-1"}]
    assert await collect(client.iter_order_items(ids=[])) == []
    assert api.requests == []


# ------------------------------------------------------------------------------ retries


async def test_503_then_success_is_retried(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock
) -> None:
    api.catalogs = [api.catalog(7)]
    api.faults = [httpx.Response(503), httpx.Response(502, json=error_body("x", "y"))]
    catalog = await client.get_catalog("cat-0007")
    assert catalog.id == "cat-0007"
    stats = client.stats()
    assert stats.calls == {"GET /v0/catalogs/{id}": 3}
    assert stats.retries == 2
    assert stats.errors == {}


@pytest.mark.parametrize("delay", [7, 19])
async def test_429_honours_retry_after_seconds(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock, delay: int
) -> None:
    api.faults = [httpx.Response(429, headers={"Retry-After": str(delay)})]
    start = trio.current_time()
    assert await client.ping() == "pong"
    assert trio.current_time() - start == pytest.approx(delay)


async def test_retry_after_is_capped_by_the_policy(
    api: FakeApi, autojump_clock: trio.testing.MockClock
) -> None:
    api.faults = [httpx.Response(503, headers={"Retry-After": "86400"})]
    policy = RetryPolicy(attempts=2, max_retry_after=3.0)
    async with make_client(api, retry=policy) as c:
        start = trio.current_time()
        await c.ping()
    assert trio.current_time() - start == pytest.approx(3.0)


def test_parse_retry_after_forms() -> None:
    now = 1_700_000_000.0
    http_date = email.utils.formatdate(now + 12, usegmt=True)
    assert parse_retry_after(http_date, now=now) == pytest.approx(12)
    assert parse_retry_after(email.utils.formatdate(now - 50, usegmt=True), now=now) == 0
    assert parse_retry_after(" 2.5 ") == 2.5
    assert parse_retry_after("-4") == 0
    for junk in (None, "", "soon", "nan", "inf"):
        assert parse_retry_after(junk) is None


async def test_retries_exhausted_raise_api_unavailable(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock
) -> None:
    api.faults = [httpx.Response(500, json=error_body("internal", "db down"))] * 10
    with pytest.raises(ApiUnavailableError) as info:
        await collect(client.iter_catalogs())
    assert len(api.requests) == 4
    assert info.value.status == 500
    assert "POST /v0/catalogs/search" in str(info.value)
    assert "db down" in str(info.value)
    assert client.stats().errors == {"ApiUnavailableError": 1}


@pytest.mark.parametrize(
    "exc",
    [httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.RemoteProtocolError("eof")],
)
async def test_transport_errors_are_retried(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock, exc: Exception
) -> None:
    api.projects = [{"id": "p-1"}]
    api.faults = [exc, exc]
    assert [p.id for p in await collect(client.iter_projects())] == ["p-1"]
    assert client.stats().retries == 2


async def test_create_download_is_not_retried_once_possibly_sent(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock
) -> None:
    api.faults = [httpx.ReadTimeout("no answer")]
    with pytest.raises(ApiUnavailableError, match="not retried"):
        await client.create_download(catalog_ids=["cat-1"])
    assert len(api.requests) == 1


async def test_create_download_is_retried_when_surely_not_done(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock
) -> None:
    api.faults = [httpx.ConnectError("refused"), httpx.Response(503)]
    resource = await client.create_download(order_item_ids="oi-1")
    assert resource.id == "dl-1"
    assert len(api.requests) == 3
    assert json.loads(api.requests[-1].content) == {"catalog_ids": [], "order_item_ids": ["oi-1"]}


@pytest.mark.parametrize(
    "kwargs", [{}, {"catalog_ids": ["a"], "order_item_ids": ["b"]}, {"catalog_ids": []}]
)
async def test_create_download_needs_exactly_one_id_list(
    client: PixxelClient, kwargs: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        await client.create_download(**kwargs)


# ------------------------------------------------------------------------------ error mapping


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (403, error_body("forbidden", "bad key"), AuthError),
        (404, error_body("not_found", "nope"), NotFoundError),
        (400, error_body("NOT_FOUND", "catalog does not exist"), NotFoundError),
        (400, {"error": {"message": "record not found"}}, NotFoundError),
        (400, error_body("invalid_id", "malformed uuid"), BadRequestError),
        (409, error_body("conflict", "busy"), ApiError),
    ],
)
async def test_get_by_id_error_mapping(
    api: FakeApi, client: PixxelClient, status: int, body: Any, expected: type[Exception]
) -> None:
    api.faults = [httpx.Response(status, json=body)]
    with pytest.raises(expected) as info:
        await client.get_catalog("cat-0001")
    assert type(info.value) is expected
    message = str(info.value)
    assert message.startswith("GET /v0/catalogs/{id}: HTTP")
    assert body["error"]["message"] in message
    assert len(api.requests) == 1


async def test_bad_request_on_a_listing_is_not_not_found(
    api: FakeApi, client: PixxelClient
) -> None:
    api.faults = [httpx.Response(400, json=error_body("not_found", "collection not found"))]
    with pytest.raises(BadRequestError) as info:
        await collect(client.iter_catalogs({"collections": ["zz"]}))
    assert type(info.value) is BadRequestError
    assert info.value.code == "not_found"


async def test_quoted_server_text_is_bounded(api: FakeApi, client: PixxelClient) -> None:
    api.faults = [httpx.Response(400, json=error_body("x" * 5000, "y" * 50_000))]
    with pytest.raises(BadRequestError) as info:
        await client.get_order_item("oi-1")
    assert len(str(info.value)) < 3 * client_module.MAX_QUOTED


async def test_unknown_catalog_is_not_found(api: FakeApi, client: PixxelClient) -> None:
    with pytest.raises(NotFoundError):
        await client.get_catalog("missing/../id")
    assert api.requests[0].url.raw_path == b"/v0/catalogs/missing%2F..%2Fid"


async def test_get_project_unwraps_its_envelope(api: FakeApi, client: PixxelClient) -> None:
    api.projects = [{"id": "p-1", "name": "alpha", "title": "Alpha"}]
    project = await client.get_project("p-1")
    assert (project.id, project.name, project.title) == ("p-1", "alpha", "Alpha")


# ------------------------------------------------------------------------------ downloads


def statuses(*pairs: tuple[str, str | None]) -> list[dict[str, Any]]:
    return [{"status": s, **({"signed_url": u} if u is not None else {})} for s, u in pairs]


URL = "http://store.test/pkg.zip?sig=abc"


async def test_download_created_in_progress_success(
    api: FakeApi, autojump_clock: trio.testing.MockClock
) -> None:
    api.download_statuses = statuses(
        ("created", None), ("in_progress", ""), ("success", ""), ("success", URL)
    )
    poll_times: list[float] = []

    def timed(request: httpx.Request) -> httpx.Response:
        poll_times.append(trio.current_time())
        return api(request)

    async with PixxelClient(
        BASE, KEY, transport=httpx.MockTransport(timed), download_poll_initial=1.0
    ) as c:
        resource = await c.wait_for_download("cat-0001")
    assert (resource.id, resource.status, resource.signed_url) == ("dl-1", "success", URL)
    assert json.loads(api.requests[0].content)["catalog_ids"] == ["cat-0001"]
    assert [r.url.path for r in api.requests[1:]] == ["/v0/catalogs/download/dl-1"] * 3
    gaps = [b - a for a, b in itertools.pairwise(poll_times)]
    assert gaps == pytest.approx([1.0, 2.0, 4.0])


async def test_download_poll_interval_is_capped(
    api: FakeApi, autojump_clock: trio.testing.MockClock
) -> None:
    api.download_statuses = statuses(*[("in_progress", None)] * 6, ("success", URL))
    async with make_client(api, download_poll_initial=1.0, download_poll_max=3.0) as c:
        start = trio.current_time()
        await c.wait_for_download("cat-0001")
    assert trio.current_time() - start == pytest.approx(1 + 2 + 3 + 3 + 3 + 3)


async def test_download_failed_names_the_catalog(
    api: FakeApi, client: PixxelClient, autojump_clock: trio.testing.MockClock
) -> None:
    api.download_statuses = statuses(("created", None), ("FAILED", None))
    with pytest.raises(DownloadFailedError, match="cat-0042"):
        await client.wait_for_download("cat-0042")
    assert client.stats().errors == {"DownloadFailedError": 1}


async def test_download_never_ready_times_out_at_the_deadline(
    api: FakeApi, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pixxelfs.api.client")
    api.download_statuses = statuses(*[("queued", None)] * 1000)
    async with make_client(api, download_deadline=60.0, download_poll_max=5.0) as c:
        start = trio.current_time()
        with pytest.raises(DownloadTimeoutError, match="cat-0001"):
            await c.wait_for_download("cat-0001")
    assert trio.current_time() - start == pytest.approx(60.0)
    unknown = [r for r in caplog.records if "unknown" in r.getMessage()]
    assert len(unknown) == 1


async def test_download_deadline_bounds_a_hanging_server(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    async with PixxelClient(
        BASE, KEY, transport=httpx.MockTransport(hang), download_deadline=10.0, timeout=1000.0
    ) as c:
        with pytest.raises(DownloadTimeoutError):
            await c.wait_for_download("cat-0001")
    assert trio.current_time() == pytest.approx(10.0)


# ------------------------------------------------------------------------------ models


@pytest.mark.parametrize(
    ("status", "delivered"),
    [
        ("SUCCESS", True),
        ("SUCCESSFUL", True),
        ("successful", True),
        ("PENDING", False),
        (None, False),
    ],
)
def test_catalog_is_delivered_accepts_both_spellings(status: str | None, delivered: bool) -> None:
    assert Catalog.from_json({"id": "c", "delivery_status": status}).is_delivered is delivered


def test_curated_exports_resolve() -> None:
    import pixxelfs.api

    assert all(getattr(pixxelfs.api, name, None) is not None for name in pixxelfs.api.__all__)


@pytest.mark.parametrize(("kind", "listing", "path"), LISTINGS)
async def test_pages_after_the_second_are_fetched_concurrently_in_order(
    kind: str, listing: Any, path: str, autojump_clock: trio.testing.MockClock
) -> None:
    """With a known total, later pages overlap in time; items still come in API order."""
    api = fake_with(kind, 1050)
    in_flight = peak = 0

    async def overlapping(request: httpx.Request) -> httpx.Response:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await trio.sleep(1)  # virtual time (autojump): lets the other page requests start
        in_flight -= 1
        return api(request)

    async with PixxelClient(
        BASE, KEY, transport=httpx.MockTransport(overlapping), parallel_pages=4
    ) as c:
        got = await collect(listing(c))
    assert [m.id for m in got] == [x["id"] for x in stored(api, kind)]
    assert len(api.calls(path)) == 11
    assert peak == 4
