"""The Pixxel REST routes (``/ping``, ``/v0/...``) in the shapes of the official OpenAPI document.

Choices where the documentation is silent (see pixxel-api.md §8): ``page_num`` for projects is
1-based; order items default to ``limit=10``; unknown ids answer 404 with the error envelope; a
download resource starts ``created`` and its ``signed_url`` is ``""`` until it succeeds; every GET
of a successful download signs a fresh URL.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from pixxelfs.emulator import search
from pixxelfs.emulator.stac import catalog_entry
from pixxelfs.emulator.state import Download, EmulatorState, bad_request, not_found
from pixxelfs.emulator.world import Scene, iso

log = logging.getLogger(__name__)

DEFAULT_PAGE_SIZE = 10


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


def _int_param(request: Request, name: str, default: int, minimum: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise bad_request(f"{name} must be an integer") from None
    if value < minimum:
        raise bad_request(f"{name} must be >= {minimum}")
    return value


def _csv_param(request: Request, name: str) -> set[str] | None:
    raw = request.query_params.get(name)
    if not raw:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


async def json_body(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise bad_request(f"invalid JSON body: {exc}") from None


async def ping(request: Request) -> JSONResponse:
    return JSONResponse("pong")


async def list_projects(request: Request) -> JSONResponse:
    """``page_num`` is 1-based; ``count`` is the total number of projects."""
    projects = _state(request).world.projects
    page_num = _int_param(request, "page_num", 1, 1)
    page_size = _int_param(request, "page_size", DEFAULT_PAGE_SIZE, 1)
    start = (page_num - 1) * page_size
    return JSONResponse({"count": len(projects), "projects": projects[start : start + page_size]})


async def get_project(request: Request) -> JSONResponse:
    project_id = request.path_params["id"]
    project = _state(request).world.projects_by_id.get(project_id)
    if project is None:
        raise not_found("project", project_id)
    fields = ("id", "name", "title", "org_id", "created_at", "updated_at", "metadata")
    return JSONResponse({"project": {k: project[k] for k in fields}})


async def list_order_items(request: Request) -> JSONResponse:
    """Filters ``ids``, ``project_ids``, ``order_ids`` take comma-separated lists."""
    world = _state(request).world
    limit = _int_param(request, "limit", DEFAULT_PAGE_SIZE, 0)
    offset = _int_param(request, "offset", 0, 0)
    wanted = {
        "id": _csv_param(request, "ids"),
        "project_id": _csv_param(request, "project_ids"),
        "order_id": _csv_param(request, "order_ids"),
        "status": _csv_param(request, "status"),
        "type": _csv_param(request, "type"),
    }
    items = [
        item
        for item in world.order_items
        if all(values is None or item[key] in values for key, values in wanted.items())
    ]
    pagination = {"limit": limit, "offset": offset, "total": len(items)}
    return JSONResponse({"order_items": items[offset : offset + limit], "pagination": pagination})


async def get_order_item(request: Request) -> JSONResponse:
    item_id = request.path_params["id"]
    item = _state(request).world.items_by_id.get(item_id)
    if item is None:
        raise not_found("order item", item_id)
    return JSONResponse(item)


async def search_catalogs(request: Request) -> JSONResponse:
    state = _state(request)
    req = search.parse(await json_body(request))
    page, total = search.run(state.world, req)
    return JSONResponse(
        {
            "catalogs": [catalog_entry(state.world, s) for s in page],
            "pagination": {"limit": req.limit, "offset": req.offset, "total": total},
        }
    )


async def get_catalog(request: Request) -> JSONResponse:
    state = _state(request)
    catalog_id = request.path_params["id"]
    scene = state.world.by_id.get(catalog_id)
    if scene is None:
        raise not_found("catalog", catalog_id)
    return JSONResponse(catalog_entry(state.world, scene))


def _download_json(state: EmulatorState, download: Download) -> dict[str, Any]:
    status = state.download_status(download)
    url = state.signed_url(download) if status == "success" else ""
    return {"id": download.id, "status": status, "signed_url": url}


def _ids_field(body: dict[str, Any], name: str) -> list[str]:
    value = body.get(name) or []
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise bad_request(f"{name} must be an array of non-empty strings")
    if len(set(value)) != len(value):
        raise bad_request(f"{name} must not repeat ids")
    return value


def _scenes_for_download(state: EmulatorState, body: Any) -> list[Scene]:
    if not isinstance(body, dict):
        raise bad_request("the request body must be a JSON object")
    catalog_ids = _ids_field(body, "catalog_ids")
    item_ids = _ids_field(body, "order_item_ids")
    if bool(catalog_ids) == bool(item_ids):
        raise bad_request("give exactly one of catalog_ids or order_item_ids")
    world = state.world
    for catalog_id in catalog_ids:
        if catalog_id not in world.by_id:
            raise not_found("catalog", catalog_id)
    for item_id in item_ids:
        if item_id not in world.items_by_id:
            raise not_found("order item", item_id)
    if catalog_ids:
        return [world.by_id[c] for c in catalog_ids]
    tasks = {t["id"] for i in item_ids for t in world.items_by_id[i]["tasks"]}
    scenes = [s for s in world.scenes if s.task_id in tasks]
    if not scenes:
        raise bad_request("those order items have no delivered catalogs yet")
    return scenes


async def create_download(request: Request) -> JSONResponse:
    state = _state(request)
    scenes = _scenes_for_download(state, await json_body(request))
    download = state.new_download([s.id for s in scenes])
    if state.nursery is not None:  # start building now so the package is ready when asked for
        state.nursery.start_soon(_prebuild, state, download)
    return JSONResponse(_download_json(state, download), status_code=201)


async def _prebuild(state: EmulatorState, download: Download) -> None:
    try:
        if len(download.catalog_ids) == 1:
            await state.packages.ensure(download.catalog_ids[0])
        else:
            await state.packages.ensure_combined(download.id, download.catalog_ids)
    except Exception:  # the storage GET will retry and report; never kill the server
        log.exception("building the package for download %s failed", download.id)


async def get_download(request: Request) -> JSONResponse:
    state = _state(request)
    download_id = request.path_params["download_id"]
    download = state.downloads.get(download_id)
    if download is None:
        raise not_found("download", download_id)
    download.polls += 1
    return JSONResponse(_download_json(state, download))


async def list_deliveries(request: Request) -> JSONResponse:
    """Every catalog entry was delivered once, to the workspace's (emulated) store."""
    state = _state(request)
    world = state.world
    wanted = {k: request.query_params.get(k) or None for k in _DELIVERY_FILTERS}
    deliveries = []
    for scene in world.scenes:
        item = world.order_item_of(scene) or {}
        delivery = {
            "delivery_id": world.delivery_id(scene),
            "catalog_id": scene.id,
            "task_id": scene.task_id,
            "status": "SUCCESS",
            "cloud_delivery": {"config": world.org_id, "path": "/deliveries"},
            "target_path": f"order_{item.get('order_id', 'unassigned')}/{scene.item_id}.zip",
            "created_at": iso(scene.created),
            "created_by": world.user_id,
            "updated_at": iso(scene.created),
            "updated_by": world.user_id,
        }
        values = {**delivery, "order_item_id": item.get("id")}
        if all(v is None or values[k] == v for k, v in wanted.items()):
            deliveries.append(delivery)
    return JSONResponse({"deliveries": deliveries})


_DELIVERY_FILTERS = ("delivery_id", "catalog_id", "task_id", "order_item_id")


async def list_bandsets(request: Request) -> JSONResponse:
    return JSONResponse({"bandsets": _state(request).world.bandsets})


ROUTES = [
    Route("/ping", ping, methods=["GET"], name="ping"),
    Route("/v0/projects", list_projects, methods=["GET"], name="projects.list"),
    Route("/v0/projects/{id}", get_project, methods=["GET"], name="projects.get"),
    Route("/v0/order-items", list_order_items, methods=["GET"], name="order_items.list"),
    Route("/v0/order-items/{id}", get_order_item, methods=["GET"], name="order_items.get"),
    Route("/v0/catalogs/search", search_catalogs, methods=["POST"], name="catalogs.search"),
    Route("/v0/catalogs/download", create_download, methods=["POST"], name="downloads.create"),
    Route(
        "/v0/catalogs/download/{download_id}",
        get_download,
        methods=["GET"],
        name="downloads.get",
    ),
    Route("/v0/catalogs/deliveries", list_deliveries, methods=["GET"], name="deliveries.list"),
    Route("/v0/bandsets", list_bandsets, methods=["GET"], name="bandsets.list"),
    Route("/v0/catalogs/{id}", get_catalog, methods=["GET"], name="catalogs.get"),
]
