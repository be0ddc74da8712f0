"""The true-colour view: a small GDAL VRT per scene that opens as a natural-colour image.

``<scene>_TRUE_COLOUR.vrt`` sits in the scene directory and points (``relativeToVRT="1"``) at
the scene's reflectance GeoTIFF. It takes the bands nearest to 650/560/480 nm from the STAC
``eo:bands`` of that asset (else the bands whose ``common_name`` is red/green/blue) and maps
reflectance 0..0.3 linearly onto bytes 1..255 (0 stays nodata), so QGIS shows it with the right
colours without a stretch. Each band carries ``<Scale>``/``<Offset>`` so that GDAL reports the
physical reflectance of a byte (``gdalinfo``'s "Offset/Scale", ``gdal_translate -unscale``).

Size, geotransform and CRS come from the item's ``proj:shape``/``proj:transform``/``proj:epsg``;
the GeoTIFF is only opened when pixels are read. A scene lacking any of that gets no VRT.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from xml.sax.saxutils import escape

from pixxelfs.catalog.tree import DirectoryNode, SceneNode
from pixxelfs.fs.scene_files import MemoryFile, PackageDir, SceneEntry
from pixxelfs.views import RenderMemo, member_for_href

log = logging.getLogger(__name__)

VRT_SUFFIX = "_TRUE_COLOUR.vrt"
TARGETS_NM = (("Red", 650.0, "red"), ("Green", 560.0, "green"), ("Blue", 480.0, "blue"))
WHITE_REFLECTANCE = 0.3
"""Reflectance shown as full brightness: bright land and cloud edges still saturate, water and
vegetation stay visible (the usual true-colour range of surface-reflectance products)."""
DEFAULT_SCALE = 0.0001
"""Reflectance per count when ``raster:bands`` does not say (the common L2A convention)."""
_GDAL_TYPES = {
    "uint8": "Byte",
    "int8": "Int8",
    "uint16": "UInt16",
    "int16": "Int16",
    "uint32": "UInt32",
    "int32": "Int32",
    "float32": "Float32",
    "float64": "Float64",
}


@dataclass(frozen=True)
class Grid:
    """The raster's size, GDAL geotransform and CRS, from the STAC projection extension."""

    width: int
    height: int
    geotransform: tuple[float, ...]
    srs: str


@dataclass(frozen=True)
class SourceBand:
    """One band of the reflectance GeoTIFF chosen for a display colour."""

    colour: str
    number: int  # 1-based band number in the GeoTIFF
    description: str
    scale: float
    offset: float
    nodata: float | None
    data_type: str


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def grid_of(properties: Mapping[str, Any], asset: Mapping[str, Any]) -> Grid | None:
    """The grid from the asset's ``proj:*`` fields, else the item's; None if incomplete."""

    def field(name: str) -> Any:
        return asset.get(name, properties.get(name))

    shape, transform, epsg = field("proj:shape"), field("proj:transform"), field("proj:epsg")
    if not (isinstance(shape, list) and len(shape) == 2 and all(_number(v) for v in shape)):
        return None
    if not (isinstance(transform, list) and len(transform) in (6, 9)):
        return None
    coefficients = [_number(v) for v in transform[:6]]
    if any(c is None for c in coefficients) or _number(epsg) is None:
        return None
    a, b, c, d, e, f = (float(x) for x in coefficients if x is not None)
    return Grid(int(shape[1]), int(shape[0]), (c, a, b, f, d, e), f"EPSG:{int(epsg)}")


def _band_info(raster_bands: object, index: int) -> Mapping[str, Any]:
    if isinstance(raster_bands, list) and index < len(raster_bands):
        band = raster_bands[index]
        return band if isinstance(band, Mapping) else {}
    return {}


def _nearest(bands: Sequence[Mapping[str, Any]], wavelength_nm: float, common: str) -> int | None:
    """Index of the band nearest to ``wavelength_nm`` (eo:bands centres are in micrometres
    by the spec, in nanometres in Pixxel's items: values above 100 are taken as nm)."""
    best: tuple[float, int] | None = None
    for index, band in enumerate(bands):
        centre = _number(band.get("center_wavelength"))
        if centre is None:
            continue
        centre_nm = centre if centre > 100 else centre * 1000.0
        distance = abs(centre_nm - wavelength_nm)
        if best is None or distance < best[0]:
            best = (distance, index)
    if best is not None:
        return best[1]
    return next((i for i, b in enumerate(bands) if b.get("common_name") == common), None)


def choose_bands(asset: Mapping[str, Any]) -> list[SourceBand] | None:
    """Red, green and blue source bands from ``eo:bands``/``raster:bands``, or None."""
    eo_bands = asset.get("eo:bands")
    if not isinstance(eo_bands, list) or not eo_bands:
        return None
    bands = [b if isinstance(b, Mapping) else {} for b in eo_bands]
    chosen = []
    for colour, wavelength, common in TARGETS_NM:
        index = _nearest(bands, wavelength, common)
        if index is None:
            return None
        info = _band_info(asset.get("raster:bands"), index)
        described = bands[index].get("name") or f"band {index + 1}"
        centre = bands[index].get("center_wavelength")
        chosen.append(
            SourceBand(
                colour=colour,
                number=index + 1,
                description=f"{described} ({centre} nm)" if centre is not None else described,
                scale=_number(info.get("scale")) or DEFAULT_SCALE,
                offset=_number(info.get("offset")) or 0.0,
                nodata=_number(info.get("nodata")),
                data_type=_GDAL_TYPES.get(str(info.get("data_type")), "UInt16"),
            )
        )
    return chosen


def _reflectance_asset(assets: object) -> tuple[str, Mapping[str, Any]] | None:
    """The GeoTIFF asset with spectral bands (the ``reflectance`` asset of Pixxel items)."""
    if not isinstance(assets, Mapping):
        return None
    candidates = [
        (key, asset)
        for key, asset in assets.items()
        if isinstance(asset, Mapping)
        and isinstance(asset.get("eo:bands"), list)
        and isinstance(asset.get("href"), str)
    ]
    candidates.sort(key=lambda pair: (pair[0] != "reflectance", pair[0]))
    return candidates[0] if candidates else None


def _band_xml(position: int, band: SourceBand, source: str, grid: Grid) -> str:
    """One byte band: counts -> 1 + 254 * reflectance / 0.3, with the reflectance scale."""
    step = WHITE_REFLECTANCE / 254.0  # reflectance per output byte
    ratio = band.scale / step
    offset = 1.0 + band.offset / step
    nodata = "" if band.nodata is None else f"<NODATA>{band.nodata:g}</NODATA>"
    size = f'RasterXSize="{grid.width}" RasterYSize="{grid.height}"'
    window = f'xOff="0" yOff="0" xSize="{grid.width}" ySize="{grid.height}"'
    return f"""  <VRTRasterBand dataType="Byte" band="{position}">
    <Description>{escape(band.description)}</Description>
    <ColorInterp>{band.colour}</ColorInterp>
    <NoDataValue>0</NoDataValue>
    <Offset>{-step!r}</Offset>
    <Scale>{step!r}</Scale>
    <ComplexSource>
      <SourceFilename relativeToVRT="1">{escape(source)}</SourceFilename>
      <SourceBand>{band.number}</SourceBand>
      <SourceProperties {size} DataType="{band.data_type}"/>
      <SrcRect {window}/>
      <DstRect {window}/>
      <ScaleOffset>{offset!r}</ScaleOffset>
      <ScaleRatio>{ratio!r}</ScaleRatio>
      {nodata}
    </ComplexSource>
  </VRTRasterBand>
"""


def render_vrt(grid: Grid, bands: Sequence[SourceBand], source: str) -> bytes:
    """The VRT document; ``source`` is the GeoTIFF's path relative to the VRT."""
    geotransform = ", ".join(repr(v) for v in grid.geotransform)
    body = "".join(_band_xml(i, band, source, grid) for i, band in enumerate(bands, start=1))
    return (
        f'<VRTDataset rasterXSize="{grid.width}" rasterYSize="{grid.height}">\n'
        f"  <SRS>{escape(grid.srs)}</SRS>\n"
        f"  <GeoTransform>{geotransform}</GeoTransform>\n"
        f'  <Metadata><MDI key="WHITE_REFLECTANCE">{WHITE_REFLECTANCE}</MDI></Metadata>\n'
        f"{body}</VRTDataset>\n"
    ).encode()


def scene_vrt(scene: SceneNode, package: PackageDir) -> tuple[str, MemoryFile] | None:
    """The scene's true-colour VRT (name and file), or None when the item lacks what it needs."""
    details = scene.catalog.details or {}
    found = _reflectance_asset(details.get("assets"))
    if found is None:
        return None
    key, asset = found
    properties = details.get("properties")
    grid = grid_of(properties if isinstance(properties, Mapping) else {}, asset)
    bands = choose_bands(asset)
    path = member_for_href(asset["href"], package)
    if grid is None or bands is None or path is None:
        log.debug(
            "scene %s: no true-colour VRT (asset %s lacks grid, bands or file)", scene.name, key
        )
        return None
    return scene.name + VRT_SUFFIX, MemoryFile(render_vrt(grid, bands, "/".join(path)))


class TrueColourView:
    """``<scene>_TRUE_COLOUR.vrt`` in every scene directory whose item allows one."""

    def __init__(self) -> None:
        self._memo = RenderMemo()

    def in_directory(self, path: Sequence[str], node: DirectoryNode) -> Mapping[str, SceneEntry]:
        return {}

    def in_scene(self, scene: SceneNode, package: PackageDir) -> Mapping[str, SceneEntry]:
        def render() -> Mapping[str, SceneEntry]:
            found = scene_vrt(scene, package)
            return dict([found]) if found is not None else {}

        return self._memo.get(scene, package, render)
