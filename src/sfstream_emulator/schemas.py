"""Event schemas as `eventSchema` serves them, and the schema ids events carry.

Salesforce describes every platform event and change event with an Avro schema. The REST
resources `sobjects/{Event}/eventSchema` and `event/eventSchema/{id}` return it in one of two
forms (query parameter `payloadFormat`):

- `EXPANDED` (default): a JSON "expanded-record" wrapping the whole CometD message
  (`data.schema`, `data.payload`, `data.event.replayId`, `channel`); values are JSON values,
  so datetimes are strings.
- `COMPACT`: a strict Avro record of the payload alone, as used to decode binary events;
  datetimes are epoch milliseconds.

The schema id is a digest of the COMPACT schema, so it changes exactly when a field is added,
removed or retyped, which is when Salesforce changes it.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any, Final, Literal

import orjson

from sfstream_emulator.ids import to18
from sfstream_emulator.org import EventDef, FieldDef, ObjectDef, component_key

PayloadFormat = Literal["EXPANDED", "COMPACT"]
NAMESPACE: Final = "com.sforce.eventbus"
CHANGE_TYPES: Final = (
    "CREATE",
    "UPDATE",
    "DELETE",
    "UNDELETE",
    "GAP_CREATE",
    "GAP_UPDATE",
    "GAP_DELETE",
    "GAP_UNDELETE",
    "GAP_OVERFLOW",
    "SNAPSHOT",
)
# Fields a change event never carries (Salesforce docs: "Change Event Body Fields").
CDC_EXCLUDED: Final = frozenset({"IsDeleted", "SystemModstamp"})

_DOC_TYPE: Final = {
    "id": "Id",
    "string": "Text",
    "textarea": "TextArea",
    "email": "Email",
    "phone": "Phone",
    "url": "Url",
    "picklist": "Picklist",
    "multipicklist": "MultiselectPicklist",
    "combobox": "Combobox",
    "boolean": "Checkbox",
    "int": "Number",
    "long": "Number",
    "double": "Number",
    "currency": "Currency",
    "percent": "Percent",
    "date": "Date",
    "datetime": "DateTime",
    "time": "Time",
    "reference": "EntityId",
    "base64": "Base64",
    "encryptedstring": "EncryptedText",
    "address": "Address",
    "location": "Location",
    "anyType": "AnyType",
    "json": "Json",
}


def _avro_primitive(field: FieldDef, payload_format: PayloadFormat) -> str:
    kind = field.type
    if kind == "boolean":
        return "boolean"
    if kind == "int":
        return "int"
    if kind == "long":
        return "long"
    if kind in ("double", "currency", "percent"):
        return "double"
    if payload_format == "COMPACT":
        if kind in ("datetime", "time"):
            return "long"
        if kind == "date":
            return "int"
    return "string"


def custom_field_id(entity: str, field: str) -> str:
    """A stable 18-character `00N` id for a custom field, as used in schema docs."""
    digest = hashlib.sha256(f"{entity}.{field}".encode()).digest()
    alphabet = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    body = "".join(alphabet[b % 62] for b in digest[:10])
    return to18(f"00N5g{body}")


def _doc(entity: str, field: FieldDef) -> str:
    kind = _DOC_TYPE[field.type]
    if field.system:
        stem = (
            field.name[:-2]
            if field.name.endswith("Id") and field.type == "reference"
            else (field.name)
        )
        return f"{stem}:{kind}"
    if field.custom:
        return f"Data:{kind}:{custom_field_id(entity, field.name)}"
    return f"Data:{kind}"


def _compound_record_name(compound: FieldDef) -> str:
    return {"address": "Address", "location": "Location"}.get(compound.type, "PersonName")


def _compound_record(
    defn: ObjectDef | EventDef, compound: FieldDef, parts: list[FieldDef], fmt: PayloadFormat
) -> dict[str, Any]:
    # No "namespace" of its own: the record lives in the enclosing `com.sforce.eventbus`
    # namespace, so a second compound of the same kind can refer to it by its bare name
    # (`"Address"`), which every Avro implementation resolves. A named type may be defined
    # only once per schema: BillingAddress defines `Address`, ShippingAddress refers to it.
    return {
        "type": "record",
        "name": _compound_record_name(compound),
        "fields": [
            {
                "name": component_key(compound, part),
                "type": ["null", _avro_primitive(part, fmt)],
                "doc": _doc(defn.name, part),
                "default": None,
            }
            for part in parts
        ],
    }


def _header_record() -> dict[str, Any]:
    string_array = {"type": "array", "items": "string"}
    return {
        "type": "record",
        "name": "ChangeEventHeader",
        "namespace": "",
        "fields": [
            {"name": "entityName", "type": "string"},
            {"name": "recordIds", "type": string_array},
            {
                "name": "changeType",
                "type": {
                    "type": "enum",
                    "name": "ChangeType",
                    "namespace": NAMESPACE,
                    "symbols": list(CHANGE_TYPES),
                },
            },
            {"name": "changeOrigin", "type": "string"},
            {"name": "transactionKey", "type": "string"},
            {"name": "sequenceNumber", "type": "int"},
            {"name": "commitTimestamp", "type": "long"},
            {"name": "commitNumber", "type": "long"},
            {"name": "commitUser", "type": "string"},
            {"name": "nulledFields", "type": string_array},
            {"name": "diffFields", "type": string_array},
            {"name": "changedFields", "type": string_array},
        ],
    }


def change_event_fields(obj: ObjectDef) -> list[tuple[FieldDef, list[FieldDef]]]:
    """The top-level fields of `obj`'s change event, each with its compound components."""
    compounds = {f.compound_field_name for f in obj.fields if f.compound_field_name}
    result = []
    for field in obj.top_level_fields():
        if field.name in CDC_EXCLUDED or field.calculated or field.name == "Id":
            continue
        parts = obj.compound_parts(field.name) if field.name in compounds else []
        result.append((field, parts))
    return result


def payload_fields(defn: ObjectDef | EventDef, fmt: PayloadFormat) -> list[dict[str, Any]]:
    """Avro field entries of the payload record (change event or platform event)."""
    entries: list[dict[str, Any]] = []
    if isinstance(defn, ObjectDef):
        entries.append(
            {"name": "ChangeEventHeader", "type": _header_record(), "doc": "Data:ComplexValueType"}
        )
        defined: set[str] = set()
        for field, parts in change_event_fields(defn):
            if parts:
                record_name = _compound_record_name(field)
                if record_name in defined:
                    avro_type: Any = ["null", record_name]
                else:
                    defined.add(record_name)
                    avro_type = ["null", _compound_record(defn, field, parts, fmt)]
            else:
                avro_type = ["null", _avro_primitive(field, fmt)]
            entries.append(
                {
                    "name": field.name,
                    "type": avro_type,
                    "doc": _doc(defn.name, field),
                    "default": None,
                }
            )
        return entries
    for field in defn.fields:
        if field.name in ("ReplayId", "EventUuid"):
            continue  # carried in data.event, not in the payload
        primitive = _avro_primitive(field, fmt)
        if field.nillable:
            entries.append(
                {
                    "name": field.name,
                    "type": ["null", primitive],
                    "doc": _doc(defn.name, field),
                    "default": None,
                }
            )
        else:
            entries.append({"name": field.name, "type": primitive, "doc": _doc(defn.name, field)})
    return entries


def event_name(defn: ObjectDef | EventDef) -> str:
    """`AccountChangeEvent` for an object, the event's own name for a platform event."""
    return defn.change_event_name if isinstance(defn, ObjectDef) else defn.name


def event_schema(defn: ObjectDef | EventDef, fmt: PayloadFormat = "EXPANDED") -> dict[str, Any]:
    """The Avro schema document `eventSchema` returns for `defn`."""
    name = event_name(defn)
    fields = payload_fields(defn, fmt)
    if fmt == "COMPACT":
        return {"type": "record", "name": name, "namespace": NAMESPACE, "fields": fields}
    event_fields: list[dict[str, Any]] = [{"name": "replayId", "type": "long"}]
    if isinstance(defn, EventDef):
        event_fields.insert(0, {"name": "EventUuid", "type": ["null", "string"], "default": None})
    return {
        "name": name,
        "namespace": NAMESPACE,
        "type": "expanded-record",
        "fields": [
            {
                "name": "data",
                "type": {
                    "type": "record",
                    "name": "Data",
                    "namespace": "",
                    "fields": [
                        {"name": "schema", "type": "string"},
                        {
                            "name": "payload",
                            "type": {
                                "type": "record",
                                "name": "Payload",
                                "doc": "",
                                "fields": fields,
                            },
                        },
                        {
                            "name": "event",
                            "type": {"type": "record", "name": "Event", "fields": event_fields},
                        },
                    ],
                },
            },
            {"name": "channel", "type": "string"},
        ],
    }


def schema_id(defn: ObjectDef | EventDef) -> str:
    """The 22-character id of `defn`'s current schema (digest of its COMPACT form)."""
    canonical = orjson.dumps(event_schema(defn, "COMPACT"), option=orjson.OPT_SORT_KEYS)
    digest = hashlib.md5(canonical, usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")
