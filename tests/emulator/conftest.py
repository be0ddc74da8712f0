"""Fixtures for the emulator's own tests: schema validation, API clients, private emulators."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from referencing import Registry
from referencing.jsonschema import DRAFT4

from pixxelfs.emulator import Emulator, EmulatorConfig, running_emulator

REPO = Path(__file__).resolve().parents[2]
OPENAPI = REPO / "docs" / "api" / "pixxel-openapi.json"

Validate = Callable[[Any, str], None]


@pytest.fixture(scope="session")
def openapi() -> dict[str, Any]:
    if not OPENAPI.is_file():
        pytest.fail(f"the official OpenAPI document is missing: expected {OPENAPI}")
    document: dict[str, Any] = json.loads(OPENAPI.read_text())
    return document


@pytest.fixture(scope="session")
def validate(openapi: dict[str, Any]) -> Validate:
    """Validate against ``components.schemas.<name>`` (OpenAPI 3.0; the file uses no nullable)."""
    registry = Registry().with_resource("urn:openapi", DRAFT4.create_resource(openapi))

    def check(instance: Any, name: str) -> None:
        schema = {"$ref": f"urn:openapi#/components/schemas/{name}"}
        jsonschema.Draft4Validator(schema, registry=registry).validate(instance)

    return check


@pytest.fixture
def api(emulator: Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, headers={"Authorization": emulator.api_key}) as c:
        yield c


@pytest.fixture(scope="module")
def private_emulator() -> Iterator[Emulator]:
    """An emulator of this module's own, for tests that change faults, scenes or packages."""
    with running_emulator(EmulatorConfig(seed=7, scenes=4, width=64, height=64, bands=3)) as emu:
        yield emu


@pytest.fixture
def private_api(private_emulator: Emulator) -> Iterator[httpx.Client]:
    private_emulator.clear_faults()
    headers = {"Authorization": private_emulator.api_key}
    with httpx.Client(base_url=private_emulator.base_url, headers=headers) as c:
        yield c
    private_emulator.clear_faults()


def signed_url(client: httpx.Client, catalog_id: str) -> str:
    """Create a download and poll it until it succeeds; returns the signed URL."""
    created = client.post("/v0/catalogs/download", json={"catalog_ids": [catalog_id]})
    assert created.status_code == 201, created.text
    for _ in range(10):
        status = client.get(f"/v0/catalogs/download/{created.json()['id']}").json()
        if status["status"] == "success":
            return str(status["signed_url"])
    raise AssertionError(f"download never succeeded: {status}")
