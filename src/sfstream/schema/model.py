"""What a stream's records look like, derived from Salesforce's own definitions.

Two sources, in order of preference:

- `eventSchema` (the Avro schema Salesforce publishes for every platform event and change
  event, EXPANDED form): each payload field's Avro type gives its JSON type and nullability,
  its `doc` (`Data:Currency:00N...`, `CreatedDate:DateTime`) the Salesforce type;
- `describe` otherwise (PushTopics, and events whose schema cannot be fetched): each field's
  `type`, `nillable`, `length`, `precision`, `picklistValues`, `compoundFieldName`.

Both produce the same neutral `RecordModel`, which `render` turns into JSON Schema and Avro.
Fields are kept sorted by name so that the same definition always yields the same model.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

import msgspec

from sfstream.errors import ProtocolError

Kind = Literal["change_events", "platform_event", "push_topic", "generic"]

# The Salesforce type named by the second part of an eventSchema field's `doc`.
_DOC_TYPES: Final = {
    "text": "string",
    "string": "string",
    "textarea": "textarea",
    "longtextarea": "textarea",
    "richtextarea": "textarea",
    "email": "email",
    "phone": "phone",
    "url": "url",
    "picklist": "picklist",
    "multiselectpicklist": "multipicklist",
    "multipicklist": "multipicklist",
    "combobox": "combobox",
    "checkbox": "boolean",
    "boolean": "boolean",
    "currency": "currency",
    "percent": "percent",
    "date": "date",
    "datetime": "datetime",
    "time": "time",
    "entityid": "reference",
    "reference": "reference",
    "id": "id",
    "base64": "base64",
    "encryptedtext": "encryptedstring",
    "address": "address",
    "location": "location",
    "complexvaluetype": "complexvalue",
    "json": "json",
    "anytype": "anyType",
    "int": "int",
    "long": "long",
    "double": "double",
}
_AVRO_TYPES: Final = {
    "string": "string",
    "boolean": "boolean",
    "int": "int",
    "long": "long",
    "double": "double",
    "float": "double",
    "bytes": "base64",
}
_HIDDEN_EVENT_FIELDS: Final = frozenset({"ReplayId", "EventUuid"})
_HIDDEN_CDC_FIELDS: Final = frozenset({"Id", "ReplayId", "IsDeleted", "SystemModstamp"})


class FieldModel(msgspec.Struct, frozen=True):
    """One field of a record's `data`.

    Attributes:
        sf_type: the Salesforce field type (`string`, `currency`, `datetime`, `reference`,
            `address`, ... and `complexvalue` for the change event header).
        nullable: whether the value may be null (or, for change events, absent).
        fields: members of a compound value (an address, a geolocation, a person's name).
        items: for array values (header lists), the Salesforce type of the items.
    """

    name: str
    sf_type: str
    nullable: bool = True
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    picklist: tuple[str, ...] = ()
    reference_to: tuple[str, ...] = ()
    fields: tuple[FieldModel, ...] = ()
    items: str | None = None
    enum: tuple[str, ...] = ()


class RecordModel(msgspec.Struct, frozen=True):
    """The shape of one subject's records (`data`)."""

    name: str
    """The event, change event or topic (`AccountChangeEvent`, `Order_Placed__e`)."""
    kind: Kind
    fields: tuple[FieldModel, ...]
    schema_id: str | None = None
    """Salesforce's schema id (`data.schema` of events), when derived from `eventSchema`."""
    origin: Literal["eventSchema", "describe", "static"] = "eventSchema"
    extra: Mapping[str, Any] = msgspec.field(default_factory=dict)


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
)

HEADER: Final = FieldModel(
    "ChangeEventHeader",
    "complexvalue",
    nullable=False,
    fields=tuple(
        sorted(
            (
                FieldModel("changeOrigin", "string"),
                FieldModel("changeType", "picklist", nullable=False, enum=CHANGE_TYPES),
                FieldModel("changedFields", "array", items="string"),
                FieldModel("commitNumber", "long", nullable=False),
                FieldModel("commitTimestamp", "long", nullable=False),
                FieldModel("commitUser", "reference", nullable=False, reference_to=("User",)),
                FieldModel("diffFields", "array", items="string"),
                FieldModel("entityName", "string", nullable=False),
                FieldModel("nulledFields", "array", items="string"),
                FieldModel("recordIds", "array", nullable=False, items="string"),
                FieldModel("sequenceNumber", "int", nullable=False),
                FieldModel("transactionKey", "string", nullable=False),
            ),
            key=lambda f: f.name,
        )
    ),
)
"""The change event header, as CometD delivers it (Pub/Sub adds nulledFields/diffFields)."""


def _sorted(fields: Iterable[FieldModel]) -> tuple[FieldModel, ...]:
    return tuple(sorted(fields, key=lambda f: f.name))


# -- from eventSchema -------------------------------------------------------------------------


def _payload_record(schema: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The payload fields of an EXPANDED (or COMPACT) eventSchema document."""
    if schema.get("type") == "record" and isinstance(schema.get("fields"), list):
        return [f for f in schema["fields"] if isinstance(f, dict)]  # COMPACT
    for top in schema.get("fields", []):
        if not isinstance(top, dict) or top.get("name") != "data":
            continue
        for member in top.get("type", {}).get("fields", []):
            if isinstance(member, dict) and member.get("name") == "payload":
                fields = member.get("type", {}).get("fields")
                if isinstance(fields, list):
                    return [f for f in fields if isinstance(f, dict)]
    raise ProtocolError("an eventSchema document without data.payload fields")


def _unwrap(avro_type: Any) -> tuple[Any, bool]:
    """(the non-null type, nullable) of an Avro field type."""
    if isinstance(avro_type, list):
        others = [t for t in avro_type if t != "null"]
        return (others[0] if others else "string"), len(others) < len(avro_type)
    return avro_type, False


def _doc_type(doc: Any) -> str | None:
    if not isinstance(doc, str) or ":" not in doc:
        return None
    return _DOC_TYPES.get(doc.split(":")[1].strip().lower())


def _from_avro(entry: Mapping[str, Any], *, force_nullable: bool) -> FieldModel:
    name = str(entry.get("name"))
    avro_type, nullable = _unwrap(entry.get("type"))
    sf_type = _doc_type(entry.get("doc"))
    members: tuple[FieldModel, ...] = ()
    items = None
    enum: tuple[str, ...] = ()
    if isinstance(avro_type, dict):
        kind = avro_type.get("type")
        if kind == "record":
            members = _sorted(
                _from_avro(f, force_nullable=True)
                for f in avro_type.get("fields", [])
                if isinstance(f, dict)
            )
            sf_type = sf_type if sf_type in ("address", "location") else "complexvalue"
        elif kind == "array":
            items = "string"
            sf_type = "array"
        elif kind == "enum":
            enum = tuple(str(s) for s in avro_type.get("symbols", []))
            sf_type = "picklist"
        else:
            sf_type = sf_type or _AVRO_TYPES.get(str(kind), "string")
    else:
        primitive = _AVRO_TYPES.get(str(avro_type), "string")
        numeric = sf_type in ("double", "currency", "percent")
        if sf_type is None or (primitive in ("int", "long") and numeric):
            sf_type = primitive
    if name == "ChangeEventHeader":
        return HEADER
    return FieldModel(
        name, sf_type, nullable=nullable or force_nullable, fields=members, items=items, enum=enum
    )


def from_event_schema(name: str, kind: Kind, schema: Mapping[str, Any]) -> RecordModel:
    """The model of a change event or platform event from its eventSchema document."""
    cdc = kind == "change_events"
    fields = []
    for entry in _payload_record(schema):
        field_name = entry.get("name")
        if field_name in _HIDDEN_EVENT_FIELDS:
            continue
        # Change events carry only changed fields: every field but the header may be absent.
        fields.append(_from_avro(entry, force_nullable=cdc and field_name != "ChangeEventHeader"))
    if cdc and not any(f.name == "ChangeEventHeader" for f in fields):
        fields.append(HEADER)
    schema_id = schema.get("uuid")
    return RecordModel(
        name, kind, _sorted(fields), schema_id=schema_id if isinstance(schema_id, str) else None
    )


# -- from describe ----------------------------------------------------------------------------


def _from_describe(entry: Mapping[str, Any], *, force_nullable: bool) -> FieldModel:
    picklist = tuple(
        str(p.get("value"))
        for p in entry.get("picklistValues") or []
        if isinstance(p, dict) and p.get("active", True)
    )
    length = entry.get("length")
    precision = entry.get("precision")
    scale = entry.get("scale")
    sf_type = str(entry.get("type", "string"))
    numeric = sf_type in ("double", "currency", "percent", "int", "long")
    return FieldModel(
        str(entry["name"]),
        sf_type,
        nullable=bool(entry.get("nillable", True)) or force_nullable,
        length=int(length) if isinstance(length, int) and length > 0 and not numeric else None,
        precision=int(precision) if isinstance(precision, int) and precision > 0 else None,
        scale=int(scale) if isinstance(scale, int) and numeric and precision else None,
        picklist=picklist,
        reference_to=tuple(str(r) for r in entry.get("referenceTo") or []),
    )


def from_describe(
    name: str, kind: Kind, describe: Mapping[str, Any], only: Iterable[str] | None = None
) -> RecordModel:
    """The model from a describe result (change event, platform event or object).

    `only` keeps the named fields (a PushTopic's SELECT list), matched case-insensitively.
    """
    raw = [f for f in describe.get("fields", []) if isinstance(f, dict) and "name" in f]
    wanted = {n.lower() for n in only} if only is not None else None
    cdc = kind == "change_events"
    hidden = (
        _HIDDEN_CDC_FIELDS
        if cdc
        else _HIDDEN_EVENT_FIELDS
        if kind == "platform_event"
        else frozenset()
    )
    components: dict[str, list[Mapping[str, Any]]] = {}
    for entry in raw:
        compound = entry.get("compoundFieldName")
        if isinstance(compound, str) and compound:
            components.setdefault(compound, []).append(entry)
    fields: list[FieldModel] = []
    for entry in raw:
        field_name = str(entry["name"])
        if field_name in hidden or (entry.get("compoundFieldName") and cdc):
            continue
        if wanted is not None and field_name.lower() not in wanted:
            continue
        if field_name == "ChangeEventHeader":
            fields.append(HEADER)
            continue
        model = _from_describe(entry, force_nullable=cdc)
        if cdc and field_name in components:
            prefix = field_name[: -len("Address")] if model.sf_type == "address" else ""
            members = []
            for member in components[field_name]:
                key = str(member["name"])
                if model.sf_type == "address":
                    key = key[len(prefix) :]
                elif model.sf_type == "location":
                    key = key.removesuffix("__s").rsplit("__", 1)[-1]
                members.append(_from_describe({**member, "name": key}, force_nullable=True))
            sf_type = (
                model.sf_type if model.sf_type in ("address", "location") else ("complexvalue")
            )
            model = FieldModel(model.name, sf_type, nullable=True, fields=_sorted(members))
        fields.append(model)
    if cdc and not any(f.name == "ChangeEventHeader" for f in fields):
        fields.append(HEADER)
    return RecordModel(name, kind, _sorted(fields), origin="describe")


def generic_model(channel: str) -> RecordModel:
    """Generic streaming events carry one string payload."""
    return RecordModel(channel, "generic", (FieldModel("payload", "string"),), origin="static")
