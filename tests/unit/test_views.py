"""The STAC and true-colour views, rendered from in-memory catalog entries and member lists."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from types import MappingProxyType

import pystac
import pystac.validation
import pytest

from pixxelfs.api.models import Catalog
from pixxelfs.catalog.tree import DirectoryNode, SceneNode
from pixxelfs.fs.scene_files import MemberFile, MemoryFile, PackageDir
from pixxelfs.remote.zipindex import ZipMember
from pixxelfs.views import member_for_href, relative_href
from pixxelfs.views.stac import ScenePaths, StacView, render_catalog, render_item
from pixxelfs.views.vrt import TrueColourView, grid_of, scene_vrt
from tests.stac_offline import offline_validation

ITEM_ID = "FF02_000001_20250611_L2A"


def _member(name: str) -> MemberFile:
    return MemberFile(ZipMember(name, 0, 1, 1, 0, 0, None, False))


def _entry(details: dict | None = None, **assets: dict) -> Catalog:
    bands = [{"name": f"B{i:03d}", "center_wavelength": w} for i, w in enumerate(
        (470.0, 531.4, 592.9, 654.3, 715.7), start=1)]  # fmt: skip
    item = {
        "type": "Feature",
        "stac_version": "1.0.0",
        "stac_extensions": [],
        "id": ITEM_ID,
        "bbox": [0, 0, 1, 1],
        "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 0]]]},
        "properties": {
            "datetime": "2025-06-11T06:00:00Z",
            "proj:epsg": 32643,
            "proj:shape": [100, 200],
            "proj:transform": [5.0, 0.0, 1000.0, 0.0, -5.0, 9000.0],
        },
        "links": [{"rel": "self", "href": "https://api.example/items/x"}],
        "assets": {
            "reflectance": {
                "href": f"{ITEM_ID}/{ITEM_ID}_L2A_SR.tif",
                "type": "image/tiff",
                "eo:bands": bands,
                "raster:bands": [{"scale": 0.00002, "nodata": 0, "data_type": "uint16"}] * 5,
            },
            "missing": {"href": "https://storage.example/elsewhere.bin"},
            **assets,
        },
    }
    raw = {"id": "cat-1", "created_at": "2025-06-12T00:00:00Z", "details": details or item}
    return Catalog.from_json(raw)


PACKAGE = PackageDir(
    {ITEM_ID: PackageDir({f"{ITEM_ID}_L2A_SR.tif": _member(f"{ITEM_ID}/{ITEM_ID}_L2A_SR.tif")})}
)


def _scene(catalog: Catalog | None = None) -> SceneNode:
    return SceneNode(ITEM_ID, catalog or _entry(), 0.0)


def test_hrefs_are_relative_and_percent_encoded() -> None:
    assert relative_href("a b", "c#d", "item.json") == "./a%20b/c%23d/item.json"
    assert relative_href("2025-06-11", "x_(1).tif") == "./2025-06-11/x_(1).tif"


@pytest.mark.parametrize(
    "href",
    [
        f"{ITEM_ID}/{ITEM_ID}_L2A_SR.tif",
        f"./{ITEM_ID}/{ITEM_ID}_L2A_SR.tif",
        f"https://bucket.example/deliveries/{ITEM_ID}/{ITEM_ID}_L2A_SR.tif?X-Amz-Signature=1",
        f"{ITEM_ID}_L2A_SR.tif",
    ],
)
def test_asset_hrefs_find_their_member(href: str) -> None:
    assert member_for_href(href, PACKAGE) == (ITEM_ID, f"{ITEM_ID}_L2A_SR.tif")


def test_asset_without_member_is_not_matched() -> None:
    assert member_for_href("other.tif", PACKAGE) is None
    assert member_for_href("", PACKAGE) is None


def test_item_points_into_the_mount_and_drops_assets_without_files() -> None:
    item = render_item(_scene(), PACKAGE, ("proj", "usecase", "2025-06-11", ITEM_ID))
    assert item["assets"]["reflectance"]["href"] == f"./{ITEM_ID}/{ITEM_ID}_L2A_SR.tif"
    assert "missing" not in item["assets"]
    links = {link["rel"]: link["href"] for link in item["links"]}
    assert links == {"root": "../../../../catalog.json", "parent": "../catalog.json"}
    assert item["assets"]["reflectance"]["eo:bands"][0]["name"] == "B001"


def test_entry_without_details_still_gives_a_valid_item() -> None:
    catalog = Catalog.from_json({"id": "cat-2", "created_at": "2025-01-02T03:04:05Z"})
    item = render_item(SceneNode("cat-2", catalog, 0.0), PackageDir({}), None)
    assert item["id"] == "cat-2" and item["properties"]["datetime"] == "2025-01-02T03:04:05Z"
    with offline_validation():
        pystac.validation.validate_dict(item)


def test_catalogs_link_children_and_items_relatively() -> None:
    scene = _scene()
    date = DirectoryNode("2025-06-11", MappingProxyType({ITEM_ID: scene}), 0.0)
    root = DirectoryNode("", MappingProxyType({"a project": date}), 0.0)
    top = render_catalog((), root)
    assert {(link["rel"], link["href"]) for link in top["links"]} == {
        ("root", "./catalog.json"),
        ("self", "./catalog.json"),
        ("child", "./a%20project/catalog.json"),
    }
    below = render_catalog(("a project",), date)
    assert ("item", f"./{ITEM_ID}/item.json") in {(x["rel"], x["href"]) for x in below["links"]}
    assert ("root", "../catalog.json") in {(x["rel"], x["href"]) for x in below["links"]}
    with offline_validation():
        for catalog in (top, below):
            pystac.validation.validate_dict(catalog)


def test_stac_view_renders_once_per_package_tree() -> None:
    view = StacView(ScenePaths(lambda: None))
    first = view.in_scene(_scene(), PACKAGE)
    assert view.in_scene(_scene(), PACKAGE) is first
    assert view.in_scene(_scene(), PackageDir(dict(PACKAGE.children))) is not first
    data = first["item.json"]
    assert isinstance(data, MemoryFile) and json.loads(data.data)["id"] == ITEM_ID


def test_grid_comes_from_the_projection_fields() -> None:
    grid = grid_of(_entry().properties, {})
    assert grid is not None
    assert (grid.width, grid.height, grid.srs) == (200, 100, "EPSG:32643")
    assert grid.geotransform == (1000.0, 5.0, 0.0, 9000.0, 0.0, -5.0)
    assert grid_of({"proj:shape": [1, 2]}, {}) is None


def test_vrt_takes_the_bands_nearest_to_red_green_blue() -> None:
    found = scene_vrt(_scene(), PACKAGE)
    assert found is not None
    name, vrt = found
    assert name == f"{ITEM_ID}_TRUE_COLOUR.vrt"
    root = ET.fromstring(vrt.data)
    bands = root.findall("VRTRasterBand")
    assert [b.findtext("ColorInterp") for b in bands] == ["Red", "Green", "Blue"]
    assert [b.findtext("ComplexSource/SourceBand") for b in bands] == ["4", "2", "1"]
    source = bands[0].find("ComplexSource/SourceFilename")
    assert source is not None and source.get("relativeToVRT") == "1"
    assert source.text == f"{ITEM_ID}/{ITEM_ID}_L2A_SR.tif"
    scale, offset = float(bands[0].findtext("Scale")), float(bands[0].findtext("Offset"))
    ratio = float(bands[0].findtext("ComplexSource/ScaleRatio"))
    # A count of 15000 is reflectance 0.3 (scale 2e-5): full brightness, reported as 0.3.
    byte = 1.0 + 15000 * ratio
    assert byte == pytest.approx(255.0)
    assert byte * scale + offset == pytest.approx(0.3)


def test_no_vrt_without_bands_grid_or_file() -> None:
    no_file = PackageDir({})
    assert scene_vrt(_scene(), no_file) is None
    bare = _entry(details={"type": "Feature", "id": ITEM_ID, "assets": {}})
    assert TrueColourView().in_scene(_scene(bare), PACKAGE) == {}
