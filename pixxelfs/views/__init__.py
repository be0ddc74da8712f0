"""GIS-native views of the catalog: a static STAC catalog and ready-to-open VRT composites.

Each view is a :class:`~pixxelfs.fs.virtual.VirtualEntries` provider; :mod:`pixxelfs.mount`
plugs them in. Everything here renders from memory (the catalog entry and the package's member
list), never from the network.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Hashable, Iterator, Mapping
from urllib.parse import quote, unquote, urlsplit

from cachetools import LRUCache

from pixxelfs.fs.scene_files import MemberFile, MemoryFile, PackageDir, SceneEntry

# Characters kept as they are in relative hrefs: RFC 3986 unreserved, sub-delims, ':' and '@'.
_HREF_SAFE = "!$&'()*+,;=:@-._~"


def relative_href(*parts: str) -> str:
    """A relative URI reference ``./a/b`` from path components, percent-encoded where needed."""
    return "./" + "/".join(quote(part, safe=_HREF_SAFE) for part in parts)


def package_files(
    package: PackageDir, prefix: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], MemberFile]]:
    """Every package member with its path below the scene directory, in sorted order."""
    for name, entry in package.children.items():
        if isinstance(entry, PackageDir):
            yield from package_files(entry, (*prefix, name))
        elif isinstance(entry, MemberFile):
            yield (*prefix, name), entry


class RenderMemo:
    """Rendered virtual entries, kept while the object they were rendered from stays the same.

    Providers are asked on every lookup; rendering JSON or XML each time would cost more than
    the lookup itself. ``source`` is compared by identity (a tree node, a package tree).
    """

    def __init__(self, maxsize: int = 1024):
        self._cache: LRUCache[Hashable, tuple[object, Mapping[str, SceneEntry]]] = LRUCache(
            maxsize=maxsize
        )

    def get(
        self,
        key: Hashable,
        source: object,
        render: Callable[[], Mapping[str, SceneEntry]],
    ) -> Mapping[str, SceneEntry]:
        cached = self._cache.get(key)
        if cached is not None and cached[0] is source:
            return cached[1]
        entries = render()
        self._cache[key] = (source, entries)
        return entries


def json_file(document: object) -> MemoryFile:
    """Pretty-printed (2-space), newline-terminated ASCII JSON, so ``st_size`` is exact."""
    return MemoryFile((json.dumps(document, indent=2) + "\n").encode("ascii"))


def _normalised(name: str) -> str:
    return "/".join(part for part in name.replace("\\", "/").split("/") if part not in ("", "."))


def member_for_href(href: str, package: PackageDir) -> tuple[str, ...] | None:
    """The mount path (below the scene dir) of the package member a STAC asset href names.

    Tried in order: the member's own path, a path that ends with the other (an href absolute
    in storage, or relative to a package subfolder), then a unique file name.
    """
    wanted = _normalised(unquote(urlsplit(href).path))
    if not wanted:
        return None
    files = [(path, _normalised(entry.member.name)) for path, entry in package_files(package)]
    for path, name in files:
        if name == wanted:
            return path
    for path, name in files:
        if name.endswith("/" + wanted) or wanted.endswith("/" + name):
            return path
    basename = wanted.rsplit("/", 1)[-1]
    same_name = [path for path, name in files if name.rsplit("/", 1)[-1] == basename]
    return same_name[0] if len(same_name) == 1 else None
