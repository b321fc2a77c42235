"""Describe results: what `sobjects/` and `sobjects/{name}/describe` return.

The shapes follow the REST API's DescribeGlobalResult and DescribeSObjectResult, with the
attributes clients actually read (`name`, `custom`, `keyPrefix`, `associateEntityType`,
`associateParentEntity`, capability flags, and per field `type`, `soapType`, `nillable`,
`length`, `precision`, `scale`, `picklistValues`, `referenceTo`, `compoundFieldName`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Final, Literal

from sfstream_emulator.org import EventDef, FieldDef, ObjectDef, OrgSpec
from sfstream_emulator.schemas import change_event_fields

_SOAP_TYPE: Final = {
    "id": "tns:ID",
    "reference": "tns:ID",
    "boolean": "xsd:boolean",
    "int": "xsd:int",
    "long": "xsd:long",
    "double": "xsd:double",
    "currency": "xsd:double",
    "percent": "xsd:double",
    "date": "xsd:date",
    "datetime": "xsd:dateTime",
    "time": "xsd:time",
    "base64": "xsd:base64Binary",
    "address": "urn:address",
    "location": "urn:location",
    "anyType": "xsd:anyType",
}
_DEFAULT_LENGTH: Final = {
    "id": 18,
    "reference": 18,
    "string": 255,
    "textarea": 255,
    "url": 255,
    "email": 80,
    "phone": 40,
    "picklist": 255,
    "multipicklist": 4099,
    "combobox": 255,
    "encryptedstring": 175,
}

# Standard objects the streaming API itself uses; describe and query know them.
STREAMING_SOBJECTS: Final = {
    "PushTopic": ("0IF", "Push Topic", "Push Topics"),
    "StreamingChannel": ("0M6", "Streaming Channel", "Streaming Channels"),
}


def _label(name: str) -> str:
    base = re.sub(r"__[ce]$", "", name).replace("_", " ")
    return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base)


def _urls(version: str, name: str, with_rows: bool) -> dict[str, str]:
    base = f"/services/data/v{version}/sobjects/{name}"
    urls = {"sobject": base, "describe": f"{base}/describe"}
    if with_rows:
        urls["rowTemplate"] = f"{base}/{{ID}}"
    return urls


@dataclass(frozen=True, slots=True)
class _Entity:
    """What describe says about an object, change event or platform event as a whole."""

    name: str
    label: str
    label_plural: str
    key_prefix: str | None
    custom: bool
    kind: Literal["object", "change_event", "event"]
    parent: str | None = None

    @classmethod
    def of_object(cls, obj: ObjectDef) -> _Entity:
        plural = obj.label_plural or obj.display_label + "s"
        return cls(obj.name, obj.display_label, plural, obj.key_prefix, obj.custom, "object")

    @classmethod
    def of_change_event(cls, obj: ObjectDef) -> _Entity:
        label = f"{obj.display_label} Change Event"
        return cls(
            obj.change_event_name, label, label + "s", None, obj.custom, "change_event", obj.name
        )

    @classmethod
    def of_event(cls, event: EventDef) -> _Entity:
        plural = event.label_plural or event.display_label
        return cls(event.name, event.display_label, plural, event.key_prefix, True, "event")


def _global_entry(version: str, entity: _Entity) -> dict[str, Any]:
    kind = entity.kind
    record = kind == "object"
    event = kind == "event"
    entry: dict[str, Any] = {
        "activateable": False,
        "associateEntityType": "ChangeEvent" if kind == "change_event" else None,
        "associateParentEntity": entity.parent,
        "createable": record or event,
        "custom": entity.custom,
        "customSetting": False,
        "deepCloneable": False,
        "deletable": record,
        "deprecatedAndHidden": False,
        "feedEnabled": record,
        "hasSubtypes": False,
        "isInterface": False,
        "isSubtype": False,
        "keyPrefix": entity.key_prefix,
        "label": entity.label,
        "labelPlural": entity.label_plural,
        "layoutable": record,
        "mergeable": False,
        "mruEnabled": record,
        "name": entity.name,
        "queryable": record,
        "replicateable": record,
        "retrieveable": record,
        "searchable": record,
        "triggerable": record or event or kind == "change_event",
        "undeletable": record,
        "updateable": record,
        "urls": _urls(version, entity.name, record),
    }
    if event or kind == "change_event":
        entry["urls"]["eventSchema"] = (
            f"/services/data/v{version}/sobjects/{entity.name}/eventSchema"
        )
    return entry


def describe_global(org: OrgSpec, version: str) -> dict[str, Any]:
    """`GET /services/data/vXX.X/sobjects/`."""
    entities: list[_Entity] = []
    for obj in org.objects:
        entities.append(_Entity.of_object(obj))
        if obj.supports_cdc:
            entities.append(_Entity.of_change_event(obj))
    entities.extend(_Entity.of_event(event) for event in org.platform_events)
    entities.extend(
        _Entity(name, label, plural, prefix, False, "object")
        for name, (prefix, label, plural) in STREAMING_SOBJECTS.items()
    )
    entries = sorted(
        (_global_entry(version, entity) for entity in entities), key=lambda e: e["name"].lower()
    )
    return {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": entries}


def field_describe(field: FieldDef, *, read_only: bool = False) -> dict[str, Any]:
    """One entry of a describe's `fields` array."""
    kind = field.type
    text_like = kind not in _SOAP_TYPE
    length = field.length if field.length is not None else _DEFAULT_LENGTH.get(kind, 0)
    if not text_like and kind not in ("id", "reference"):
        length = 0
    numeric = kind in ("double", "currency", "percent")
    return {
        "aggregatable": kind
        not in ("textarea", "multipicklist", "base64", "address", "location", "encryptedstring"),
        "autoNumber": field.auto_number,
        "byteLength": length * 3,
        "calculated": field.calculated,
        "calculatedFormula": None,
        "cascadeDelete": False,
        "caseSensitive": False,
        "compoundFieldName": field.compound_field_name,
        "controllerName": None,
        "createable": field.createable and not read_only and not field.is_compound,
        "custom": field.custom,
        "defaultValue": field.default_value,
        "defaultValueFormula": None,
        "defaultedOnCreate": field.default_value is not None or field.system,
        "dependentPicklist": False,
        "deprecatedAndHidden": False,
        "digits": field.precision if kind in ("int", "long") and field.precision else 0,
        "encrypted": kind == "encryptedstring",
        "externalId": field.external_id,
        "extraTypeInfo": None,
        "filterable": kind not in ("textarea", "base64", "address", "location"),
        "groupable": kind
        in ("string", "picklist", "boolean", "id", "reference", "date", "email", "phone", "url"),
        "htmlFormatted": False,
        "idLookup": kind == "id" or field.external_id,
        "inlineHelpText": None,
        "label": field.display_label,
        "length": length,
        "name": field.name,
        "nameField": field.name_field,
        "namePointing": False,
        "nillable": field.nillable,
        "permissionable": field.custom and field.nillable,
        "picklistValues": [
            {
                "active": True,
                "defaultValue": value == field.default_value,
                "label": value,
                "validFor": None,
                "value": value,
            }
            for value in field.picklist
        ],
        "polymorphicForeignKey": len(field.reference_to) > 1,
        "precision": field.precision if numeric and field.precision else 0,
        "referenceTargetField": None,
        "referenceTo": list(field.reference_to),
        "relationshipName": field.relationship_name,
        "relationshipOrder": None,
        "restrictedPicklist": field.restricted_picklist,
        "scale": field.scale if numeric and field.scale else 0,
        "soapType": _SOAP_TYPE.get(kind, "xsd:string"),
        "sortable": kind not in ("textarea", "multipicklist", "address", "location"),
        "type": kind,
        "unique": False,
        "updateable": field.updateable
        and not read_only
        and not field.system
        and not field.is_compound,
    }


def _header_field() -> dict[str, Any]:
    header = FieldDef(
        name="ChangeEventHeader",
        type="anyType",
        label="Change Event Header",
        nillable=False,
        createable=False,
        updateable=False,
        system=True,
    )
    entry = field_describe(header, read_only=True)
    entry.update(
        type="complexvalue",
        soapType="urn:ChangeEventHeader",
        filterable=False,
        groupable=False,
        sortable=False,
        aggregatable=False,
    )
    return entry


def _describe_body(version: str, entity: _Entity, fields: list[dict[str, Any]]) -> dict[str, Any]:
    body = _global_entry(version, entity)
    body.update(
        actionOverrides=[],
        childRelationships=[],
        compactLayoutable=entity.kind == "object",
        fields=fields,
        namedLayoutInfos=[],
        networkScopeFieldName=None,
        recordTypeInfos=[],
        searchLayoutable=entity.kind == "object",
        sobjectDescribeOption="FULL",
        supportedScopes=[],
    )
    return dict(sorted(body.items()))


def describe_object(obj: ObjectDef, version: str) -> dict[str, Any]:
    """`sobjects/{Object}/describe`."""
    return _describe_body(version, _Entity.of_object(obj), [field_describe(f) for f in obj.fields])


def describe_change_event(obj: ObjectDef, version: str) -> dict[str, Any]:
    """`sobjects/{Object}ChangeEvent/describe`: header, replay id and the object's fields."""
    system = {"createable": False, "updateable": False, "system": True}
    fields = [
        field_describe(FieldDef(name="Id", type="id", nillable=False, **system), read_only=True),
        field_describe(FieldDef(name="ReplayId", type="string", **system), read_only=True),
        _header_field(),
    ]
    for field, parts in change_event_fields(obj):
        fields.append(field_describe(field, read_only=True))
        fields.extend(field_describe(part, read_only=True) for part in parts)
    return _describe_body(version, _Entity.of_change_event(obj), fields)


def describe_event(event: EventDef, version: str) -> dict[str, Any]:
    """`sobjects/{Event__e}/describe`."""
    return _describe_body(
        version, _Entity.of_event(event), [field_describe(f) for f in event.fields]
    )


_PUSH_TOPIC_FIELDS: Final = (
    FieldDef(name="Id", type="id", nillable=False, createable=False, updateable=False, system=True),
    FieldDef(name="Name", type="string", length=25, nillable=False, name_field=True),
    FieldDef(name="Query", type="string", length=1300, nillable=False),
    FieldDef(name="ApiVersion", type="double", precision=18, scale=1, nillable=False),
    FieldDef(name="IsActive", type="boolean", nillable=False, default_value=True),
    FieldDef(
        name="NotifyForFields",
        type="picklist",
        nillable=False,
        picklist=("All", "Referenced", "Select", "Where"),
        restricted_picklist=True,
        default_value="Referenced",
    ),
    FieldDef(name="NotifyForOperationCreate", type="boolean", nillable=False, default_value=True),
    FieldDef(name="NotifyForOperationUpdate", type="boolean", nillable=False, default_value=True),
    FieldDef(name="NotifyForOperationDelete", type="boolean", nillable=False, default_value=True),
    FieldDef(name="NotifyForOperationUndelete", type="boolean", nillable=False, default_value=True),
    FieldDef(name="Description", type="string", length=400),
)
_STREAMING_CHANNEL_FIELDS: Final = (
    FieldDef(name="Id", type="id", nillable=False, createable=False, updateable=False, system=True),
    FieldDef(name="Name", type="string", length=80, nillable=False, name_field=True),
    FieldDef(name="Description", type="string", length=255),
)


def streaming_sobject_fields(name: str) -> tuple[FieldDef, ...]:
    """Fields of `PushTopic` or `StreamingChannel`."""
    return _PUSH_TOPIC_FIELDS if name == "PushTopic" else _STREAMING_CHANNEL_FIELDS


def describe_streaming_sobject(name: str, version: str) -> dict[str, Any]:
    """`sobjects/PushTopic/describe` and `sobjects/StreamingChannel/describe`."""
    prefix, label, plural = STREAMING_SOBJECTS[name]
    entity = _Entity(name, label, plural, prefix, False, "object")
    return _describe_body(
        version, entity, [field_describe(f) for f in streaming_sobject_fields(name)]
    )


def sobject_basic_info(describe: dict[str, Any]) -> dict[str, Any]:
    """`GET sobjects/{name}`: the describe's summary plus recent items."""
    summary = {k: v for k, v in describe.items() if not isinstance(v, list)}
    return {"objectDescribe": summary, "recentItems": []}


def label_for(name: str) -> str:
    return _label(name)
