"""Catalog entries' JSON: the Firefly-like STAC item in ``details`` and the package's members.

Built on demand from a compact :class:`~pixxelfs.emulator.world.Scene`; the same member list drives
both the STAC ``assets`` (whose ``href`` is the member's path inside the package) and the package
builder, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pixxelfs.emulator.world import GSD, Scene, World, iso

REFLECTANCE_SCALE = 0.00002  # L2A reflectance is scaled 0..50000 -> divide by 50000
STAC_EXTENSIONS = [
    "https://stac-extensions.github.io/eo/v1.1.0/schema.json",
    "https://stac-extensions.github.io/projection/v1.1.0/schema.json",
    "https://stac-extensions.github.io/view/v1.0.0/schema.json",
    "https://stac-extensions.github.io/raster/v1.1.0/schema.json",
    "https://stac-extensions.github.io/sat/v1.0.0/schema.json",
]
_COMMON_NAMES = ((450, 510, "blue"), (510, 580, "green"), (630, 690, "red"), (760, 900, "nir"))


@dataclass(frozen=True)
class Member:
    """One file of a delivery package and the STAC asset that describes it."""

    key: str
    path: str
    media_type: str
    roles: tuple[str, ...]
    title: str


def members(scene: Scene) -> list[Member]:
    """The package's files, under the ``<item_id>/`` subfolder; user scenes skip costly sidecars."""
    x = scene.item_id
    found = [
        Member(
            "reflectance",
            f"{x}/{x}_L2A_SR.tif",
            "image/tiff; application=geotiff; profile=cloud-optimized",
            ("data", "reflectance"),
            "L2A surface reflectance",
        ),
        Member(
            "quality_mask",
            f"{x}/{x}_QA_MASK.tif",
            "image/tiff; application=geotiff; profile=cloud-optimized",
            ("data-mask", "metadata"),
            "Quality mask (bit flags: 1 cloud, 2 cloud shadow, 4 water, 8 haze)",
        ),
        Member("thumbnail", f"{x}/{x}_THUMBNAIL.jpg", "image/jpeg", ("thumbnail",), "RGB preview"),
        Member(
            "footprint",
            f"{x}/{x}_FOOTPRINT.geojson",
            "application/geo+json",
            ("metadata",),
            "Footprint",
        ),
        Member("metadata", f"{x}/{x}_METADATA.json", "application/json", ("metadata",), "Metadata"),
    ]
    if scene.source_tif is not None:
        return [m for m in found if m.key not in ("quality_mask", "thumbnail")]
    return found


def wavelengths(bands: int) -> list[float]:
    """Band centres spread evenly over Firefly's 470-900 nm VNIR range."""
    if bands == 1:
        return [680.0]
    return [round(470.0 + 430.0 * i / (bands - 1), 1) for i in range(bands)]


def eo_bands(bands: int) -> list[dict[str, Any]]:
    fwhm = round(max(2.5, 430.0 / bands * 1.2), 2)
    result = []
    for i, centre in enumerate(wavelengths(bands)):
        band: dict[str, Any] = {"name": f"B{i + 1:03d}", "center_wavelength": centre, "fwhm": fwhm}
        common = next((n for lo, hi, n in _COMMON_NAMES if lo <= centre < hi), None)
        if common:
            band["common_name"] = common
        result.append(band)
    return result


def footprint_geometry(scene: Scene) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [[list(p) for p in scene.footprint]]}


def stac_item(scene: Scene) -> dict[str, Any]:
    """A STAC 1.0 item in the shape of ``clerk.STACItem``, Firefly-flavoured."""
    raster_band = {
        "scale": REFLECTANCE_SCALE,
        "offset": 0,
        "nodata": 0,
        "data_type": "uint16",
        "spatial_resolution": GSD,
    }
    assets: dict[str, Any] = {}
    for member in members(scene):
        asset: dict[str, Any] = {
            "href": member.path,
            "type": member.media_type,
            "title": member.title,
            "roles": list(member.roles),
        }
        if member.key == "reflectance":
            asset["eo:bands"] = eo_bands(scene.bands)
            asset["raster:bands"] = [raster_band] * scene.bands
        assets[member.key] = asset
    return {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": STAC_EXTENSIONS,
        "id": scene.item_id,
        "collection": "pixxel-ff-l2a",
        "bbox": list(scene.bbox),
        "geometry": footprint_geometry(scene),
        "links": [
            {
                "href": "https://api.pixxel.space/v0/archives/collections/pixxel-ff-l2a",
                "rel": "collection",
                "title": "Firefly L2A",
                "type": "application/json",
            }
        ],
        "assets": assets,
        "properties": properties(scene),
    }


def properties(scene: Scene) -> dict[str, Any]:
    platform = scene.item_id[:4] if scene.source_tif is None else "FF01"
    return {
        "datetime": iso(scene.captured),
        "created": iso(scene.created),
        "updated": iso(scene.created),
        "platform": platform,
        "constellation": "firefly",
        "instruments": ["VNIR"],
        "gsd": int(GSD),
        "eo:cloud_cover": scene.cloud_cover,
        "proj:epsg": scene.epsg,
        "proj:shape": [scene.height, scene.width],
        "proj:transform": list(scene.transform),
        "view:off_nadir": scene.off_nadir,
        "view:satellite_look_angle": scene.off_nadir,
        "view:sun_azimuth": scene.sun_azimuth,
        "view:sun_elevation": scene.sun_elevation,
        "sat:orbit_state": "descending",
        "sat:relative_orbit": scene.relative_orbit,
        "processing:level": "L2A",
    }


def catalog_entry(world: World, scene: Scene) -> dict[str, Any]:
    """One ``clerk.Catalog``; ``delivery_status`` follows the schema (``SUCCESS``)."""
    return {
        "id": scene.id,
        "area": round(scene.width * scene.height * GSD * GSD / 1e6, 4),
        "bandset_id": scene.bandset_id,
        "created_at": iso(scene.created),
        "created_by": world.user_id,
        "updated_at": iso(scene.created),
        "updated_by": world.user_id,
        "delivery_status": "SUCCESS",
        "details": stac_item(scene),
        "org_id": world.org_id,
        "task_id": scene.task_id,
    }
