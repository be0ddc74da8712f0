"""STAC validation without the network: pystac's bundled core schemas, structural extension checks.

pystac validates core objects against JSON schemas it ships (STAC 1.1.0 Item/Catalog/Collection)
but fetches extension schemas from the web, which tests must not do. This validator answers core
validation from the bundled schemas, refuses to fetch anything, and checks the fields of the
extensions Pixxel items use (eo, raster, projection) with pystac's own extension object model.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pystac
import pystac.validation
from pystac.validation.stac_validator import JsonSchemaSTACValidator


class NoNetworkError(RuntimeError):
    pass


class OfflineValidator(JsonSchemaSTACValidator):
    """Core schemas from pystac's package data; extensions checked through pystac's models."""

    checked_extensions: list[str]

    def __init__(self) -> None:
        super().__init__()
        self.checked_extensions = []

    def _get_schema(self, schema_uri: str) -> dict[str, Any]:
        if schema_uri not in self.schema_cache:
            raise NoNetworkError(f"schema {schema_uri} is not bundled; not fetching it")
        return self.schema_cache[schema_uri]

    def validate_extension(
        self,
        stac_dict: dict[str, Any],
        stac_object_type: pystac.STACObjectType,
        stac_version: str,
        extension_id: str,
        href: str | None = None,
    ) -> str | None:
        if stac_object_type == pystac.STACObjectType.ITEM:
            _check_item_extension(pystac.Item.from_dict(stac_dict), extension_id)
        self.checked_extensions.append(extension_id)
        return extension_id


def _check_item_extension(item: pystac.Item, extension_id: str) -> None:
    """The typed accessors of pystac raise or return wrong types on malformed fields."""
    from pystac.extensions.eo import EOExtension
    from pystac.extensions.projection import ProjectionExtension
    from pystac.extensions.raster import RasterExtension

    if "/eo/" in extension_id:
        for asset in item.assets.values():
            for band in EOExtension.ext(asset).bands or []:
                assert isinstance(band.name, str), band.to_dict()
                assert band.center_wavelength is None or band.center_wavelength > 0
    elif "/raster/" in extension_id:
        for asset in item.assets.values():
            for band in RasterExtension.ext(asset).bands or []:
                assert band.scale is None or band.scale > 0, band.to_dict()
    elif "/projection/" in extension_id:
        projection = ProjectionExtension.ext(item)
        shape = projection.shape
        assert shape is None or (len(shape) == 2 and all(n > 0 for n in shape))
        assert projection.transform is None or len(projection.transform) in (6, 9)


@contextmanager
def offline_validation() -> Iterator[OfflineValidator]:
    """Install the offline validator for the duration of a test."""
    validator = OfflineValidator()
    pystac.validation.set_validator(validator)
    try:
        yield validator
    finally:
        pystac.validation.set_validator(JsonSchemaSTACValidator())
