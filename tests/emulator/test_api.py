"""The REST routes over a loopback socket: auth, OpenAPI shapes, pagination, filters, errors."""

from __future__ import annotations

from typing import Any

import httpx
import jsonschema
import pytest

from pixxelfs.emulator import Emulator
from tests.emulator.conftest import Validate


def _search(api: httpx.Client, **body: Any) -> dict[str, Any]:
    response = api.post("/v0/catalogs/search", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _all(api: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    return list(_search(api, limit=1000, **body)["catalogs"])


def _error_envelope(response: httpx.Response, status: int, validate: Validate) -> None:
    assert response.status_code == status, response.text
    validate(response.json(), "clerk.ErrorResponse")
    assert set(response.json()["error"]) == {"code", "message", "details"}


@pytest.mark.parametrize(
    ("header", "status"),
    [("RAW", 200), ("Bearer RAW", 200), ("bearer RAW", 200), (None, 403), ("wrong", 403)],
)
def test_auth_forms(
    emulator: Emulator, validate: Validate, header: str | None, status: int
) -> None:
    headers = {} if header is None else {"Authorization": header.replace("RAW", emulator.api_key)}
    response = httpx.get(f"{emulator.base_url}/v0/projects", headers=headers)
    assert response.status_code == status
    if status == 403:
        _error_envelope(response, 403, validate)


def test_ping_needs_no_key(emulator: Emulator) -> None:
    response = httpx.get(f"{emulator.base_url}/ping")
    assert response.status_code == 200
    assert response.json() == "pong"


def test_projects_pages_are_one_based_and_cover_all(api: httpx.Client, validate: Validate) -> None:
    whole = api.get("/v0/projects", params={"page_size": 100}).json()
    validate(whole, "frontier.listProjects")
    assert whole["count"] == len(whole["projects"]) == 3
    pages = [api.get("/v0/projects", params={"page_num": n, "page_size": 2}).json() for n in (1, 2)]
    assert [p["id"] for page in pages for p in page["projects"]] == [
        p["id"] for p in whole["projects"]
    ]
    assert api.get("/v0/projects", params={"page_num": 0}).status_code == 400
    one = api.get(f"/v0/projects/{whole['projects'][0]['id']}").json()
    validate(one, "frontier.getProjectById")
    assert one["project"]["name"] == whole["projects"][0]["name"]
    assert api.get("/v0/projects/nope").status_code == 404


def test_order_items_schema_filters_and_pagination(api: httpx.Client, validate: Validate) -> None:
    listing = api.get("/v0/order-items", params={"limit": 100}).json()
    validate(listing, "clerk.ListOrderItemsResponse")
    items = listing["order_items"]
    assert listing["pagination"]["total"] == len(items) >= 2
    project = items[0]["project_id"]
    by_project = api.get("/v0/order-items", params={"project_ids": project, "limit": 100}).json()
    assert {i["id"] for i in by_project["order_items"]} == {
        i["id"] for i in items if i["project_id"] == project
    }
    two = ",".join(i["id"] for i in items[:2])
    assert len(api.get("/v0/order-items", params={"ids": two}).json()["order_items"]) == 2
    kinds = api.get("/v0/order-items", params={"type": "ARCHIVE", "limit": 100}).json()
    assert all(i["type"] == "ARCHIVE" for i in kinds["order_items"]) and kinds["order_items"]
    second = api.get("/v0/order-items", params={"limit": 1, "offset": 1}).json()
    assert second["order_items"][0]["id"] == items[1]["id"]
    single = api.get(f"/v0/order-items/{items[0]['id']}").json()
    validate(single, "clerk.OrderItemResponse")
    assert single["tasks"] and single["tasks"][0]["order_item_id"] == items[0]["id"]


@pytest.mark.parametrize("params", [{"limit": -1}, {"offset": -3}, {"limit": "x"}])
def test_order_items_reject_bad_paging(api: httpx.Client, validate: Validate, params: Any) -> None:
    _error_envelope(api.get("/v0/order-items", params=params), 400, validate)


def test_search_default_limit_is_two_and_pages_are_stable(
    api: httpx.Client, validate: Validate
) -> None:
    first = _search(api)
    validate(first, "clerk.SearchCatalogsResponse")
    assert first["pagination"] == {"limit": 2, "offset": 0, "total": 12}
    everything = _all(api)
    for catalog in everything:
        validate(catalog, "clerk.Catalog")
        assert catalog["delivery_status"] == "SUCCESS"
    paged = [c for off in range(0, 12, 5) for c in _search(api, limit=5, offset=off)["catalogs"]]
    assert [c["id"] for c in paged] == [c["id"] for c in everything]
    keys = [(c["created_at"], c["id"]) for c in everything]
    assert keys == sorted(keys)


def test_stac_details_are_consistent(api: httpx.Client) -> None:
    for catalog in _all(api):
        item = catalog["details"]
        props = item["properties"]
        assert item["collection"] == "pixxel-ff-l2a" and props["gsd"] == 5
        assert 32601 <= props["proj:epsg"] <= 32760
        assert props["proj:shape"] == [128, 128]
        west, south, east, north = item["bbox"]
        ring = item["geometry"]["coordinates"][0]
        assert ring[0] == ring[-1]
        assert min(p[0] for p in ring) == west and max(p[1] for p in ring) == north
        assert east - west < 0.05 and north - south < 0.05  # 640 m at 5 m/pixel
        assert props["datetime"].startswith("2025-")
        bands = item["assets"]["reflectance"]["eo:bands"]
        assert [b["name"] for b in bands] == [f"B{i:03d}" for i in range(1, 9)]
        assert bands[0]["center_wavelength"] == 470 and bands[-1]["center_wavelength"] == 900
        raster = item["assets"]["reflectance"]["raster:bands"][0]
        assert (raster["scale"], raster["offset"], raster["nodata"]) == (0.00002, 0, 0)
        assert item["assets"]["thumbnail"]["href"] == f"{item['id']}/{item['id']}_THUMBNAIL.jpg"


def test_search_filters(api: httpx.Client) -> None:
    everything = _all(api)
    one, two = everything[0], everything[1]
    assert [c["id"] for c in _all(api, ids=[one["id"]])] == [one["id"]]
    assert [c["id"] for c in _all(api, item_ids=[two["details"]["id"]])] == [two["id"]]
    assert len(_all(api, collections=["pixxel-ff-l2a"])) == 12
    assert _all(api, collections=["other"]) == []

    moments = sorted(c["details"]["properties"]["datetime"] for c in everything)
    middle = moments[5]
    after = _all(api, datetime=f"{middle}/..")
    assert {c["details"]["properties"]["datetime"] for c in after} == set(moments[5:])
    before = _all(api, datetime=f"../{middle}")
    assert len(before) == 6
    assert len(_all(api, datetime=middle)) == 1

    west, south, east, north = one["details"]["bbox"]
    inside = _all(api, bbox=[west + 1e-4, south + 1e-4, west + 2e-4, south + 2e-4])
    assert one["id"] in {c["id"] for c in inside}
    assert _all(api, bbox=[-10.0, -80.0, -9.0, -79.0]) == []
    polygon = {"type": "Polygon", "coordinates": [[[west, south], [east, south], [east, north]]]}
    assert one["id"] in {c["id"] for c in _all(api, intersects=polygon)}


def test_search_query_and_joins(api: httpx.Client, emulator: Emulator) -> None:
    everything = _all(api)
    covers = sorted(c["details"]["properties"]["eo:cloud_cover"] for c in everything)
    limit = covers[4]
    below = _all(api, query={"eo:cloud_cover": {"lt": limit}})
    assert len(below) == 4
    assert len(_all(api, query={"eo:cloud_cover": {"gte": limit, "lte": limit}})) == 1
    in_list = _all(api, query={"eo:cloud_cover": {"in": covers[:3]}})
    assert len(in_list) == 3
    assert len(_all(api, query={"eo:cloud_cover": {"neq": limit}})) == 11

    items = api.get("/v0/order-items", params={"limit": 100}).json()["order_items"]
    item = items[0]
    tasks = {t["id"] for t in item["tasks"]}
    expected = {c["id"] for c in everything if c["task_id"] in tasks}
    assert expected
    assert {c["id"] for c in _all(api, order_item_ids=[item["id"]])} == expected
    same_order = {i["id"] for i in items if i["order_id"] == item["order_id"]}
    order_tasks = {t["id"] for i in items if i["id"] in same_order for t in i["tasks"]}
    by_order = _all(api, order_ids=[item["order_id"]])
    assert {c["id"] for c in by_order} == {
        c["id"] for c in everything if c["task_id"] in order_tasks
    }
    plain = _all(api, query={"project_id": item["project_id"], "usecase": item["usecase"]})
    wanted = {
        t["id"]
        for i in items
        if (i["project_id"], i["usecase"]) == (item["project_id"], item["usecase"])
        for t in i["tasks"]
    }
    assert {c["id"] for c in plain} == {c["id"] for c in everything if c["task_id"] in wanted}


def test_orphan_scene_has_an_unknown_task(api: httpx.Client) -> None:
    items = api.get("/v0/order-items", params={"limit": 100}).json()["order_items"]
    known = {t["id"] for i in items for t in i["tasks"]}
    orphans = [c for c in _all(api) if c["task_id"] not in known]
    assert len(orphans) == 1


@pytest.mark.parametrize(
    "sort_by",
    [
        [{"properties->>'eo:cloud_cover'": "DESC"}],
        {"field": "properties->>'eo:cloud_cover'", "direction": "desc"},
        [{"eo:cloud_cover": "DESC"}],
    ],
)
def test_search_sort_forms(api: httpx.Client, sort_by: Any) -> None:
    found = _all(api, sort_by=sort_by)
    covers = [c["details"]["properties"]["eo:cloud_cover"] for c in found]
    assert covers == sorted(covers, reverse=True) and len(found) == 12


@pytest.mark.parametrize(
    "body",
    [
        {"limit": -1},
        {"offset": -1},
        {"limit": "5"},
        {"ids": "not-a-list"},
        {"bbox": [1, 2, 3]},
        {"datetime": "yesterday"},
        {"query": {"eo:cloud_cover": {"like": 3}}},
        {"sort_by": [{"datetime": "UP"}]},
        {"intersects": {"type": "Polygon", "coordinates": "x"}},
        {"surprise": 1},
        [1, 2],
    ],
)
def test_search_rejects_bad_bodies(api: httpx.Client, validate: Validate, body: Any) -> None:
    _error_envelope(api.post("/v0/catalogs/search", json=body), 400, validate)


def test_search_rejects_invalid_json(api: httpx.Client, validate: Validate) -> None:
    response = api.post(
        "/v0/catalogs/search", content=b"{nope", headers={"Content-Type": "application/json"}
    )
    _error_envelope(response, 400, validate)


def test_get_catalog_and_unknowns(api: httpx.Client, validate: Validate) -> None:
    first = _search(api, limit=1)["catalogs"][0]
    one = api.get(f"/v0/catalogs/{first['id']}").json()
    validate(one, "clerk.Catalog")
    assert one == first
    _error_envelope(api.get("/v0/catalogs/does-not-exist"), 404, validate)
    _error_envelope(api.get("/v0/order-items/does-not-exist"), 404, validate)
    _error_envelope(api.get("/v0/no/such/route"), 404, validate)
    _error_envelope(api.delete("/v0/projects"), 405, validate)


def test_download_flow(api: httpx.Client, validate: Validate) -> None:
    catalog = _search(api, limit=1)["catalogs"][0]
    created = api.post("/v0/catalogs/download", json={"catalog_ids": [catalog["id"]]})
    assert created.status_code == 201
    validate(created.json(), "clerk.DownloadResponse")
    assert created.json()["status"] == "created" and created.json()["signed_url"] == ""
    first = api.get(f"/v0/catalogs/download/{created.json()['id']}").json()
    validate(first, "clerk.DownloadResponse")
    assert first["status"] == "success"
    assert f"/{catalog['details']['id']}.zip?" in first["signed_url"]
    assert "X-Amz-Expires=3600" in first["signed_url"]
    _error_envelope(api.get("/v0/catalogs/download/unknown"), 404, validate)


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({}, 400),
        ({"catalog_ids": [], "order_item_ids": []}, 400),
        ({"catalog_ids": ["a"], "order_item_ids": ["b"]}, 400),
        ({"catalog_ids": "a"}, 400),
        ({"catalog_ids": ["dup", "dup"]}, 400),
        ({"catalog_ids": ["unknown"]}, 404),
        ({"order_item_ids": ["unknown"]}, 404),
    ],
)
def test_download_rejects(api: httpx.Client, validate: Validate, body: Any, status: int) -> None:
    _error_envelope(api.post("/v0/catalogs/download", json=body), status, validate)


def test_download_by_order_item_serves_all_its_scenes(api: httpx.Client) -> None:
    item = api.get("/v0/order-items", params={"limit": 1}).json()["order_items"][0]
    scenes = _all(api, order_item_ids=[item["id"]])
    created = api.post("/v0/catalogs/download", json={"order_item_ids": [item["id"]]}).json()
    status = api.get(f"/v0/catalogs/download/{created['id']}").json()
    body = httpx.get(status["signed_url"]).content
    for scene in scenes:
        assert f"{scene['details']['id']}/{scene['details']['id']}_L2A_SR.tif".encode() in body


def test_deliveries_and_bandsets(api: httpx.Client, validate: Validate) -> None:
    deliveries = api.get("/v0/catalogs/deliveries").json()
    validate(deliveries, "clerk.ListDeliveries")
    assert len(deliveries["deliveries"]) == 12
    first = deliveries["deliveries"][0]
    for key in ("delivery_id", "catalog_id", "task_id"):
        narrowed = api.get("/v0/catalogs/deliveries", params={key: first[key]}).json()
        assert first in narrowed["deliveries"]
        assert all(d[key] == first[key] for d in narrowed["deliveries"])
    bandsets = api.get("/v0/bandsets").json()
    validate(bandsets, "clerk.ListBandsets")
    assert bandsets["bandsets"][0]["bands"][0]["name"] == "B001"


def test_schema_validation_can_fail(validate: Validate) -> None:
    """Guards the guard: a wrong shape must not validate."""
    with pytest.raises(jsonschema.ValidationError):
        validate({"catalogs": "nope"}, "clerk.SearchCatalogsResponse")
