"""Each injected fault, observed from a real client (on this module's private emulator)."""

from __future__ import annotations

import time

import httpx
import pytest

from pixxelfs.emulator import Emulator, FaultPlan, FaultRule
from pixxelfs.emulator.faults import FaultState
from tests.emulator.conftest import signed_url


def _plan(**rule: object) -> FaultPlan:
    return FaultPlan(rules=(FaultRule(**rule),))  # type: ignore[arg-type]


def test_latency(private_api: httpx.Client, private_emulator: Emulator) -> None:
    private_emulator.set_faults(_plan(target="projects.list", latency_ms=300))
    started = time.monotonic()
    assert private_api.get("/v0/projects").status_code == 200
    slow = time.monotonic() - started
    started = time.monotonic()
    assert private_api.get("/v0/bandsets").status_code == 200
    fast = time.monotonic() - started
    assert slow >= 0.3 and fast < 0.3


def test_bandwidth_cap(private_api: httpx.Client, private_emulator: Emulator) -> None:
    url = signed_url(private_api, private_emulator.catalog_ids()[0])
    private_emulator.set_faults(_plan(target="storage", bandwidth=200_000))
    started = time.monotonic()
    body = httpx.get(url, headers={"Range": "bytes=0-99999"}).content
    elapsed = time.monotonic() - started
    assert len(body) == 100_000
    assert 0.4 <= elapsed < 3.0  # 100 kB at 200 kB/s


@pytest.mark.parametrize("status", [500, 503, 429])
def test_error_rate_with_retry_after(
    private_api: httpx.Client, private_emulator: Emulator, status: int
) -> None:
    private_emulator.set_faults(
        _plan(target="api", error_rate=1.0, error_status=status, retry_after=7)
    )
    response = private_api.get("/v0/projects")
    assert response.status_code == status
    assert response.headers["retry-after"] == "7"
    assert set(response.json()["error"]) == {"code", "message", "details"}


def test_error_rate_is_seeded() -> None:
    def outcomes() -> list[int | None]:
        state = FaultState(FaultPlan(rules=(FaultRule(error_rate=0.5),), seed=3))
        return [state.decide("catalogs.search").error_status for _ in range(40)]

    first = outcomes()
    assert first == outcomes()
    assert 5 < first.count(503) < 35


def test_nth_call_fails(private_api: httpx.Client, private_emulator: Emulator) -> None:
    private_emulator.set_faults(_plan(target="catalogs.search", fail_calls=(2, 3), fail_status=503))
    statuses = [private_api.post("/v0/catalogs/search", json={}).status_code for _ in range(4)]
    assert statuses == [200, 503, 503, 200]
    assert private_api.get("/v0/projects").status_code == 200  # other routes unaffected


def test_storage_errors_are_s3_xml(private_api: httpx.Client, private_emulator: Emulator) -> None:
    url = signed_url(private_api, private_emulator.catalog_ids()[0])
    private_emulator.set_faults(_plan(target="storage", fail_calls=(1,), fail_status=503))
    response = httpx.get(url)
    assert response.status_code == 503
    assert b"<Code>SlowDown</Code>" in response.content and "retry-after" in response.headers
    assert httpx.get(url).status_code == 200


def test_reset_mid_body(private_api: httpx.Client, private_emulator: Emulator) -> None:
    url = signed_url(private_api, private_emulator.catalog_ids()[0])
    private_emulator.set_faults(_plan(target="storage", reset_after_bytes=5000))
    with pytest.raises(httpx.ReadError):
        httpx.get(url)
    assert httpx.get(url, headers={"Range": "bytes=0-99"}).status_code == 206  # under the cut


def test_truncated_body(private_api: httpx.Client, private_emulator: Emulator) -> None:
    url = signed_url(private_api, private_emulator.catalog_ids()[0])
    private_emulator.set_faults(_plan(target="storage", truncate_after_bytes=5000))
    with pytest.raises(httpx.RemoteProtocolError, match="received 5000 bytes"):
        httpx.get(url)


def test_control_endpoint_sets_and_clears(private_api: httpx.Client) -> None:
    plan = {"target": "bandsets.list", "fail_calls": [1], "fail_status": 500}
    assert private_api.post("/_emulator/faults", json=plan).status_code == 200
    assert private_api.get("/_emulator/faults").json()["rules"][0]["target"] == "bandsets.list"
    assert private_api.get("/v0/bandsets").status_code == 500
    assert private_api.delete("/_emulator/faults").status_code == 204
    assert private_api.get("/_emulator/faults").json()["rules"] == []
    assert private_api.post("/_emulator/faults", json={"latency_ms": -1}).status_code == 400
    assert private_api.post("/_emulator/faults", json={"bogus": 1}).status_code == 400
    assert httpx.get(f"{private_api.base_url}/_emulator/stats").status_code == 403


def test_download_readiness_modes(private_api: httpx.Client, private_emulator: Emulator) -> None:
    catalog = private_emulator.catalog_ids()[0]

    def statuses(polls: int) -> list[str]:
        created = private_api.post("/v0/catalogs/download", json={"catalog_ids": [catalog]}).json()
        path = f"/v0/catalogs/download/{created['id']}"
        return [created["status"]] + [private_api.get(path).json()["status"] for _ in range(polls)]

    private_emulator.set_faults(FaultPlan(download_polls=3))
    assert statuses(4) == ["created", "in_progress", "in_progress", "success", "success"]
    private_emulator.set_faults(FaultPlan(download_mode="failed"))
    assert statuses(2) == ["created", "failed", "failed"]
    private_emulator.set_faults(FaultPlan(download_mode="never"))
    assert statuses(3) == ["created", "in_progress", "in_progress", "in_progress"]
    private_emulator.set_faults(FaultPlan(download_polls=0))
    assert statuses(0) == ["success"]


def test_replace_package(private_api: httpx.Client, private_emulator: Emulator) -> None:
    catalog = private_emulator.catalog_ids()[0]
    url = signed_url(private_api, catalog)
    old = httpx.get(url)
    old_etag = old.headers["etag"]
    replaced = private_api.post(f"/_emulator/packages/{catalog}/replace").json()
    assert replaced["etag"] != old_etag
    assert httpx.get(url, headers={"If-Match": old_etag}).status_code == 412
    new = httpx.get(url)
    assert new.headers["etag"] == replaced["etag"] and new.content != old.content
    assert new.content == private_emulator.package_path(catalog).read_bytes()


def test_add_and_remove_scenes(private_api: httpx.Client, private_emulator: Emulator) -> None:
    before = private_api.post("/v0/catalogs/search", json={"limit": 100}).json()
    added = private_api.post("/_emulator/scenes", json={"count": 2}).json()["catalog_ids"]
    after = private_api.post("/v0/catalogs/search", json={"limit": 100}).json()
    assert after["pagination"]["total"] == before["pagination"]["total"] + 2
    assert [c["id"] for c in after["catalogs"][-2:]] == added  # newest sort last
    items = private_api.get("/v0/order-items", params={"limit": 100}).json()["order_items"]
    known = {t["id"] for i in items for t in i["tasks"]}
    assert all(c["task_id"] in known for c in after["catalogs"][-2:])
    assert private_api.delete(f"/_emulator/scenes/{added[0]}").status_code == 204
    assert private_api.get(f"/v0/catalogs/{added[0]}").status_code == 404
    assert private_api.delete(f"/_emulator/scenes/{added[0]}").status_code == 404
    assert private_emulator.add_scenes(1)[0] in private_emulator.catalog_ids()
