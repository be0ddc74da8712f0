"""Extended attributes of scene directories and their files.

This module owns which catalog facts are exposed as ``user.*`` xattrs, so ``getfattr -d`` (or a
script) can filter scenes without opening ``metadata.json``. Only an allow-list of scalar fields
is exposed: asset hrefs, links and user ids stay out (an href may be a signed URL, a secret).
Values are UTF-8 text; numbers are written plainly (``12``, ``0.5``, ``0.0000001``), lists of
scalars are comma-separated, and absent or non-scalar fields are simply left out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from pixxelfs.api.models import Catalog

PIXXEL_PREFIX = "user.pixxel."
STAC_PREFIX = "user.stac."

_CATALOG_FIELDS = ("task_id", "delivery_status", "bandset_id", "area", "created_at", "updated_at")
_STAC_PROPERTIES = (
    "datetime",
    "start_datetime",
    "end_datetime",
    "created",
    "updated",
    "platform",
    "constellation",
    "mission",
    "instruments",
    "gsd",
    "eo:cloud_cover",
    "proj:epsg",
    "proj:code",
    "sat:orbit_state",
    "sat:relative_orbit",
    "sci:doi",
    "view:off_nadir",
    "view:satellite_look_angle",
    "view:sun_azimuth",
    "view:sun_elevation",
    "rd:product_level",
)


def format_value(value: Any) -> str | None:
    """Plain text for a JSON scalar or list of scalars; None if it has no plain form."""
    if not isinstance(value, list):
        return _format_scalar(value)
    texts: list[str] = []
    for item in value:
        text = _format_scalar(item)
        if text is None:
            return None
        texts.append(text)
    return ",".join(texts) or None


def _format_scalar(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _format_float(value)
    return value if isinstance(value, str) else None


def _format_float(value: float) -> str | None:
    """Shortest round-trip digits, never in exponent form; integral floats lose their ``.0``."""
    if not math.isfinite(value):
        return None
    if value.is_integer():
        return str(int(value))
    return format(Decimal(repr(value)), "f")


def _encode(text: str) -> bytes:
    # JSON may carry lone surrogates; xattr values must still be valid UTF-8.
    return text.encode("utf-8", "replace")


def scene_xattrs(catalog: Catalog) -> dict[str, bytes]:
    """The ``user.*`` extended attributes of a scene (only the fields present)."""
    attrs = {PIXXEL_PREFIX + "catalog_id": _encode(catalog.id)}
    sources: list[tuple[str, Mapping[str, Any], tuple[str, ...]]] = [
        (PIXXEL_PREFIX, catalog.raw, _CATALOG_FIELDS),
        (STAC_PREFIX, catalog.details or {}, ("id", "collection")),
        (STAC_PREFIX, catalog.properties, _STAC_PROPERTIES),
    ]
    for prefix, source, fields in sources:
        for field in fields:
            text = format_value(source.get(field))
            if text is not None:
                attrs[prefix + field] = _encode(text)
    return attrs
