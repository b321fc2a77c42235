"""Salesforce record ids: the 18-character case-safety checksum and the id factory."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream_emulator.ids import EMPTY_ID, IdFactory, checksum_suffix, is_valid_id, to18

BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase
id15 = st.text(alphabet=BASE62, min_size=15, max_size=15)


@pytest.mark.parametrize(
    ("short", "suffix"),
    [
        ("001D000000KnaXj", "IAJ"),  # the Streaming API guide's PushTopic example
        ("000000000000000", "AAA"),
        ("AAAAAAAAAAAAAAA", "555"),
        ("aaaaaaaaaaaaaaa", "AAA"),
        ("A0000B0000C0000", "BBB"),
        ("0000A0000B0000C", "QQQ"),
        ("005D0000001cSZs", "IAM"),
    ],
)
def test_checksum_suffix(short: str, suffix: str) -> None:
    assert checksum_suffix(short) == suffix
    assert to18(short) == short + suffix
    assert is_valid_id(short)
    assert is_valid_id(short + suffix)


def test_to18_keeps_an_18_character_id() -> None:
    assert to18("001D000000KnaXjIAJ") == "001D000000KnaXjIAJ"


@pytest.mark.parametrize("bad", ["", "001", "001D000000KnaX", "001D000000KnaXjI", "x" * 18])
def test_checksum_needs_15_characters(bad: str) -> None:
    with pytest.raises(ValueError, match="15-character id"):
        checksum_suffix(bad)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "001",
        "001D000000KnaXjIA",  # 17 characters
        "001D000000KnaXjIAK",  # wrong checksum
        "001d000000KnaXjIAJ",  # case changed, checksum no longer matches
        "001D000000KnaX-",
        "001D000000KnaX j",
        "001D000000KnaXjIAJ0",
    ],
)
def test_invalid_ids(value: str) -> None:
    assert not is_valid_id(value)


def test_empty_id() -> None:
    assert EMPTY_ID == "000000000000000AAA"
    assert is_valid_id(EMPTY_ID)


@settings(deadline=None)  # no timing assertions
@given(id15)
def test_every_15_character_id_has_a_valid_18_character_form(short: str) -> None:
    full = to18(short)
    assert len(full) == 18
    assert full[:15] == short
    assert is_valid_id(full)
    assert all(c in string.ascii_uppercase + "012345" for c in full[15:])


@settings(deadline=None)  # no timing assertions
@given(id15, st.integers(0, 14))
def test_checksum_detects_a_case_change(short: str, position: int) -> None:
    char = short[position]
    if not char.isalpha():
        return
    flipped = short[:position] + char.swapcase() + short[position + 1 :]
    assert checksum_suffix(flipped) != checksum_suffix(short)
    assert not is_valid_id(flipped + checksum_suffix(short))
    # Case-insensitively equal 18-character ids are the same id when re-cased by the suffix.
    assert to18(short).lower() == (flipped + checksum_suffix(short)).lower()


def test_factory_ids() -> None:
    factory = IdFactory(seed=1)
    made = [factory.new("001") for _ in range(500)]
    assert len(set(made)) == 500
    for record_id in made:
        assert len(record_id) == 18
        assert record_id.startswith("0015g0")
        assert is_valid_id(record_id)
    assert factory.new("a05").startswith("a05")


def test_factory_is_reproducible_with_a_seed() -> None:
    first, second = IdFactory(seed=9), IdFactory(seed=9)
    assert [first.new("001") for _ in range(5)] == [second.new("001") for _ in range(5)]
    assert IdFactory(seed=10).new("001") != IdFactory(seed=9).new("001")


def test_factory_instance() -> None:
    assert IdFactory(instance="Ab", seed=1).new("003").startswith("003Ab")
    with pytest.raises(ValueError, match="two characters"):
        IdFactory(instance="abc")


@pytest.mark.parametrize("prefix", ["", "01", "0011"])
def test_factory_needs_a_3_character_prefix(prefix: str) -> None:
    with pytest.raises(ValueError, match="not 3 characters"):
        IdFactory(seed=1).new(prefix)
