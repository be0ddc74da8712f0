"""File names for the catalog tree: sanitising and deterministic collision resolution.

This module owns the rules that turn API strings (project slugs, use cases, STAC item ids) into
directory entries the kernel accepts, and the rule that decides who keeps a name when several
things want the same one. It knows nothing about projects or catalogs: callers hand it claims.

Rules (see :func:`sanitize`): no ``/`` or NUL, no control characters, no lone surrogates (all
become ``_``); surrounding whitespace stripped; never empty, ``.`` or ``..``; at most 255 bytes
of UTF-8, cut on a character boundary.

Collisions (see :func:`assign_names`): claims are ordered by ``(rank, key)``, never by input
order. The first claimant of a name keeps it; every later one gets ``name~<short key>`` (the
shortest of an 8-, 16-character or whole key prefix that is still free), so the same claims
always give the same names.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass

NAME_MAX = 255
"""Linux NAME_MAX: the longest directory entry, in bytes."""

SUFFIX_SEPARATOR = "~"
_REPLACEMENT = "_"
_SHORT_KEY_LENGTHS = (8, 16)
_SUFFIX_MAX = 64
"""Longest suffix in bytes: the wanted name stays the readable part of a long name."""


def _is_unsafe_char(char: str) -> bool:
    """True for characters that must not appear in a name: ``/``, controls, lone surrogates."""
    if char == "/":
        return True
    category = unicodedata.category(char)
    return category in ("Cc", "Cs")


def truncate_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes."""
    encoded = text.encode("utf-8")
    if len(encoded) <= limit:
        return text
    return encoded[:limit].decode("utf-8", "ignore")


def sanitize(text: str) -> str:
    """A valid directory entry name derived from ``text`` (never empty, ``.`` or ``..``)."""
    cleaned = "".join(_REPLACEMENT if _is_unsafe_char(c) else c for c in text.strip())
    cleaned = truncate_utf8(cleaned, NAME_MAX).rstrip()
    if cleaned in ("", ".", ".."):
        # Keep the shape of the original (one or two characters) but make it a real name.
        return _REPLACEMENT * max(len(cleaned), 1)
    return cleaned


def with_suffix(name: str, suffix: str) -> str:
    """``name~suffix``, shortening ``name`` (not the suffix) to stay within NAME_MAX bytes."""
    tail = SUFFIX_SEPARATOR + truncate_utf8(sanitize(suffix), _SUFFIX_MAX).rstrip()
    room = NAME_MAX - len(tail.encode("utf-8"))
    return truncate_utf8(name, room).rstrip() + tail


@dataclass(frozen=True)
class Claim:
    """One thing that wants a name in a directory.

    ``key`` is its stable identity (unique among the claims of one directory); ``rank`` orders
    colliders before the key does, e.g. a creation timestamp so that older entries keep their
    names when newer ones arrive. Unknown ranks sort last.
    """

    key: str
    wanted: str
    rank: float = math.inf


def _avoid_reserved(name: str, is_reserved: Callable[[str], bool]) -> str:
    """Prefix ``_`` until ``name`` is no longer reserved (``_unassigned`` -> ``__unassigned``)."""
    while is_reserved(name):
        name = sanitize(_REPLACEMENT + name)
    return name


def no_reserved_names(_name: str) -> bool:
    """The default reservation rule: every valid name may be taken."""
    return False


def assign_names(
    claims: Iterable[Claim], *, is_reserved: Callable[[str], bool] = no_reserved_names
) -> dict[str, str]:
    """Map each claim's key to a unique, valid name; the result ignores the claims' order."""
    ordered = sorted(claims, key=lambda c: (c.rank, c.key))
    wanted = {c.key: _avoid_reserved(sanitize(c.wanted), is_reserved) for c in ordered}
    names: dict[str, str] = {}
    taken: set[str] = set()
    # Pass 1: every name's first claimant keeps it, so a later `foo~x` never steals `foo~x`
    # from an entry that wanted exactly that.
    for claim in ordered:
        name = wanted[claim.key]
        if name not in taken:
            names[claim.key] = name
            taken.add(name)
    # Pass 2: the others get a suffix from their key.
    for claim in ordered:
        if claim.key not in names:
            name = _suffixed(wanted[claim.key], claim.key, taken)
            names[claim.key] = name
            taken.add(name)
    return names


def _suffixed(base: str, key: str, taken: set[str]) -> str:
    """The first free ``base~<key prefix>``; a counter settles keys that truncate alike."""
    prefixes = [key[:n] for n in _SHORT_KEY_LENGTHS if n < len(key)] + [key]
    for prefix in prefixes:
        candidate = with_suffix(base, prefix)
        if candidate not in taken:
            return candidate
    counter = 2
    while True:
        candidate = with_suffix(base, f"{key[:8]}-{counter}")
        if candidate not in taken:
            return candidate
        counter += 1
