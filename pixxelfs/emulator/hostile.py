"""Hostile input on demand: raw API answers and packages with crafted member names.

A :class:`HostilePlan` makes the emulator misbehave in ways a fault rule cannot: it replaces the
answer of chosen API routes with a fixed status and *raw body text* (malformed JSON, wrong types,
names with ``/``, NUL or lone surrogates, absurd pagination totals), and serves, for chosen
catalog ids, a ZIP package whose members carry crafted names (``../../x``, absolute paths,
control characters). Nothing is hostile unless a test asks: set a plan with
``POST /_emulator/hostile`` (or :meth:`pixxelfs.emulator.server.Emulator.set_hostile`), drop it
with ``DELETE /_emulator/hostile``.

The bytes of a crafted member are derived from its name (:func:`member_bytes`), so a client's
reads can be checked without access to the package file.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

# A crafted member is this many repetitions of its name's SHA-256 (8 KiB): several blocks at
# the small block sizes tests use.
_MEMBER_REPEAT = 256


@dataclass(frozen=True)
class RawAnswer:
    """What a replaced route answers: a status and the body text, served as JSON."""

    status: int
    body: str


@dataclass(frozen=True)
class HostilePlan:
    """Route name -> raw answer, and catalog id -> the member names of its crafted package."""

    answers: Mapping[str, RawAnswer] = field(default_factory=dict)
    members: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "answers", MappingProxyType(dict(self.answers)))
        members = {cid: tuple(names) for cid, names in self.members.items()}
        object.__setattr__(self, "members", MappingProxyType(members))

    @classmethod
    def from_json(cls, obj: Any) -> HostilePlan:
        """``{"answers": {route: {"status", "body"}}, "members": {catalog_id: [names]}}``."""
        if not isinstance(obj, dict) or set(obj) - {"answers", "members"}:
            raise ValueError("a hostile plan is an object with 'answers' and/or 'members'")
        answers, members = obj.get("answers", {}), obj.get("members", {})
        if not isinstance(answers, dict) or not isinstance(members, dict):
            raise ValueError("'answers' and 'members' must be objects")
        try:
            parsed = {route: _raw_answer(value) for route, value in answers.items()}
        except (KeyError, TypeError) as exc:
            message = f"an answer needs an integer status and a string body: {exc}"
            raise ValueError(message) from None
        for names in members.values():
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise ValueError("'members' maps catalog ids to lists of non-empty names")
        return cls(parsed, {cid: tuple(names) for cid, names in members.items()})

    def to_json(self) -> dict[str, Any]:
        return {
            "answers": {r: {"status": a.status, "body": a.body} for r, a in self.answers.items()},
            "members": {cid: list(names) for cid, names in self.members.items()},
        }


def _raw_answer(value: Any) -> RawAnswer:
    status, body = value["status"], value["body"]
    if isinstance(status, bool) or not isinstance(status, int) or not isinstance(body, str):
        raise TypeError("status must be an integer and body a string")
    if not 200 <= status <= 599:
        raise TypeError("status must be within 200..599")
    return RawAnswer(status, body)


def member_bytes(name: str) -> bytes:
    """The content of the crafted member called ``name``."""
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest() * _MEMBER_REPEAT


def write_package(dest: Path, names: Iterable[str]) -> None:
    """A ZIP whose members are called exactly ``names`` (alternately stored and deflated)."""
    with zipfile.ZipFile(dest, "w") as zf:
        for position, name in enumerate(names):
            info = zipfile.ZipInfo("placeholder", date_time=(2025, 1, 1, 0, 0, 0))
            info.filename = name  # ZipInfo() would cut a name at NUL and rewrite separators
            info.compress_type = zipfile.ZIP_DEFLATED if position % 2 else zipfile.ZIP_STORED
            zf.writestr(info, member_bytes(name))
