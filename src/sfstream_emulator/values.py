"""Field values: checking what a REST caller sends, and formatting what the org returns.

Values are stored in the form change events carry them: datetimes as ISO-8601 UTC strings
with milliseconds and `Z`, dates as `YYYY-MM-DD`, times as `HH:MM:SS.sssZ`, multi-select
picklists as `;`-separated strings, ids in their 18-character form. The REST API writes
datetimes with a `+0000` offset instead, which `rest_value` applies.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from datetime import UTC, date, datetime, time
from typing import Any, Final

from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.org import FieldDef

_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
_DATE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}(?:T.*)?$")
_TIME: Final = re.compile(r"^(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,3}))?)?Z?$")
_TEXT_TYPES: Final = frozenset(
    {"string", "textarea", "phone", "url", "combobox", "encryptedstring", "json", "email"}
)


class FieldValueError(ValueError):
    """A value Salesforce would refuse; carries the REST `errorCode`."""

    def __init__(self, error_code: str, message: str, field: str) -> None:
        super().__init__(message)
        self.error_code = error_code
        self.field = field


def format_datetime(epoch_s: float) -> str:
    """`2024-05-01T12:30:00.000Z`, the form change events and platform events use."""
    return _format_moment(datetime.fromtimestamp(epoch_s, tz=UTC))


def _format_moment(moment: datetime) -> str:
    # From the datetime itself, not from a float timestamp, which loses the milliseconds of
    # dates far from 1970.
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def rest_value(field: FieldDef, value: Any) -> Any:
    """The value as the REST API returns it (datetimes with a `+0000` offset)."""
    if field.type == "datetime" and isinstance(value, str) and value.endswith("Z"):
        return value[:-1] + "+0000"
    return value


def _bad_type(field: FieldDef, value: Any) -> FieldValueError:
    return FieldValueError(
        "JSON_PARSER_ERROR",
        f"Cannot deserialize instance of {field.type} from {_json_kind(value)} value "
        f"{_json_token(value)} or request may be missing a required field",
        field.name,
    )


def _json_token(value: Any) -> str:
    """The value as the JSON parser names it: the text itself, or `[` / `{`."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "["
    if isinstance(value, dict):
        return "{"
    return str(value)


def _json_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "VALUE_TRUE" if value else "VALUE_FALSE"
    if isinstance(value, str):
        return "VALUE_STRING"
    if isinstance(value, int):
        return "VALUE_NUMBER_INT"
    if isinstance(value, float):
        return "VALUE_NUMBER_FLOAT"
    if isinstance(value, list):
        return "START_ARRAY"
    return "START_OBJECT"


def coerce(field: FieldDef, value: Any) -> Any:
    """Check `value` for `field` and return it in stored form.

    Raises:
        FieldValueError: with the errorCode and message Salesforce gives for such a value.
    """
    if value is None:
        return None
    kind = field.type
    if value == "" and kind not in ("boolean", "anyType"):
        # Salesforce stores no empty strings: "" is null, for every kind of field.
        return None
    if kind in _TEXT_TYPES or kind in ("picklist", "multipicklist"):
        if not isinstance(value, str):
            if isinstance(value, bool | int | float) and kind not in ("picklist",):
                value = str(value).lower() if isinstance(value, bool) else str(value)
            else:
                raise _bad_type(field, value)
        return _text(field, value)
    if kind == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
        raise _bad_type(field, value)
    if kind in ("int", "long"):
        return _integer(field, value)
    if kind in ("double", "currency", "percent"):
        return _number(field, value)
    if kind == "date":
        return _date(field, value)
    if kind == "datetime":
        return _datetime(field, value)
    if kind == "time":
        return _time(field, value)
    if kind in ("id", "reference"):
        if not isinstance(value, str) or not is_valid_id(value):
            raise FieldValueError(
                "MALFORMED_ID",
                f"{field.display_label}: id value of incorrect type: {value}",
                field.name,
            )
        return to18(value)
    if kind == "base64":
        if not isinstance(value, str):
            raise _bad_type(field, value)
        try:
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise FieldValueError(
                "JSON_PARSER_ERROR", f"{field.name}: invalid base64 content", field.name
            ) from exc
        return value
    if kind in ("address", "location"):
        raise FieldValueError(
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            f"Unable to create/update fields: {field.name}. Please check the security settings "
            "of this field and verify that it is read/write for your profile or permission set.",
            field.name,
        )
    return value


def _text(field: FieldDef, value: str) -> str:
    limit = field.length or (4099 if field.type == "multipicklist" else 255)
    if len(value) > limit:
        raise FieldValueError(
            "STRING_TOO_LONG",
            f"{field.display_label}: data value too large: {value[:40]} (max length={limit})",
            field.name,
        )
    if field.type == "email" and value and not _EMAIL.match(value):
        raise FieldValueError(
            "INVALID_EMAIL_ADDRESS",
            f"{field.display_label}: invalid email address: {value}",
            field.name,
        )
    if field.restricted_picklist and field.type in ("picklist", "multipicklist"):
        chosen = value.split(";") if field.type == "multipicklist" else [value]
        for item in chosen:
            if item not in field.picklist:
                raise FieldValueError(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    f"{field.display_label}: bad value for restricted picklist field: {item}",
                    field.name,
                )
    return value


def _integer(field: FieldDef, value: Any) -> int:
    if isinstance(value, bool):
        raise _bad_type(field, value)
    number: int | None = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, str):
        try:
            number = int(value)
        except ValueError:
            number = None
    bits = 31 if field.type == "int" else 63
    if number is None or not -(2**bits) <= number < 2**bits:
        raise _bad_type(field, value)
    if field.precision is not None and abs(number) >= 10**field.precision:
        raise FieldValueError(
            "NUMBER_OUTSIDE_VALID_RANGE",
            f"{field.display_label}: value outside of valid range on numeric field: {number}",
            field.name,
        )
    return number


def _number(field: FieldDef, value: Any) -> float | int:
    if isinstance(value, bool):
        raise _bad_type(field, value)
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError as exc:
            raise _bad_type(field, value) from exc
    if not isinstance(value, int | float) or (
        isinstance(value, float) and not math.isfinite(value)
    ):
        raise _bad_type(field, value)
    if field.precision is not None:
        scale = field.scale or 0
        if abs(value) >= 10 ** (field.precision - scale):
            raise FieldValueError(
                "NUMBER_OUTSIDE_VALID_RANGE",
                f"{field.display_label}: value outside of valid range on numeric field: {value}",
                field.name,
            )
        if scale == 0 and isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, float):
            return round(value, scale)
    result: float | int = value
    return result


def _date(field: FieldDef, value: Any) -> str:
    if isinstance(value, str) and _DATE.match(value):
        try:
            return date.fromisoformat(value[:10]).isoformat()
        except ValueError:
            pass
    raise _bad_type(field, value)


def _datetime(field: FieldDef, value: Any) -> str:
    if isinstance(value, str):
        text = value.strip()
        if re.search(r"[+-]\d{4}$", text):
            text = f"{text[:-2]}:{text[-2:]}"
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            moment = None
        if moment is not None:
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            try:
                return _format_moment(moment)
            except OverflowError:  # e.g. year 1 with a positive offset
                pass
    raise _bad_type(field, value)


def _time(field: FieldDef, value: Any) -> str:
    if isinstance(value, str):
        match = _TIME.match(value.strip())
        if match:
            hour, minute = int(match[1]), int(match[2])
            second = int(match[3] or 0)
            millis = int((match[4] or "0").ljust(3, "0"))
            try:
                time(hour, minute, second)
            except ValueError:
                pass
            else:
                return f"{hour:02d}:{minute:02d}:{second:02d}.{millis:03d}Z"
    raise _bad_type(field, value)
