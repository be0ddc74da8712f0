"""Run-time control of the emulator (``/_emulator/...``): faults, scenes, packages, stats.

These routes need the API key like the real API routes, but are never subject to faults.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pixxelfs.emulator.api import json_body
from pixxelfs.emulator.faults import FaultPlan
from pixxelfs.emulator.hostile import HostilePlan
from pixxelfs.emulator.state import EmulatorState, bad_request, not_found
from pixxelfs.emulator.stats import Stats


def _state(request: Request) -> EmulatorState:
    state: EmulatorState = request.app.state.emulator
    return state


async def get_faults(request: Request) -> JSONResponse:
    return JSONResponse(_state(request).faults.plan.to_json())


async def set_faults(request: Request) -> JSONResponse:
    try:
        plan = FaultPlan.from_json(await json_body(request))
    except ValueError as exc:
        raise bad_request(f"invalid fault plan: {exc}") from None
    _state(request).faults.set(plan)
    return JSONResponse(plan.to_json())


async def clear_faults(request: Request) -> Response:
    _state(request).faults.set(FaultPlan())
    return Response(status_code=204)


async def set_hostile(request: Request) -> JSONResponse:
    try:
        plan = HostilePlan.from_json(await json_body(request))
    except ValueError as exc:
        raise bad_request(f"invalid hostile plan: {exc}") from None
    _state(request).hostile = plan
    return JSONResponse(plan.to_json())


async def clear_hostile(request: Request) -> Response:
    _state(request).hostile = HostilePlan()
    return Response(status_code=204)


async def revoke_urls(request: Request) -> Response:
    _state(request).revoke_urls()
    return Response(status_code=204)


async def replace_package(request: Request) -> JSONResponse:
    """New bytes (and so a new ETag) for one scene; returns the new package's validators."""
    state = _state(request)
    catalog_id = request.path_params["catalog_id"]
    try:
        version = state.packages.replace(catalog_id)
    except KeyError:
        raise not_found("catalog", catalog_id) from None
    info = await state.packages.ensure(catalog_id)
    return JSONResponse(
        {"catalog_id": catalog_id, "version": version, "etag": info.etag, "size": info.size}
    )


async def add_scenes(request: Request) -> JSONResponse:
    body = await json_body(request)
    count = body.get("count", 1) if isinstance(body, dict) else None
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= 100_000:
        raise bad_request("count must be an integer between 1 and 100000")
    scenes = _state(request).world.add_scenes(count)
    return JSONResponse({"catalog_ids": [s.id for s in scenes]}, status_code=201)


async def remove_scene(request: Request) -> Response:
    catalog_id = request.path_params["catalog_id"]
    try:
        _state(request).world.remove_scene(catalog_id)
    except KeyError:
        raise not_found("catalog", catalog_id) from None
    return Response(status_code=204)


async def get_stats(request: Request) -> JSONResponse:
    return JSONResponse(_state(request).stats.to_json())


async def reset_stats(request: Request) -> Response:
    _state(request).stats = Stats()
    return Response(status_code=204)


ROUTES = [
    Route("/_emulator/faults", get_faults, methods=["GET"], name="control.faults.get"),
    Route("/_emulator/faults", set_faults, methods=["POST"], name="control.faults.set"),
    Route("/_emulator/faults", clear_faults, methods=["DELETE"], name="control.faults.clear"),
    Route("/_emulator/hostile", set_hostile, methods=["POST"], name="control.hostile.set"),
    Route("/_emulator/hostile", clear_hostile, methods=["DELETE"], name="control.hostile.clear"),
    Route("/_emulator/urls/revoke", revoke_urls, methods=["POST"], name="control.urls.revoke"),
    Route(
        "/_emulator/packages/{catalog_id}/replace",
        replace_package,
        methods=["POST"],
        name="control.packages.replace",
    ),
    Route("/_emulator/scenes", add_scenes, methods=["POST"], name="control.scenes.add"),
    Route(
        "/_emulator/scenes/{catalog_id}",
        remove_scene,
        methods=["DELETE"],
        name="control.scenes.remove",
    ),
    Route("/_emulator/stats", get_stats, methods=["GET"], name="control.stats.get"),
    Route("/_emulator/stats", reset_stats, methods=["DELETE"], name="control.stats.reset"),
]
