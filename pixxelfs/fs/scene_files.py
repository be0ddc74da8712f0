"""The files inside one scene directory: ``metadata.json`` plus the delivery package's members.

Member paths come from the ZIP's central directory and are hostile until proven otherwise:
each path component is sanitised with the catalog's naming rules (so ``..``, ``/`` and NUL can
never escape the scene directory) and collisions are settled deterministically. Package
subfolders stay subfolders.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from pixxelfs.api.models import Catalog
from pixxelfs.catalog.names import Claim, assign_names
from pixxelfs.remote.zipindex import ZipIndex, ZipMember

METADATA_NAME = "metadata.json"


@dataclass(frozen=True)
class MemoryFile:
    """A file whose bytes pixxelfs holds itself: ``metadata.json`` and other virtual files.

    ``volatile`` files are rendered anew on every open (their size may change): they are
    opened with ``direct_io`` so the kernel never cuts a read at a stale size.
    """

    data: bytes
    volatile: bool = False


@dataclass(frozen=True)
class MemberFile:
    """A file of the delivery package, read lazily from storage."""

    member: ZipMember


@dataclass(frozen=True)
class PackageDir:
    """A folder of the delivery package (the scene directory itself is the top one)."""

    children: Mapping[str, SceneEntry]


SceneEntry = MemoryFile | MemberFile | PackageDir


def render_metadata(catalog: Catalog) -> bytes:
    """Pretty-printed, newline-terminated JSON of the raw catalog entry (so st_size is exact)."""
    try:
        return (json.dumps(catalog.raw, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
    except UnicodeEncodeError:
        # Lone surrogates (legal in JSON escapes, not in UTF-8): keep them as JSON escapes.
        return (json.dumps(catalog.raw, indent=2) + "\n").encode("ascii")


@dataclass
class _RawDir:
    dirs: dict[str, _RawDir] = field(default_factory=dict)
    files: dict[str, ZipMember] = field(default_factory=dict)


def _components(name: str) -> list[str]:
    """Path components of a member name, without empty and ``.`` parts (``a//./b`` -> a, b)."""
    return [part for part in name.replace("\\", "/").split("/") if part not in ("", ".")]


def _raw_tree(index: ZipIndex) -> _RawDir:
    root = _RawDir()
    for member in index.members:
        parts = _components(member.name)
        if not parts:
            continue
        *folders, leaf = parts
        node = root
        for folder in folders:
            node = node.dirs.setdefault(folder, _RawDir())
        if member.is_dir:
            node.dirs.setdefault(leaf, _RawDir())
        else:
            node.files.setdefault(leaf, member)
    return root


def _settle(raw: _RawDir, reserved: frozenset[str]) -> PackageDir:
    claims = [Claim(key="d/" + name, wanted=name) for name in raw.dirs]
    claims += [Claim(key="f/" + name, wanted=name) for name in raw.files]
    names = assign_names(claims, is_reserved=reserved.__contains__)
    children: dict[str, SceneEntry] = {}
    for name, sub in raw.dirs.items():
        children[names["d/" + name]] = _settle(sub, frozenset())
    for name, member in raw.files.items():
        children[names["f/" + name]] = MemberFile(member)
    return PackageDir(dict(sorted(children.items())))


def build_scene_dir(index: ZipIndex) -> PackageDir:
    """The package's members as a tree; ``metadata.json`` is kept free for the catalog entry."""
    return _settle(_raw_tree(index), frozenset({METADATA_NAME}))


def scene_root(
    package: PackageDir, catalog: Catalog, extra: Mapping[str, SceneEntry]
) -> PackageDir:
    """The scene directory: package members, ``metadata.json``, and extra (virtual) entries.

    Package members and ``metadata.json`` win over extra entries of the same name.
    """
    metadata = {METADATA_NAME: MemoryFile(render_metadata(catalog))}
    return PackageDir(dict(sorted({**extra, **package.children, **metadata}.items())))


def lookup_entry(root: PackageDir, path: Sequence[str]) -> SceneEntry | None:
    """Resolve ``path`` below ``root``; ``()`` is ``root`` itself."""
    entry: SceneEntry = root
    for name in path:
        if not isinstance(entry, PackageDir):
            return None
        child = entry.children.get(name)
        if child is None:
            return None
        entry = child
    return entry
