"""Field values: what a REST caller may send for each field type, and how it is stored."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream_emulator.org import FieldDef
from sfstream_emulator.values import FieldValueError, coerce, format_datetime, rest_value


def field(type_: Any, **kwargs: Any) -> FieldDef:
    return FieldDef(name=kwargs.pop("name", "F__c"), type=type_, **kwargs)


def refused(definition: FieldDef, value: Any) -> FieldValueError:
    with pytest.raises(FieldValueError) as caught:
        coerce(definition, value)
    assert caught.value.field == definition.name
    return caught.value


# -- formatting ----------------------------------------------------------------------------------


def test_format_datetime() -> None:
    assert format_datetime(0) == "1970-01-01T00:00:00.000Z"
    assert format_datetime(1_700_000_000.123456) == "2023-11-14T22:13:20.123Z"
    assert format_datetime(1_700_000_000.9999) == "2023-11-14T22:13:20.999Z"


def test_rest_value() -> None:
    stamp = field("datetime")
    assert rest_value(stamp, "2024-01-01T00:00:00.000Z") == "2024-01-01T00:00:00.000+0000"
    assert rest_value(stamp, None) is None
    assert rest_value(field("string"), "ends in Z") == "ends in Z"
    assert rest_value(field("time"), "10:00:00.000Z") == "10:00:00.000Z"


# -- accepted values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "value", "stored"),
    [
        (field("string"), "text", "text"),
        (field("string"), 12, "12"),
        (field("string"), 1.5, "1.5"),
        (field("string"), True, "true"),
        (field("textarea"), "line\nline", "line\nline"),
        (field("email"), "a@b.co", "a@b.co"),
        (field("phone"), 5551234, "5551234"),
        (field("url"), "https://example.com", "https://example.com"),
        (field("picklist", picklist=("A", "B")), "C", "C"),  # unrestricted
        (field("picklist", picklist=("A", "B"), restricted_picklist=True), "B", "B"),
        (field("multipicklist", picklist=("A", "B"), restricted_picklist=True), "A;B", "A;B"),
        (field("boolean"), True, True),
        (field("boolean"), "false", False),
        (field("boolean"), "TRUE", True),
        (field("int"), 42, 42),
        (field("int"), "42", 42),
        (field("int"), 42.0, 42),
        (field("int"), -(2**31), -(2**31)),
        (field("long"), 2**40, 2**40),
        (field("double"), 1.25, 1.25),
        (field("double"), "1.25", 1.25),
        (field("double"), 3, 3),
        (field("currency", precision=18, scale=2), 10.555, 10.55),
        (field("currency", precision=18, scale=2), "12.5", 12.5),
        (field("currency", precision=18, scale=0), 7.0, 7),
        (field("percent", precision=3, scale=0), 99, 99),
        (field("date"), "2024-02-29", "2024-02-29"),
        (field("date"), "2024-02-29T10:00:00Z", "2024-02-29"),
        (field("datetime"), "2024-01-01T00:00:00Z", "2024-01-01T00:00:00.000Z"),
        (field("datetime"), "2024-01-01T00:00:00.123Z", "2024-01-01T00:00:00.123Z"),
        (field("datetime"), "2024-01-01T01:30:00+01:30", "2024-01-01T00:00:00.000Z"),
        (field("datetime"), "2024-01-01T01:00:00.000+0100", "2024-01-01T00:00:00.000Z"),
        (field("datetime"), "2024-01-01T00:00:00", "2024-01-01T00:00:00.000Z"),
        (field("time"), "08:30", "08:30:00.000Z"),
        (field("time"), "08:30:15", "08:30:15.000Z"),
        (field("time"), "08:30:15.5Z", "08:30:15.500Z"),
        (field("time"), "23:59:59.999Z", "23:59:59.999Z"),
        (field("reference"), "001D000000KnaXj", "001D000000KnaXjIAJ"),
        (field("id"), "001D000000KnaXjIAJ", "001D000000KnaXjIAJ"),
        (field("base64"), "aGVsbG8=", "aGVsbG8="),
        (field("anyType"), {"any": "thing"}, {"any": "thing"}),
        (field("json"), '{"a": 1}', '{"a": 1}'),
        (field("encryptedstring", length=20), "secret", "secret"),
    ],
)
def test_accepted(definition: FieldDef, value: Any, stored: Any) -> None:
    result = coerce(definition, value)
    assert result == stored
    assert type(result) is type(stored)


@pytest.mark.parametrize(
    "type_",
    ["string", "email", "picklist", "multipicklist", "reference", "date", "datetime", "int"],
)
def test_null_and_empty_string_are_null(type_: Any) -> None:
    definition = field(type_, picklist=("A",), restricted_picklist=True)
    assert coerce(definition, None) is None
    assert coerce(definition, "") is None


def test_empty_string_is_not_false() -> None:
    # A checkbox has no empty value: "" is not a boolean.
    assert refused(field("boolean"), "").error_code == "JSON_PARSER_ERROR"


# -- refused values ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("definition", "value", "kind", "shown"),
    [
        (field("boolean"), "yes", "VALUE_STRING", "yes"),
        (field("boolean"), 1, "VALUE_NUMBER_INT", "1"),
        (field("int"), "x", "VALUE_STRING", "x"),
        (field("int"), 1.5, "VALUE_NUMBER_FLOAT", "1.5"),
        (field("int"), True, "VALUE_TRUE", "true"),
        (field("int"), 2**31, "VALUE_NUMBER_INT", str(2**31)),
        (field("long"), 2**63, "VALUE_NUMBER_INT", str(2**63)),
        (field("double"), "abc", "VALUE_STRING", "abc"),
        (field("double"), False, "VALUE_FALSE", "false"),
        (field("double"), [1], "START_ARRAY", "["),
        (field("string"), {"a": 1}, "START_OBJECT", "{"),
        (field("string"), ["a"], "START_ARRAY", "["),
        (field("picklist", picklist=("1",)), 1, "VALUE_NUMBER_INT", "1"),
        (field("date"), "2024-02-30", "VALUE_STRING", "2024-02-30"),
        (field("date"), "tomorrow", "VALUE_STRING", "tomorrow"),
        (field("date"), "2024-01-01garbage", "VALUE_STRING", "2024-01-01garbage"),
        (field("date"), 20240101, "VALUE_NUMBER_INT", "20240101"),
        (field("datetime"), "yesterday", "VALUE_STRING", "yesterday"),
        (field("datetime"), 1700000000, "VALUE_NUMBER_INT", "1700000000"),
        (field("time"), "25:00", "VALUE_STRING", "25:00"),
        (field("time"), "8am", "VALUE_STRING", "8am"),
        (field("base64"), 5, "VALUE_NUMBER_INT", "5"),
    ],
)
def test_wrong_json_type(definition: FieldDef, value: Any, kind: str, shown: str) -> None:
    error = refused(definition, value)
    assert error.error_code == "JSON_PARSER_ERROR"
    assert str(error) == (
        f"Cannot deserialize instance of {definition.type} from {kind} value {shown} or "
        "request may be missing a required field"
    )


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(value: float) -> None:
    assert refused(field("double"), value).error_code == "JSON_PARSER_ERROR"


def test_string_too_long() -> None:
    definition = field("string", name="Code__c", length=5)
    assert coerce(definition, "12345") == "12345"
    error = refused(definition, "123456")
    assert error.error_code == "STRING_TOO_LONG"
    assert str(error) == "Code: data value too large: 123456 (max length=5)"
    # Without a length a text field holds 255 characters; a multi-select picklist 4099.
    assert coerce(field("string"), "x" * 255) == "x" * 255
    assert refused(field("string"), "x" * 256).error_code == "STRING_TOO_LONG"
    long_message = str(refused(field("string", label="Label"), "y" * 300))
    assert long_message == f"Label: data value too large: {'y' * 40} (max length=255)"


def test_invalid_email() -> None:
    definition = field("email", name="Email", length=80)
    for bad in ("plain", "a@b", "a b@c.de", "@b.co"):
        error = refused(definition, bad)
        assert error.error_code == "INVALID_EMAIL_ADDRESS"
        assert str(error) == f"Email: invalid email address: {bad}"


def test_restricted_picklists() -> None:
    single = field("picklist", label="Stage", picklist=("Open", "Closed"), restricted_picklist=True)
    error = refused(single, "open")  # values are case-sensitive
    assert error.error_code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST"
    assert str(error) == "Stage: bad value for restricted picklist field: open"
    multi = field("multipicklist", label="Tags", picklist=("A", "B"), restricted_picklist=True)
    assert str(refused(multi, "A;C")) == "Tags: bad value for restricted picklist field: C"


def test_numbers_out_of_range() -> None:
    percent = field("percent", label="Probability (%)", precision=3, scale=0)
    assert coerce(percent, 999) == 999
    error = refused(percent, 1000)
    assert error.error_code == "NUMBER_OUTSIDE_VALID_RANGE"
    assert str(error) == "Probability (%): value outside of valid range on numeric field: 1000"
    money = field("currency", precision=5, scale=2)
    assert coerce(money, 999.99) == 999.99
    assert refused(money, 1000).error_code == "NUMBER_OUTSIDE_VALID_RANGE"
    assert refused(money, -1000.5).error_code == "NUMBER_OUTSIDE_VALID_RANGE"
    count = field("int", label="Employees", precision=8)
    assert coerce(count, 99_999_999) == 99_999_999
    assert str(refused(count, 100_000_000)) == (
        "Employees: value outside of valid range on numeric field: 100000000"
    )


@pytest.mark.parametrize("value", ["xyz", "001D000000KnaX", "001D000000KnaXjIAK", 1, True])
def test_malformed_ids(value: Any) -> None:
    definition = field("reference", name="AccountId", label="Account ID")
    error = refused(definition, value)
    assert error.error_code == "MALFORMED_ID"
    assert str(error) == f"Account ID: id value of incorrect type: {value}"


def test_invalid_base64() -> None:
    error = refused(field("base64", name="Body"), "not base64!")
    assert error.error_code == "JSON_PARSER_ERROR"
    assert str(error) == "Body: invalid base64 content"


@pytest.mark.parametrize("type_", ["address", "location"])
def test_compound_fields_are_read_only(type_: Any) -> None:
    error = refused(field(type_, name="BillingAddress"), {"city": "x"})
    assert error.error_code == "INVALID_FIELD_FOR_INSERT_UPDATE"
    assert str(error).startswith("Unable to create/update fields: BillingAddress.")


# -- properties ----------------------------------------------------------------------------------

moments = st.datetimes(
    min_value=datetime(1971, 1, 1),
    max_value=datetime(2999, 12, 31),
    timezones=st.sampled_from(
        [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(timedelta(hours=-8))]
    ),
)


@settings(deadline=None)  # no timing assertions
@given(moments)
def test_datetimes_are_stored_in_utc_with_milliseconds(moment: datetime) -> None:
    stored = coerce(field("datetime"), moment.isoformat())
    parsed = datetime.fromisoformat(stored.replace("Z", "+00:00"))
    assert stored.endswith("Z")
    assert len(stored) == len("2024-01-01T00:00:00.000Z")
    assert abs((parsed - moment).total_seconds()) < 0.001
    # Stored values are accepted again unchanged, in both the CDC and the REST form.
    assert coerce(field("datetime"), stored) == stored
    assert coerce(field("datetime"), rest_value(field("datetime"), stored)) == stored


@settings(deadline=None)  # no timing assertions
@given(st.dates(min_value=datetime(1900, 1, 1).date()))
def test_dates_round_trip(day: Any) -> None:
    assert coerce(field("date"), day.isoformat()) == day.isoformat()


@settings(deadline=None)  # no timing assertions
@given(st.text(max_size=300))
def test_text_length_limit(value: str) -> None:
    definition = field("string", length=100)
    if len(value) > 100:
        assert refused(definition, value).error_code == "STRING_TOO_LONG"
    else:
        assert coerce(definition, value) == (value or None)


@settings(deadline=None)  # no timing assertions
@given(st.integers())
def test_int_range(value: int) -> None:
    definition = field("int")
    if -(2**31) <= value < 2**31:
        assert coerce(definition, value) == value
        assert coerce(definition, str(value)) == value
    else:
        assert refused(definition, value).error_code == "JSON_PARSER_ERROR"


@pytest.mark.parametrize("value", ["0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-01:00"])
def test_datetimes_outside_the_calendar(value: str) -> None:
    assert refused(field("datetime"), value).error_code == "JSON_PARSER_ERROR"
