"""A `RecordModel` as JSON Schema (draft 2020-12, canonical) and as Avro.

Every Salesforce type maps deliberately (table in docs/schemas.md); the Salesforce type stays
on each property as `x-salesforce-type`. The JSON Schema describes the record's `data` as
the connector writes it: dates, datetimes and times are ISO strings, ids 15 or 18
characters, multi-select picklists `;`-separated strings, compound values objects.

Canonical form: keys sorted, properties sorted, no whitespace (`canonical_bytes`); its
SHA-256 is the schema's fingerprint, so the same definition always gives the same bytes and
the same fingerprint.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Final

import orjson

from sfstream.schema.model import FieldModel, RecordModel

JSON_SCHEMA_DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
ID_PATTERN: Final = "^[a-zA-Z0-9]{15}([a-zA-Z0-9]{3})?$"
_STRINGS: Final = frozenset(
    {
        "string",
        "textarea",
        "phone",
        "picklist",
        "multipicklist",
        "combobox",
        "encryptedstring",
        "json",
    }
)


def _json_type(model: FieldModel) -> dict[str, Any]:
    """The JSON Schema of a value of this field, ignoring nullability."""
    kind = model.sf_type
    node: dict[str, Any]
    if model.fields:
        node = {
            "type": "object",
            "additionalProperties": True,
            "properties": {f.name: _property(f) for f in model.fields},
        }
        required = [f.name for f in model.fields if not f.nullable]
        if required:
            node["required"] = sorted(required)
    elif kind == "array":
        node = {"type": "array", "items": {"type": "string"}}
    elif kind in ("id", "reference"):
        node = {"type": "string", "pattern": ID_PATTERN}
    elif kind == "email":
        node = {"type": "string", "format": "email"}
    elif kind == "url":
        node = {"type": "string", "format": "uri-reference"}
    elif kind in _STRINGS:
        node = {"type": "string"}
    elif kind == "boolean":
        node = {"type": "boolean"}
    elif kind == "int":
        node = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
    elif kind == "long":
        node = {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1}
    elif kind in ("double", "currency", "percent"):
        node = {"type": "number"}
    elif kind == "date":
        node = {"type": "string", "format": "date"}
    elif kind == "datetime":
        node = {"type": "string", "format": "date-time"}
    elif kind == "time":
        node = {"type": "string", "format": "time"}
    elif kind == "base64":
        node = {"type": "string", "contentEncoding": "base64"}
    elif kind in ("address", "location", "complexvalue"):
        node = {"type": "object"}
    else:  # anyType and types Salesforce may add later: any JSON value
        node = {}
    if model.length and (kind in _STRINGS or kind in ("email", "url")):
        node["maxLength"] = model.length
    if model.enum:
        node["enum"] = list(model.enum)
    return node


def _property(model: FieldModel) -> dict[str, Any]:
    node = _json_type(model)
    if model.nullable and "type" in node:
        node["type"] = [node["type"], "null"]
    if model.nullable and "enum" in node:
        node["enum"] = [*node["enum"], None]
    node["x-salesforce-type"] = model.sf_type
    if model.picklist:
        node["x-salesforce-picklist"] = list(model.picklist)
    if model.reference_to:
        node["x-salesforce-reference-to"] = list(model.reference_to)
    if model.precision is not None:
        node["x-salesforce-precision"] = model.precision
    if model.scale is not None:
        node["x-salesforce-scale"] = model.scale
    return node


def to_json_schema(model: RecordModel, subject: str) -> dict[str, Any]:
    """The JSON Schema of the records' `data` for `subject`."""
    required = sorted(f.name for f in model.fields if not f.nullable)
    schema: dict[str, Any] = {
        "$schema": JSON_SCHEMA_DIALECT,
        "$id": f"urn:sfstream:schema:{subject}",
        "title": model.name,
        "type": "object",
        "additionalProperties": True,
        "properties": {f.name: _property(f) for f in model.fields},
        "x-salesforce-kind": model.kind,
    }
    if required:
        schema["required"] = required
    return schema


def canonical_bytes(schema: dict[str, Any]) -> bytes:
    """The canonical serialization: sorted keys, no insignificant whitespace."""
    return orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)


def fingerprint(schema: dict[str, Any]) -> str:
    return hashlib.sha256(canonical_bytes(schema)).hexdigest()


# -- Avro -------------------------------------------------------------------------------------

_AVRO_PRIMITIVE: Final = {
    "boolean": "boolean",
    "int": "int",
    "long": "long",
    "double": "double",
    "currency": "double",
    "percent": "double",
}


def _avro_name(text: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_]", "_", text)
    return name if re.match(r"^[A-Za-z_]", name) else f"_{name}"


def _avro_type(model: FieldModel, path: str) -> Any:
    if model.fields:
        return {
            "type": "record",
            "name": _avro_name(path),
            "fields": [_avro_field(f, f"{path}_{f.name}") for f in model.fields],
        }
    if model.sf_type == "array":
        return {"type": "array", "items": "string"}
    if model.sf_type in ("address", "location", "complexvalue", "anyType"):
        return "string"  # an opaque structure without declared members: carried as JSON text
    return _AVRO_PRIMITIVE.get(model.sf_type, "string")


def _avro_field(model: FieldModel, path: str) -> dict[str, Any]:
    avro_type = _avro_type(model, path)
    entry: dict[str, Any] = {"name": _avro_name(model.name), "sfType": model.sf_type}
    if model.nullable:
        entry["type"] = ["null", avro_type]
        entry["default"] = None
    else:
        entry["type"] = avro_type
    return entry


def to_avro(model: RecordModel, subject: str) -> dict[str, Any]:
    """An Avro record schema of the records' `data` (for Kafka and other Avro users)."""
    return {
        "type": "record",
        "name": _avro_name(model.name),
        "namespace": "sfstream." + ".".join(_avro_name(p) for p in subject.split(".")),
        "doc": f"sfstream subject {subject}",
        "fields": [_avro_field(f, f"{model.name}_{f.name}") for f in model.fields],
    }
