"""Names: every string becomes a valid entry; collisions settle the same way in any order."""

from __future__ import annotations

import random
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pixxelfs.catalog.names import NAME_MAX, Claim, assign_names, sanitize, with_suffix


def assert_valid_name(name: str) -> None:
    encoded = name.encode("utf-8")  # raises on lone surrogates
    assert 0 < len(encoded) <= NAME_MAX
    assert name not in (".", "..")
    assert "/" not in name
    assert "\x00" not in name
    assert not any(unicodedata.category(c) == "Cc" for c in name)
    assert name == name.strip()


@settings(deadline=None)
@given(st.text())
def test_any_text_sanitises_to_a_valid_name(text: str) -> None:
    assert_valid_name(sanitize(text))


@settings(deadline=None)
@given(st.text())
def test_sanitise_is_idempotent(text: str) -> None:
    once = sanitize(text)
    assert sanitize(once) == once


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a/b", "a_b"),
        ("../../etc", ".._.._etc"),
        ("nul\x00byte", "nul_byte"),
        ("tab\there\x1b[31m", "tab_here_[31m"),
        ("  padded \n", "padded"),
        ("lone\ud800surrogate", "lone_surrogate"),
        ("", "_"),
        ("   ", "_"),
        (".", "_"),
        ("..", "__"),
        ("...", "..."),
        ("FF02_001234_20250611_L2A", "FF02_001234_20250611_L2A"),
    ],
)
def test_sanitise_examples(text: str, expected: str) -> None:
    assert sanitize(text) == expected


def test_long_names_are_cut_on_a_character_boundary() -> None:
    text = "é" * 200  # 400 bytes of two-byte characters
    name = sanitize(text)
    assert len(name.encode("utf-8")) == 254
    assert name == "é" * 127


def test_suffix_survives_truncation_of_a_full_length_name() -> None:
    name = with_suffix("x" * NAME_MAX, "abcdef12")
    assert_valid_name(name)
    assert name.endswith("~abcdef12")
    assert name.startswith("x" * 200)


claims_strategy = st.dictionaries(
    keys=st.text(min_size=1, max_size=20),
    values=st.tuples(
        st.sampled_from(["farm", "farm ", "x" * 300, "a/b", "a_b", ".", "_unassigned", ""])
        | st.text(max_size=12),
        st.sampled_from([1.0, 2.0, float("inf")]),
    ),
    max_size=12,
).map(lambda d: [Claim(key, wanted, rank) for key, (wanted, rank) in d.items()])


@settings(deadline=None)
@given(claims_strategy, st.randoms(use_true_random=False))
def test_assignment_is_unique_valid_and_order_independent(
    claims: list[Claim], rnd: random.Random
) -> None:
    names = assign_names(claims)
    shuffled = list(claims)
    rnd.shuffle(shuffled)
    assert assign_names(shuffled) == names
    assert set(names) == {c.key for c in claims}
    assert len(set(names.values())) == len(claims)
    for name in names.values():
        assert_valid_name(name)


@settings(deadline=None)
@given(claims_strategy)
def test_an_uncontested_name_is_kept(claims: list[Claim]) -> None:
    names = assign_names(claims)
    wanted = [sanitize(c.wanted) for c in claims]
    for claim, name in zip(claims, wanted, strict=True):
        if wanted.count(name) == 1:
            assert names[claim.key] == name


def test_oldest_claim_keeps_the_name_then_the_smallest_key() -> None:
    claims = [
        Claim("zzz-newest", "farm", rank=3.0),
        Claim("bbb-old", "farm", rank=1.0),
        Claim("aaa-old", "farm", rank=1.0),
        Claim("ccc-unknown", "farm"),
    ]
    names = assign_names(claims)
    assert names["aaa-old"] == "farm"
    assert names["bbb-old"] == "farm~bbb-old"
    assert names["zzz-newest"] == "farm~zzz-newe"
    assert names["ccc-unknown"] == "farm~ccc-unkn"


def test_keys_sharing_a_prefix_get_longer_suffixes() -> None:
    keys = [f"{'k' * 70}{i}" for i in range(5)]
    names = assign_names(Claim(key, "scene") for key in keys)
    assert len(set(names.values())) == 5
    assert names[keys[0]] == "scene"
    assert names[keys[1]] == "scene~" + "k" * 8
    for name in names.values():
        assert_valid_name(name)


def test_a_suffix_never_takes_a_name_someone_wanted() -> None:
    names = assign_names([Claim("a", "farm"), Claim("b", "farm"), Claim("c", "farm~b")])
    assert names["c"] == "farm~b"
    assert names["b"] not in ("farm", "farm~b")


def test_reserved_names_get_a_prefix() -> None:
    def reserved(name: str) -> bool:
        return name == "_unassigned" or name.startswith(".pixxelfs")

    claims = [Claim("p1", "_unassigned"), Claim("p2", ".pixxelfs-cache"), Claim("p3", "ok")]
    names = assign_names(claims, is_reserved=reserved)
    assert names == {"p1": "__unassigned", "p2": "_.pixxelfs-cache", "p3": "ok"}
