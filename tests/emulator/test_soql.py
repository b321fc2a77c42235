"""The SOQL subset: parsing, matching, ordering and paging."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream_emulator.soql import Query, SoqlError, parse, run


def test_parse_parts() -> None:
    query = parse(
        "select Id, Name, Account.Name from Contact where LastName = 'x' and Age__c > 3 "
        "order by Name desc nulls first limit 10 offset 5"
    )
    assert query.entity == "Contact"
    assert query.fields == ("Id", "Name", "Account.Name")
    assert query.count_only is False
    assert query.where_fields == ("LastName", "Age__c")
    assert query.order_by == ("Name", True, False)
    assert (query.limit, query.offset) == (10, 5)


def test_parse_defaults() -> None:
    query = parse("SELECT Id FROM Account")
    assert query.where is None
    assert query.order_by is None
    assert (query.limit, query.offset) == (None, 0)
    assert query.matches({"Id": "x"})
    assert parse("SELECT Id FROM Account ORDER BY Name").order_by == ("Name", False, False)
    assert parse("SELECT Id FROM Account ORDER BY Name DESC").order_by == ("Name", True, True)
    assert parse("SELECT Id FROM Account ORDER BY Name ASC NULLS LAST").order_by == (
        "Name",
        False,
        True,
    )


def test_count() -> None:
    query = parse("SELECT COUNT() FROM Account WHERE Name != null")
    assert query.count_only
    assert query.fields == ()


def test_keywords_that_are_names() -> None:
    assert parse("SELECT Id FROM Order ORDER BY Id").entity == "Order"
    query = parse("SELECT Id, Limit FROM Quota__c WHERE Limit > 3 ORDER BY Limit LIMIT 1")
    assert query.fields == ("Id", "Limit")
    assert query.matches({"Limit": 4})
    assert not query.matches({"Limit": 2})


@pytest.mark.parametrize(
    ("where", "record", "expected"),
    [
        ("Name = 'acme'", {"Name": "ACME"}, True),
        ("name = 'Acme'", {"NAME": "Acme"}, True),
        ("Name != 'Acme'", {"Name": "Acme"}, False),
        ("Name <> 'Acme'", {"Name": "Other"}, True),
        ("Amount > 100", {"Amount": 100.5}, True),
        ("Amount >= 100", {"Amount": 100}, True),
        ("Amount < 100", {"Amount": 100}, False),
        ("Amount <= 100.0", {"Amount": 100}, True),
        ("Amount > 100", {"Amount": None}, False),
        ("Amount > 100", {"Amount": "text"}, False),
        ("Amount = -5", {"Amount": -5}, True),
        ("Name = null", {"Name": None}, True),
        ("Name = null", {}, True),
        ("Name != null", {"Name": "x"}, True),
        ("IsActive = true", {"IsActive": True}, True),
        ("IsActive = FALSE", {"IsActive": True}, False),
        ("Name LIKE 'ac%'", {"Name": "Acme"}, True),
        ("Name LIKE '%ME'", {"Name": "acme"}, True),
        ("Name LIKE 'a_me'", {"Name": "acme"}, True),
        ("Name LIKE 'a_me'", {"Name": "acmme"}, False),
        ("Name LIKE 'a.c'", {"Name": "abc"}, False),
        ("Name LIKE 'a.c'", {"Name": "a.c"}, True),
        ("Name LIKE '100\\%'", {"Name": "100%"}, True),
        ("Name LIKE '100\\%'", {"Name": "1000"}, False),
        ("Name LIKE 'a\\_b'", {"Name": "axb"}, False),
        ("Name LIKE '%'", {"Name": None}, False),
        ("Name LIKE 'x%'", {"Name": "x\nmore"}, True),
        ("Rating IN ('Hot', 'warm')", {"Rating": "Warm"}, True),
        ("Rating IN ('Hot')", {"Rating": None}, False),
        ("Rating NOT IN ('Hot')", {"Rating": "Cold"}, True),
        ("Rating NOT IN ('Hot', null)", {"Rating": None}, False),
        ("Size IN (1, 2)", {"Size": 2}, True),
        ("Skills INCLUDES ('sql')", {"Skills": "Python;SQL"}, True),
        ("Skills INCLUDES ('Java', 'Kafka')", {"Skills": "Kafka"}, True),
        ("Skills INCLUDES ('SQL')", {"Skills": None}, False),
        ("Skills EXCLUDES ('SQL')", {"Skills": "Python"}, True),
        ("Skills EXCLUDES ('SQL')", {"Skills": "SQL;Python"}, False),
        ("Born = 2024-02-29", {"Born": "2024-02-29"}, True),
        ("Born > 2024-01-01", {"Born": "2024-02-29"}, True),
        ("At = 2024-01-01T01:00:00+01:00", {"At": "2024-01-01T00:00:00.000Z"}, True),
        ("At = 2024-01-01T01:00:00+0100", {"At": "2024-01-01T00:00:00.000Z"}, True),
        ("At > 2024-01-01T00:00:00Z", {"At": "2024-01-01T00:00:00.001Z"}, True),
        ("At < 2024-01-01T00:00:00.5Z", {"At": "2024-01-01T00:00:00.400Z"}, True),
        ("Name = 'O\\'Brien'", {"Name": "O'Brien"}, True),
        ("Name = 'a\\nb'", {"Name": "a\nb"}, True),
        ("Name = 'back\\\\slash'", {"Name": "back\\slash"}, True),
        ("A = 1 OR B = 1 AND C = 1", {"A": 1, "B": 0, "C": 0}, True),
        ("A = 1 OR B = 1 AND C = 1", {"A": 0, "B": 1, "C": 0}, False),
        ("(A = 1 OR B = 1) AND C = 1", {"A": 1, "B": 0, "C": 0}, False),
        ("NOT A = 1", {"A": 1}, False),
        ("NOT (A = 1 OR B = 1)", {"A": 0, "B": 0}, True),
        ("NOT NOT A = 1", {"A": 1}, True),
        ("Account.Name = 'Acme'", {"Account.Name": "acme"}, True),
    ],
)
def test_where(where: str, record: dict[str, Any], expected: bool) -> None:
    assert parse(f"SELECT Id FROM X WHERE {where}").matches(record) is expected


def test_where_fields_list_every_condition() -> None:
    query = parse(
        "SELECT Id FROM X WHERE (A = 1 OR B IN (2)) AND NOT C LIKE 'x' AND D INCLUDES ('y')"
    )
    assert query.where_fields == ("A", "B", "C", "D")


ROWS: list[dict[str, Any]] = [
    {"Name": "b", "Rank": 2},
    {"Name": "A", "Rank": None},
    {"Name": "c", "Rank": 1},
    {"Name": "D", "Rank": 3},
]


@pytest.mark.parametrize(
    ("clause", "names"),
    [
        ("ORDER BY Name", ["A", "b", "c", "D"]),
        ("ORDER BY Name DESC", ["D", "c", "b", "A"]),
        ("ORDER BY Rank", ["A", "c", "b", "D"]),
        ("ORDER BY Rank NULLS LAST", ["c", "b", "D", "A"]),
        ("ORDER BY Rank DESC", ["D", "b", "c", "A"]),
        ("ORDER BY Rank DESC NULLS FIRST", ["A", "D", "b", "c"]),
        ("ORDER BY Name LIMIT 2", ["A", "b"]),
        ("ORDER BY Name LIMIT 2 OFFSET 3", ["D"]),
        ("ORDER BY Name OFFSET 1", ["b", "c", "D"]),
        ("ORDER BY Name LIMIT 0", []),
        ("WHERE Rank > 1 ORDER BY Name", ["b", "D"]),
        ("", ["b", "A", "c", "D"]),
    ],
)
def test_run(clause: str, names: list[str]) -> None:
    query = parse(f"SELECT Name FROM X {clause}")
    assert [r["Name"] for r in run(query, ROWS)] == names


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "SELECT",
        "SELECT Id",
        "SELECT Id FROM",
        "SELEKT Id FROM X",
        "SELECT , FROM X",
        "SELECT Id FROM X WHERE",
        "SELECT Id FROM X WHERE A",
        "SELECT Id FROM X WHERE A =",
        "SELECT Id FROM X WHERE A = B",
        "SELECT Id FROM X WHERE A NOT LIKE 'x'",
        "SELECT Id FROM X WHERE A LIKE 3",
        "SELECT Id FROM X WHERE A IN ()",
        "SELECT Id FROM X WHERE A IN ('a'",
        "SELECT Id FROM X WHERE (A = 1",
        "SELECT Id FROM X ORDER Name",
        "SELECT Id FROM X ORDER BY",
        "SELECT Id FROM X ORDER BY Name NULLS",
        "SELECT Id FROM X LIMIT",
        "SELECT Id FROM X LIMIT 1.5",
        "SELECT Id FROM X LIMIT -1",
        "SELECT Id FROM X LIMIT 'a'",
        "SELECT Id FROM X OFFSET 1 LIMIT 1",
        "SELECT Id FROM X extra",
        "SELECT Id FROM X WHERE A = 'unterminated",
        "SELECT Id FROM X WHERE A = 1 ;",
        "SELECT COUNT(Id FROM X",
        "SELECT COUNT(), Name FROM X",
        "SELECT Id FROM X WHERE A = 1 AND",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(SoqlError) as caught:
        parse(text)
    assert caught.value.error_code == "MALFORMED_QUERY"
    assert str(caught.value)


def test_error_names_the_bad_token() -> None:
    with pytest.raises(SoqlError, match="unexpected token: 'SELEKT'"):
        parse("SELEKT Id FROM X")
    with pytest.raises(SoqlError, match="unexpected token: 'extra'"):
        parse("SELECT Id FROM X extra")


# -- properties ---------------------------------------------------------------------------------

_TEXT = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=20)


def _quoted(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n")
    return f"'{escaped}'"


@settings(deadline=None)  # no timing assertions
@given(_TEXT)
def test_string_literal_round_trip(value: str) -> None:
    query = parse(f"SELECT Id FROM X WHERE Name = {_quoted(value)}")
    assert query.matches({"Name": value})
    assert query.matches({"Name": value.upper()}) == (value.upper().lower() == value.lower())


def _like_literal(value: str) -> str:
    """SOQL source text of a LIKE pattern matching `value` literally (quotes not included)."""
    return _quoted(value)[1:-1].replace("%", "\\%").replace("_", "\\_")


@settings(deadline=None)  # no timing assertions
@given(_TEXT)
def test_like_without_wildcards_is_equality(value: str) -> None:
    query = parse(f"SELECT Id FROM X WHERE Name LIKE '{_like_literal(value)}'")
    assert query.matches({"Name": value})
    if value.isascii():
        assert query.matches({"Name": value.swapcase()})  # LIKE ignores case
    assert not query.matches({"Name": value + "x"})


@settings(deadline=None)  # no timing assertions
@given(_TEXT, _TEXT)
def test_like_prefix(prefix: str, rest: str) -> None:
    query = parse(f"SELECT Id FROM X WHERE Name LIKE '{_like_literal(prefix)}%'")
    assert query.matches({"Name": prefix + rest})
    assert query.matches({"Name": prefix}) is True


@settings(deadline=None)  # no timing assertions
@given(
    st.lists(st.one_of(st.none(), st.integers(-100, 100)), max_size=30),
    st.booleans(),
    st.integers(0, 40),
    st.integers(0, 40),
)
def test_run_orders_and_pages(
    values: list[int | None], descending: bool, limit: int, offset: int
) -> None:
    rows = [{"N": v, "I": i} for i, v in enumerate(values)]
    direction = "DESC" if descending else "ASC"
    query = parse(f"SELECT I FROM X ORDER BY N {direction} LIMIT {limit} OFFSET {offset}")
    result = run(query, rows)
    full = run(parse(f"SELECT I FROM X ORDER BY N {direction}"), rows)
    assert result == full[offset : offset + limit]
    present = [r["N"] for r in full if r["N"] is not None]
    assert present == sorted(present, reverse=descending)
    nulls = [i for i, r in enumerate(full) if r["N"] is None]
    count = len(nulls)
    # Nulls come first ascending and last descending, as in Salesforce.
    expected = list(range(len(full) - count, len(full))) if descending else list(range(count))
    assert nulls == expected


@settings(deadline=None)  # no timing assertions
@given(st.integers(-(10**6), 10**6), st.integers(-(10**6), 10**6))
def test_numeric_comparisons(actual: int, bound: int) -> None:
    record = {"N": actual}
    for op, expected in (
        ("=", actual == bound),
        ("!=", actual != bound),
        ("<", actual < bound),
        ("<=", actual <= bound),
        (">", actual > bound),
        (">=", actual >= bound),
    ):
        assert parse(f"SELECT Id FROM X WHERE N {op} {bound}").matches(record) is expected


def test_query_is_a_value() -> None:
    query = parse("SELECT Id FROM X")
    assert isinstance(query, Query)
    assert query.text == "SELECT Id FROM X"
