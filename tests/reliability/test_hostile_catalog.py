"""Hostile catalog data degrades gracefully: bad entries are skipped or put under _unassigned/
with a warning, every name the mount shows is a valid single path component, and nothing crashes.

The emulator's hostile mode (``pixxelfs.emulator.hostile``) serves the raw answers below in place
of the projects, order items and catalog search routes, and crafted ZIP member names for one
scene; the whole read stack (client, catalog, packages, fs) runs against it.
"""

from __future__ import annotations

import errno
import json
import logging
import os
from collections.abc import AsyncIterator

import pyfuse3
import pytest

from pixxelfs.emulator import Emulator, EmulatorConfig, serve_emulator
from pixxelfs.emulator.hostile import HostilePlan, RawAnswer, member_bytes
from pixxelfs.errors import MalformedResponseError
from pixxelfs.fs.operations import PixxelOperations
from tests.reliability.util import operations, read_file

LONG = "x" * 300
CRAFTED_MEMBERS = (
    "../../x",
    "/abs/y",
    "dir/../../up",
    "ctl\x07z",
    "x\x07y",
    "x_y",
    "metadata.json",
    "a\\b",
    "deep/" + "é" * 200,
    ".",
    "./..",
)
# Errors a look into a scene may end in; anything else (or a crash) fails the test.
DOCUMENTED = {errno.ENOENT, errno.EIO, errno.EACCES, errno.EAGAIN, errno.ESTALE}


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with serve_emulator(EmulatorConfig(seed=13, scenes=2)) as emulator:
        yield emulator


def _raw(document: object) -> RawAnswer:
    return RawAnswer(200, json.dumps(document))


def _hostile_world(real: list[str]) -> HostilePlan:
    """Projects, order items and catalog entries with every kind of bad value at once."""
    projects = [
        {"id": "p-slash", "name": "a/b", "created_at": "2025-01-01T00:00:00Z"},
        {"id": "p-dots", "name": ".."},
        {"id": "p-dot", "name": "."},
        {"id": "p-nul", "name": "nul\x00name"},
        {"id": "p-ctl", "name": "ctl\x07\x1bname"},
        {"id": "p-long", "name": LONG},
        {"id": "p-surrogate", "name": "bad\ud800name"},
        {"id": "p-reserved", "name": "_unassigned"},
        {"id": "p-dup", "name": "first"},
        {"id": "p-dup", "name": "second", "updated_at": "2025-03-01T00:00:00Z"},
        {"id": "p-types", "name": ["list"], "title": 7},
        {"id": 42, "name": "int-id"},
        {"name": "no-id"},
        None,
        "string",
        [],
    ]
    order_items = [
        {"id": "oi-1", "project_id": "p-slash", "usecase": "../../etc", "tasks": [{"id": "t-1"}]},
        {"id": "oi-2", "project_id": "p-dots", "usecase": "water", "status": "WEIRD_ENUM",
         "tasks": [{"id": "t-2"}, None, {"id": 5}]},
        {"id": "oi-3", "project_id": "p-missing", "usecase": "x", "tasks": [{"id": "t-3"}]},
        {"id": "oi-4", "project_id": "p-long", "usecase": None, "tasks": None},
        {"id": "oi-5", "project_id": "p-nul", "usecase": "a\x00b", "tasks": "not a list"},
        {"id": "oi-6", "project_id": "p-ctl", "usecase": "/", "tasks": [{"id": "t-6"}]},
        {"id": None, "tasks": [{"id": "t-7"}]},
    ]  # fmt: skip
    catalogs = [
        {"id": real[0], "task_id": "t-1", "delivery_status": "SUCCESS",
         "details": {"id": "../../../escape", "properties": {"datetime": "2025-06-01T00:00:00Z"}}},
        {"id": real[1], "task_id": "t-2", "details": None, "created_at": "garbage"},
        {"id": "c-nul", "task_id": "t-6", "details": {"id": "nul\x00/slash"},
         "delivery_status": "UNKNOWN_ENUM"},
        {"id": "c-long", "task_id": "t-3", "details": {"id": LONG, "properties": "not an object"}},
        {"id": "c-surrogate", "details": {"id": "\udc80"}},
        {"id": "c-dup", "details": {"id": "dup"}, "updated_at": "2025-01-01T00:00:00Z"},
        {"id": "c-dup", "details": {"id": "dup2"}, "updated_at": "2025-02-01T00:00:00Z"},
        {"id": "c-dots", "details": {"id": ".."}},
        {"id": "c-types", "details": ["list"], "task_id": 5, "created_at": 12,
         "delivery_status": 3},
        {"id": 7},
        {"task_id": "x"},
        None,
        [1],
        "str",
    ]  # fmt: skip
    return HostilePlan(
        answers={
            "projects.list": _raw({"count": 10**18, "projects": projects}),
            "order_items.list": _raw(
                {"order_items": order_items, "pagination": {"limit": 100, "total": -5}}
            ),
            "catalogs.search": _raw(
                {"catalogs": catalogs, "pagination": {"limit": "many", "total": 10**20}}
            ),
        },
        members={real[0]: CRAFTED_MEMBERS},
    )


VISIBLE = {"c-nul", "c-long", "c-surrogate", "c-dup", "c-dots", "c-types"}
UNASSIGNED = {"c-long", "c-surrogate", "c-dup", "c-dots", "c-types"}


def _assert_valid_name(name: str) -> None:
    assert name not in ("", ".", ".."), name
    assert "/" not in name and "\x00" not in name, repr(name)
    assert not any(ord(c) < 32 for c in name), repr(name)
    assert len(name.encode("utf-8")) <= 255, name  # also: no lone surrogates


async def _walk(ops: PixxelOperations, caplog) -> dict[tuple[str, ...], bytes]:
    """Every file reachable from the root with its bytes; documented errnos are tolerated."""
    files: dict[tuple[str, ...], bytes] = {}
    pending: list[tuple[tuple[str, ...], int]] = [((), pyfuse3.ROOT_INODE)]
    while pending:
        path, inode = pending.pop()
        try:
            fh = await ops.opendir(inode, None)
        except pyfuse3.FUSEError as exc:
            assert exc.errno in DOCUMENTED, (path, exc.errno)
            continue
        listing = ops._dirs[fh]
        await ops.releasedir(fh)
        for raw_name, attrs in listing:
            name = os.fsdecode(raw_name)
            _assert_valid_name(name)
            child = (await ops.lookup(inode, raw_name, None)).st_ino
            if attrs.st_mode & 0o040000:
                pending.append(((*path, name), child))
                continue
            info = await ops.open(child, os.O_RDONLY, None)
            files[(*path, name)] = await ops.read(info.fh, 0, attrs.st_size + 1)
            await ops.release(info.fh)
    return files


async def test_hostile_catalog_is_skipped_or_unassigned_never_a_crash(emu, caplog) -> None:
    real = emu.catalog_ids()
    emu.set_hostile(_hostile_world(real))
    async with operations(emu, block_size=4096) as ops:
        files = await _walk(ops, caplog)
        tree = await ops.catalog.tree()
        placed = {node.catalog.id: path for path, node in tree.scenes()}
        # metadata.json is the raw entry, readable even where the package is not.
        for catalog_id, path in placed.items():
            entry = json.loads(await read_file(ops, (*path, "metadata.json")))
            assert entry["id"] == catalog_id
    assert set(placed) == VISIBLE | set(real)
    assert {cid for cid, path in placed.items() if path[0] == "_unassigned"} == UNASSIGNED
    top = {path[0] for path in placed.values()} | {p[0] for p in files}
    assert "__unassigned" in top or "_unassigned" in top
    # The crafted package: every member is readable exactly once, inside the scene directory.
    crafted = placed[real[0]]
    inside = [data for path, data in files.items() if path[: len(crafted)] == crafted]
    expected = sorted(member_bytes(name) for name in CRAFTED_MEMBERS if name not in (".",))
    assert sorted(d for d in inside if d in expected) == expected
    # The scene with a real package and details: null is named by its catalog id.
    assert placed[real[1]][-1] == real[1] and placed[real[1]][-2] == "unknown-date"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("skipped a malformed element" in w for w in warnings), warnings
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    "body",
    ['{"catalogs": [', "[]", '"catalogs"', '{"catalogs": {"a": 1}}', "<html>oops</html>"],
    ids=["truncated-json", "a-list", "a-string", "wrong-type", "html"],
)
async def test_malformed_listing_keeps_the_previous_snapshot(emu, caplog, body) -> None:
    async with operations(emu, metadata_ttl=0) as ops:
        before = [path for path, _ in (await ops.catalog.tree()).scenes()]
        emu.set_hostile(HostilePlan(answers={"catalogs.search": RawAnswer(200, body)}))
        after = [path for path, _ in (await ops.catalog.tree()).scenes()]
        assert after == before
        assert await ops.getattr(pyfuse3.ROOT_INODE, None)
    assert any("serving the previous snapshot" in r.getMessage() for r in caplog.records)


async def test_malformed_listing_at_mount_time_is_a_clear_error(emu) -> None:
    emu.set_hostile(HostilePlan(answers={"catalogs.search": RawAnswer(200, '{"catalogs": [')}))
    with pytest.raises(BaseExceptionGroup) as caught:
        async with operations(emu):
            pass
    assert caught.group_contains(MalformedResponseError, match="not JSON", depth=None)
