"""Change classification: what breaks readers and what does not."""

from __future__ import annotations

from typing import Any

import pytest

from sfstream.schema.compat import diff, is_breaking


def schema(**fields: tuple[Any, str]) -> dict[str, Any]:
    return {
        "properties": {
            name: {"type": json_type, "x-salesforce-type": sf_type}
            for name, (json_type, sf_type) in fields.items()
        }
    }


BASE = schema(
    Name=(["string", "null"], "string"), Count=(["integer", "null"], "int"), Id=("string", "id")
)


@pytest.mark.parametrize(
    ("after", "expected"),
    [
        (
            schema(
                Name=(["string", "null"], "string"),
                Count=(["integer", "null"], "int"),
                Id=("string", "id"),
                Tier=(["string", "null"], "picklist"),
            ),
            [("field_added", "Tier", True)],
        ),
        (
            schema(
                Name=(["string", "null"], "string"),
                Count=(["integer", "null"], "int"),
                Id=("string", "id"),
                Key=("string", "string"),
            ),
            [("field_added", "Key", False)],
        ),
        (
            schema(Name=(["string", "null"], "string"), Id=("string", "id")),
            [("field_removed", "Count", True)],
        ),
        (
            schema(
                Name=(["string", "null"], "string"),
                Count=(["number", "null"], "double"),
                Id=("string", "id"),
            ),
            [("type_changed", "Count", True)],
        ),
        (
            schema(
                Name=(["integer", "null"], "int"),
                Count=(["integer", "null"], "int"),
                Id=("string", "id"),
            ),
            [("type_changed", "Name", False)],
        ),
        (
            schema(
                Name=(["string", "null"], "textarea"),
                Count=(["integer", "null"], "int"),
                Id=("string", "id"),
            ),
            [("type_changed", "Name", True)],
        ),
        (
            schema(
                Name=("string", "string"), Count=(["integer", "null"], "int"), Id=("string", "id")
            ),
            [("nullability_changed", "Name", False)],
        ),
        (
            schema(
                Name=(["string", "null"], "string"),
                Count=(["integer", "null"], "int"),
                Id=(["string", "null"], "id"),
            ),
            [("nullability_changed", "Id", True)],
        ),
    ],
)
def test_classification(after: dict[str, Any], expected: list[tuple[str, str, bool]]) -> None:
    changes = diff(BASE, after)
    assert [(c.kind, c.field, c.compatible) for c in changes] == expected
    assert is_breaking(changes) == any(not ok for _, _, ok in expected)


def test_nested_members_are_compared_by_path() -> None:
    before = {
        "properties": {
            "BillingAddress": {
                "type": ["object", "null"],
                "x-salesforce-type": "address",
                "properties": {"City": {"type": ["string", "null"]}},
            }
        }
    }
    after = {
        "properties": {
            "BillingAddress": {
                "type": ["object", "null"],
                "x-salesforce-type": "address",
                "properties": {
                    "City": {"type": ["string", "null"]},
                    "County": {"type": ["string", "null"]},
                },
            }
        }
    }
    (change,) = diff(before, after)
    assert (change.kind, change.field, change.compatible) == (
        "field_added",
        "BillingAddress.County",
        True,
    )


def test_first_version_has_no_diff_and_identical_has_none() -> None:
    assert diff(None, BASE) == []
    assert diff(BASE, BASE) == []
