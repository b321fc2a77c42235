"""What changed between two versions of a subject's schema, and whether it breaks readers.

Compatibility is judged the way schema registries' BACKWARD mode does: a consumer that knows
the new schema can still read records written with the previous one.

| change | compatible when |
|---|---|
| `field_added` | the new field is nullable (old records simply lack it) |
| `field_removed` | always (readers of the new schema ignore it) |
| `type_changed` | the JSON type stays, or widens from integer to number |
| `nullability_changed` | the field became nullable |

Nested members of compound fields are compared by dotted path (`BillingAddress.City`).
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

ChangeKind = Literal["field_added", "field_removed", "type_changed", "nullability_changed"]


class Change(msgspec.Struct, frozen=True):
    kind: ChangeKind
    field: str
    before: str | None
    after: str | None
    compatible: bool

    def as_dict(self) -> dict[str, Any]:
        return {
            "change": self.kind,
            "field": self.field,
            "before": self.before,
            "after": self.after,
            "compatible": self.compatible,
        }


class _Shape(msgspec.Struct, frozen=True):
    json_types: frozenset[str]
    sf_type: str
    nullable: bool


def _flatten(schema: dict[str, Any], prefix: str = "") -> dict[str, _Shape]:
    shapes: dict[str, _Shape] = {}
    for name, node in (schema.get("properties") or {}).items():
        path = f"{prefix}{name}"
        raw = node.get("type")
        types = set(raw) if isinstance(raw, list) else ({raw} if isinstance(raw, str) else set())
        nullable = "null" in types
        types.discard("null")
        shapes[path] = _Shape(frozenset(types), str(node.get("x-salesforce-type", "")), nullable)
        if "properties" in node:
            shapes.update(_flatten(node, f"{path}."))
    return shapes


def _describe(shape: _Shape) -> str:
    base = "|".join(sorted(shape.json_types)) or "any"
    return f"{base} ({shape.sf_type})" if shape.sf_type else base


def _type_compatible(before: _Shape, after: _Shape) -> bool:
    if before.json_types == after.json_types:
        return True
    return before.json_types == {"integer"} and after.json_types == {"number"}


def diff(before: dict[str, Any] | None, after: dict[str, Any]) -> list[Change]:
    """The changes from `before` to `after` (none when `before` is None: a first version)."""
    if before is None:
        return []
    old, new = _flatten(before), _flatten(after)
    changes: list[Change] = []
    for path in sorted(set(old) | set(new)):
        was, now = old.get(path), new.get(path)
        if was is None and now is not None:
            changes.append(Change("field_added", path, None, _describe(now), now.nullable))
        elif now is None and was is not None:
            changes.append(Change("field_removed", path, _describe(was), None, True))
        elif was is not None and now is not None:
            if (was.json_types, was.sf_type) != (now.json_types, now.sf_type):
                changes.append(
                    Change(
                        "type_changed",
                        path,
                        _describe(was),
                        _describe(now),
                        _type_compatible(was, now),
                    )
                )
            if was.nullable != now.nullable:
                changes.append(
                    Change(
                        "nullability_changed",
                        path,
                        "nullable" if was.nullable else "required",
                        "nullable" if now.nullable else "required",
                        now.nullable,
                    )
                )
    return changes


def is_breaking(changes: list[Change]) -> bool:
    return any(not c.compatible for c in changes)
