"""Scene xattrs: present fields only, plain numbers, valid UTF-8, no asset hrefs."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixxelfs.api.models import Catalog
from pixxelfs.catalog.xattrs import format_value, scene_xattrs

SIGNED = "https://storage.example/pkg.zip?X-Amz-Signature=deadbeef"


def entry(details: Any, **extra: Any) -> Catalog:
    return Catalog.from_json({"id": "c1", "details": details, **extra})


def test_full_entry() -> None:
    details = {
        "id": "FF02_0001_L2A",
        "collection": "pixxel-ff-l2a",
        "properties": {
            "datetime": "2025-06-11T10:20:30Z",
            "eo:cloud_cover": 12.5,
            "gsd": 5.0,
            "proj:epsg": 32643,
            "instruments": ["VNIR", "SWIR"],
            "proj:transform": [0, 10, 500000],
            "unlisted:field": "x",
        },
        "assets": {"data": {"href": SIGNED}},
    }
    attrs = scene_xattrs(
        entry(details, task_id="t1", delivery_status="SUCCESSFUL", created_by="user-uuid")
    )
    assert attrs == {
        "user.pixxel.catalog_id": b"c1",
        "user.pixxel.task_id": b"t1",
        "user.pixxel.delivery_status": b"SUCCESSFUL",
        "user.stac.id": b"FF02_0001_L2A",
        "user.stac.collection": b"pixxel-ff-l2a",
        "user.stac.datetime": b"2025-06-11T10:20:30Z",
        "user.stac.eo:cloud_cover": b"12.5",
        "user.stac.gsd": b"5",
        "user.stac.proj:epsg": b"32643",
        "user.stac.instruments": b"VNIR,SWIR",
    }


def test_null_details_give_only_the_catalog_fields() -> None:
    assert scene_xattrs(entry(None)) == {"user.pixxel.catalog_id": b"c1"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (30, "30"),
        (30.0, "30"),
        (0.1, "0.1"),
        (1e-7, "0.0000001"),
        (1.5e20, "150000000000000000000"),
        (-2.25, "-2.25"),
        (True, "true"),
        ("text", "text"),
        (["a", 1, 2.5], "a,1,2.5"),
        ([], None),
        ([["nested"]], None),
        ({"a": 1}, None),
        (None, None),
        (float("nan"), None),
        (float("inf"), None),
    ],
)
def test_format_value(value: Any, expected: str | None) -> None:
    assert format_value(value) == expected


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(deadline=None)
@given(st.dictionaries(st.sampled_from(["gsd", "datetime", "platform", "x"]), json_values))
def test_values_are_always_utf8_without_exponents(properties: dict[str, Any]) -> None:
    attrs = scene_xattrs(entry({"id": "S", "properties": properties}))
    for name, value in attrs.items():
        assert name.startswith(("user.pixxel.", "user.stac."))
        text = value.decode("utf-8")
        if isinstance(properties.get(name.removeprefix("user.stac.")), float):
            assert "e" not in text.lower()
