"""Salesforce-shaped record ids.

A Salesforce id is 15 case-sensitive characters: a 3-character key prefix naming the object
type, then instance and counter characters. The 18-character form appends a 3-character
checksum that encodes which of the first 15 characters are upper case, so the id survives
case-insensitive systems. The emulator always hands out 18-character ids, as the REST API does.
"""

from __future__ import annotations

import secrets
import string
from itertools import count
from typing import Final

_BASE62: Final = string.digits + string.ascii_uppercase + string.ascii_lowercase
_CHECKSUM_ALPHABET: Final = string.ascii_uppercase + "012345"
_UPPER_FLAGS: Final = str.maketrans(
    {c: "1" if c in string.ascii_uppercase else "0" for c in string.printable}
)
EMPTY_ID: Final = "000000000000000AAA"
"""The id Salesforce uses in `GAP_OVERFLOW` change events, which name no record."""


def checksum_suffix(id15: str) -> str:
    """Return the 3-character case-safety suffix of a 15-character id."""
    if len(id15) != 15:
        raise ValueError(f"a 15-character id is required, got {len(id15)} characters")
    flags = id15.translate(_UPPER_FLAGS)  # "1" where upper case, "0" elsewhere
    return "".join(
        _CHECKSUM_ALPHABET[int(flags[start : start + 5][::-1], 2)] for start in (0, 5, 10)
    )


def to18(record_id: str) -> str:
    """Return the 18-character form of a 15- or 18-character id."""
    if len(record_id) == 18:
        return record_id
    return record_id + checksum_suffix(record_id)


def is_valid_id(value: str) -> bool:
    """Whether `value` is a well-formed 15- or 18-character id (checksum verified)."""
    if len(value) not in (15, 18) or any(c not in _BASE62 for c in value):
        return False
    return len(value) == 15 or checksum_suffix(value[:15]) == value[15:]


def _base62(number: int, width: int) -> str:
    digits = []
    while number:
        number, rem = divmod(number, 62)
        digits.append(_BASE62[rem])
    return "".join(reversed(digits)).rjust(width, "0")


class IdFactory:
    """Hands out unique 18-character ids per key prefix.

    The instance part is fixed per factory; the counter starts at a random point so that ids
    from two emulator runs rarely collide, which keeps stale ids in a client's state visibly
    unknown rather than silently matching a new record.
    """

    def __init__(self, instance: str = "5g", seed: int | None = None) -> None:
        if len(instance) != 2:
            raise ValueError("the instance part of an id is two characters")
        self._instance = instance
        start = seed if seed is not None else secrets.randbelow(62**5)
        self._counter = count(start * 1000 + 1)

    def new(self, key_prefix: str) -> str:
        """Return a fresh 18-character id for the object whose key prefix is `key_prefix`."""
        if len(key_prefix) != 3:
            raise ValueError(f"key prefix {key_prefix!r} is not 3 characters")
        id15 = f"{key_prefix}{self._instance}0{_base62(next(self._counter), 9)}"
        return to18(id15)
