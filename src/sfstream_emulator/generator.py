"""Synthetic values for `generate`: events the org could really send, of a requested size.

Generated events follow three rules:

- every value fits its field (type, length, picklist, numeric range), so a generated
  platform event passes the same validation as one published over REST;
- text and number fields carry a counter that is unique per generated event of an entity
  (`GEN-00000042` in `Order_Number__c`), so keys built from them never collide;
- an event is brought to the requested size, measured as its `data` member in JSON, by
  padding its text fields (long text areas first, then text), never beyond their declared
  length. An event whose text fields cannot reach the size is refused with the largest
  size it can have; a size below an event's natural size leaves it at its natural size.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from sfstream_emulator.org import FieldDef
from sfstream_emulator.values import format_datetime

MAX_PAYLOAD_BYTES: Final = 1_000_000
"""The largest `payload_bytes` accepted: Salesforce refuses event messages over 1 MB."""
DEFAULT_PAYLOAD_BYTES: Final = 1024
_PAD_TYPES: Final = ("textarea", "string")
_FILLER: Final = "x"


class PayloadSizeError(ValueError):
    """A requested event size the emulator cannot or will not produce."""


def check_payload_bytes(payload_bytes: int | None) -> None:
    """Refuse sizes outside 0 to `MAX_PAYLOAD_BYTES`, naming the limit.

    Raises:
        PayloadSizeError: a negative size or one over the limit.
    """
    if payload_bytes is None:
        return
    if payload_bytes < 0:
        raise PayloadSizeError(f"payload_bytes must not be negative (got {payload_bytes})")
    if payload_bytes > MAX_PAYLOAD_BYTES:
        raise PayloadSizeError(
            f"payload_bytes must be at most {MAX_PAYLOAD_BYTES} (1 MB, the largest event "
            f"message Salesforce accepts); got {payload_bytes}"
        )


def text_capacity(field: FieldDef) -> int:
    """How many characters a text value of `field` may have (255 when undeclared)."""
    return field.length or 255


def counter_text(field: FieldDef, n: int) -> str:
    """`GEN-00000042`, or as many trailing digits of the counter as the field holds."""
    text = f"GEN-{n:08d}"
    capacity = text_capacity(field)
    return text if len(text) <= capacity else f"{n:08d}"[-capacity:]


class Sampler:
    """Values of fields for generated events, at emulated time `now` (epoch seconds).

    `reference` gives an id for a lookup field (or None).
    """

    def __init__(self, now: float, reference: Callable[[FieldDef], str | None]) -> None:
        self._now_text = format_datetime(now)
        self._today = datetime.fromtimestamp(now, tz=UTC).date()
        self._reference = reference

    def value(self, field: FieldDef, n: int) -> Any:
        """A value of `field` for the `n`-th generated event; None where no value fits."""
        kind = field.type
        if kind in ("string", "textarea", "encryptedstring", "combobox", "anyType", "json"):
            return counter_text(field, n)
        if kind in ("picklist", "multipicklist"):
            choices = field.picklist
            return choices[n % len(choices)] if choices else counter_text(field, n)
        if kind == "email":
            return _fitting(field, f"gen{n:08d}@example.com")
        if kind == "url":
            return _fitting(field, f"https://example.com/gen/{n:08d}")
        if kind == "phone":
            return _fitting(field, f"+1 555 {n % 10**7:07d}")
        if kind == "boolean":
            return n % 2 == 1
        if kind in ("int", "long"):
            limit = 10**field.precision if field.precision else 2**31 - 1
            return n % limit
        if kind in ("double", "currency", "percent"):
            digits = (field.precision or 18) - (field.scale or 0)
            return n % 10**digits if digits > 0 else 0
        if kind == "date":
            return (self._today - timedelta(days=n % 3650)).isoformat()
        if kind == "datetime":
            return self._now_text
        if kind == "time":
            return f"{n // 3600 % 24:02d}:{n // 60 % 60:02d}:{n % 60:02d}.000Z"
        if kind == "reference":
            return self._reference(field)
        if kind == "base64":
            return base64.b64encode(str(n).encode()).decode()
        return None  # id, address, location: nothing to set


def _fitting(field: FieldDef, text: str) -> str | None:
    return text if len(text) <= text_capacity(field) else None


def pad_fields(fields: list[FieldDef]) -> list[FieldDef]:
    """The fields padding goes into, in order: long text areas, then text, longest first."""
    chosen = [f for f in fields if f.type in _PAD_TYPES]
    return sorted(chosen, key=lambda f: (f.type != "textarea", -text_capacity(f)))


class Padding:
    """The padding of one `generate` call: the filler each pad field gets.

    Every event of a call has nearly the same size without padding: its counter text has
    a fixed width, but a number gains a digit now and then and `false` is a byte longer
    than `true`. `apply` measures such differences against the first event and lengthens
    or shortens the last padded field's filler by as much, so that all events have the
    size asked for.

    Args:
        fields: the pad fields, by name.
        adds: how many filler characters each pad field gets.
        reference_size: the size, as JSON, of the first event's values without padding.
    """

    __slots__ = ("_adjusted", "_fillers", "_room", "fields", "reference_size")

    def __init__(
        self, fields: dict[str, FieldDef], adds: dict[str, int], reference_size: int
    ) -> None:
        self.fields = fields
        self.reference_size = reference_size
        self._fillers = {name: _FILLER * add for name, add in adds.items()}
        padded_names = [name for name, add in adds.items() if add > 0]
        self._adjusted = padded_names[-1] if padded_names else None
        self._room = 0
        """How many characters the adjusted field can still take."""
        if self._adjusted is not None:
            pad = fields[self._adjusted]
            self._room = text_capacity(pad) - len(counter_text(pad, 0)) - adds[pad.name]

    def apply(self, values: dict[str, Any], n: int) -> None:
        """Pad the `n`-th event's `values` in place."""
        delta = self.reference_size - len(orjson.dumps(values)) if self._adjusted else 0
        for name, filler in self._fillers.items():
            text = filler
            if name == self._adjusted and delta:
                text = _FILLER * max(len(filler) + min(delta, self._room), 0)
            start = values.get(name)
            values[name] = (
                start if isinstance(start, str) else counter_text(self.fields[name], n)
            ) + text


def plan_padding(
    entity: str,
    values: dict[str, Any],
    fields: list[FieldDef],
    measure: Callable[[dict[str, Any]], int],
    *,
    payload_bytes: int | None,
    n: int,
) -> Padding:
    """The padding that makes events `payload_bytes` long.

    `values` are the `n`-th event's values without padding, `fields` the pad fields in
    order, `measure` the size of an event's `data` for some values. A pad field missing
    from `values` is added with its counter text.

    Raises:
        PayloadSizeError: `payload_bytes` was given and the pad fields cannot reach it.
    """
    wanted = DEFAULT_PAYLOAD_BYTES if payload_bytes is None else payload_bytes
    trial = dict(values)
    size = measure(trial)
    adds: dict[str, int] = {}
    for pad in fields:
        if size >= wanted:
            break
        current = trial.get(pad.name)
        if not isinstance(current, str):
            trial[pad.name] = current = counter_text(pad, n)
            size = measure(trial)
        room = text_capacity(pad) - len(current)
        # Filler is plain ASCII: each character adds exactly one byte to the JSON.
        add = max(min(room, wanted - size), 0)
        adds[pad.name] = add
        size += add
    if size < wanted and payload_bytes is not None:
        raise PayloadSizeError(
            f"payload_bytes {payload_bytes} is more than {entity} events can carry: at most "
            f"{size} bytes, with every text field full"
        )
    return Padding({f.name: f for f in fields}, adds, len(orjson.dumps(values)))
