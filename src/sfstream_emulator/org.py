"""The emulated org: objects, platform events, channels and topics.

An `OrgSpec` is plain data validated by pydantic. `load_org` reads one from YAML (the bundled
`default_org.yaml` when no path is given) and completes it the way Salesforce completes an
object definition: system fields (Id, CreatedDate, ...) are added, compound fields (addresses,
geolocations) are expanded into their component fields, and custom names are checked.

Each definition in the org can change at run time (the control API adds, removes or retypes a
field), which is why `ObjectDef` and `EventDef` are mutable while the field definitions are
frozen values.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

FieldType = Literal[
    "id",
    "string",
    "boolean",
    "int",
    "long",
    "double",
    "currency",
    "percent",
    "date",
    "datetime",
    "time",
    "base64",
    "reference",
    "textarea",
    "phone",
    "url",
    "email",
    "picklist",
    "multipicklist",
    "combobox",
    "address",
    "location",
    "encryptedstring",
    "anyType",
    "json",
]

NotifyForFields = Literal["All", "Referenced", "Select", "Where"]

# Standard objects for which Salesforce offers change events. Every custom object has them.
CDC_STANDARD_OBJECTS: Final = frozenset(
    {"Account", "Asset", "Campaign", "Case", "Contact", "Contract", "Lead", "Opportunity"}
    | {"OpportunityLineItem", "Order", "OrderItem", "Product2", "Quote", "Task", "Event", "User"}
)

_API_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_ADDRESS_PARTS: Final[tuple[tuple[str, FieldType], ...]] = (
    ("Street", "textarea"),
    ("City", "string"),
    ("State", "string"),
    ("PostalCode", "string"),
    ("Country", "string"),
    ("StateCode", "picklist"),
    ("CountryCode", "picklist"),
    ("Latitude", "double"),
    ("Longitude", "double"),
    ("GeocodeAccuracy", "picklist"),
)


class OrgError(ValueError):
    """The org definition is not valid; the message names the offending entry."""


class FieldDef(BaseModel):
    """One field of an object or event, as `describe` reports it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    type: FieldType
    label: str | None = None
    length: int | None = None
    precision: int | None = None
    scale: int | None = None
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    calculated: bool = False
    name_field: bool = False
    auto_number: bool = False
    external_id: bool = False
    picklist: tuple[str, ...] = ()
    restricted_picklist: bool = False
    reference_to: tuple[str, ...] = ()
    relationship_name: str | None = None
    compound_field_name: str | None = None
    default_value: Any = None
    system: bool = False

    @field_validator("name")
    @classmethod
    def _api_name(cls, value: str) -> str:
        if not _API_NAME.match(value):
            raise ValueError(f"{value!r} is not a valid API name")
        return value

    @property
    def custom(self) -> bool:
        """Custom fields end in `__c` (geolocation components in `__s`)."""
        return self.name.endswith(("__c", "__s"))

    @property
    def display_label(self) -> str:
        """The label, derived from the API name when none was given."""
        if self.label:
            return self.label
        base = re.sub(r"__[cs]$", "", self.name).replace("_", " ")
        return re.sub(r"(?<=[a-z])(?=[A-Z])", " ", base)

    @property
    def is_compound(self) -> bool:
        """Address and geolocation fields are compounds of component fields."""
        return self.type in ("address", "location")


def _field(name: str, type_: FieldType, **kwargs: Any) -> FieldDef:
    return FieldDef(name=name, type=type_, **kwargs)


def _object_system_fields(owner: bool) -> list[FieldDef]:
    fields = [
        _field("Id", "id", nillable=False, createable=False, updateable=False, system=True),
        _field(
            "IsDeleted",
            "boolean",
            nillable=False,
            createable=False,
            updateable=False,
            system=True,
            default_value=False,
        ),
    ]
    if owner:
        fields.append(
            _field(
                "OwnerId",
                "reference",
                nillable=False,
                reference_to=("User",),
                relationship_name="Owner",
                system=True,
            )
        )
    audit: list[tuple[str, FieldType, tuple[str, ...]]] = [
        ("CreatedDate", "datetime", ()),
        ("CreatedById", "reference", ("User",)),
        ("LastModifiedDate", "datetime", ()),
        ("LastModifiedById", "reference", ("User",)),
        ("SystemModstamp", "datetime", ()),
    ]
    for name, type_, ref in audit:
        fields.append(
            _field(
                name,
                type_,
                nillable=False,
                createable=False,
                updateable=False,
                reference_to=ref,
                system=True,
                relationship_name=name[:-2] if ref else None,
            )
        )
    return fields


def _event_system_fields() -> list[FieldDef]:
    return [
        _field("ReplayId", "string", createable=False, updateable=False, system=True),
        _field(
            "CreatedDate",
            "datetime",
            nillable=False,
            createable=False,
            updateable=False,
            system=True,
        ),
        _field(
            "CreatedById",
            "reference",
            nillable=False,
            createable=False,
            updateable=False,
            reference_to=("User",),
            relationship_name="CreatedBy",
            system=True,
        ),
        _field("EventUuid", "string", length=36, createable=False, updateable=False, system=True),
    ]


def _address_prefix(name: str) -> str:
    """`BillingAddress` -> `Billing`; a standard address not named `...Address` keeps its name."""
    return name[: -len("Address")] if name.endswith("Address") else name


def _compound_components(field: FieldDef) -> list[FieldDef]:
    """The component fields Salesforce stores for a compound field."""
    if field.type == "address":
        if field.custom:
            # A custom address field `Home__c` stores `Home__Street__s`, `Home__City__s`, ...
            stem = field.name[:-3]
            return [
                _field(f"{stem}__{part}__s", kind, compound_field_name=field.name)
                for part, kind in _ADDRESS_PARTS
            ]
        prefix = _address_prefix(field.name)
        return [
            _field(f"{prefix}{part}", kind, compound_field_name=field.name)
            for part, kind in _ADDRESS_PARTS
        ]
    stem = field.name[:-3] if field.name.endswith("__c") else field.name
    suffix = "__s" if field.name.endswith("__c") else ""
    return [
        _field(
            f"{stem}__{part}{suffix}" if suffix else f"{stem}{part}",
            "double",
            precision=18,
            scale=15,
            compound_field_name=field.name,
        )
        for part in ("Latitude", "Longitude")
    ]


def component_key(compound: FieldDef, component: FieldDef) -> str:
    """The key of `component` inside its compound value (`BillingCity` -> `City`)."""
    if compound.type == "address" and not compound.custom:
        return component.name[len(_address_prefix(compound.name)) :]
    if compound.type in ("address", "location"):
        name = component.name.removesuffix("__s")
        return name.rsplit("__", 1)[-1] if "__" in name else name[len(compound.name) :]
    return component.name


class _Definition(BaseModel):
    """Shared behaviour of objects and events: a named, ordered set of fields."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str
    label: str | None = None
    label_plural: str | None = None
    key_prefix: str
    fields: list[FieldDef] = Field(default_factory=list)
    schema_revision: int = 0
    """Bumped whenever a field changes, so the event schema id changes with it."""

    @property
    def custom(self) -> bool:
        return self.name.endswith(("__c", "__e"))

    @property
    def display_label(self) -> str:
        return self.label or re.sub(r"__[ce]$", "", self.name).replace("_", " ")

    def field(self, name: str) -> FieldDef | None:
        """The field called `name` (exact API name), if any."""
        for field in self.fields:
            if field.name == name:
                return field
        return None

    def field_ci(self, name: str) -> FieldDef | None:
        """The field called `name`, ignoring case as Salesforce API names do."""
        lowered = name.lower()
        for field in self.fields:
            if field.name.lower() == lowered:
                return field
        return None

    def compound_parts(self, compound: str) -> list[FieldDef]:
        """The component fields of compound field `compound`, in definition order."""
        return [f for f in self.fields if f.compound_field_name == compound]

    def top_level_fields(self) -> Iterator[FieldDef]:
        """Fields that are not components of a compound field."""
        return (f for f in self.fields if f.compound_field_name is None)


class ObjectDef(_Definition):
    """An sObject: a standard or custom object whose records raise change events."""

    has_owner: bool = True
    cdc_supported: bool | None = None

    @property
    def change_event_name(self) -> str:
        """`AccountChangeEvent`, `Employee__ChangeEvent`."""
        base = self.name[:-3] + "__" if self.name.endswith("__c") else self.name
        return f"{base}ChangeEvent"

    @property
    def supports_cdc(self) -> bool:
        if self.cdc_supported is not None:
            return self.cdc_supported
        return self.custom or self.name in CDC_STANDARD_OBJECTS

    @property
    def name_field(self) -> FieldDef | None:
        for field in self.fields:
            if field.name_field:
                return field
        return None


class EventDef(_Definition):
    """A platform event (`Order_Placed__e`)."""

    high_volume: bool = True
    key_prefix: str = "e00"


class EventChannelDef(BaseModel):
    """A custom channel (`SalesEvents__chn`) grouping change events or platform events."""

    model_config = ConfigDict(extra="forbid")

    name: str
    channel_type: Literal["data", "event"] = "data"
    label: str | None = None
    members: list[str] = Field(default_factory=list)
    """Entity names: objects for a data channel (`Opportunity`), events for an event channel."""

    @field_validator("name")
    @classmethod
    def _chn(cls, value: str) -> str:
        if not value.endswith("__chn"):
            raise ValueError(f"custom channel {value!r} must end in __chn")
        return value


class PushTopicDef(BaseModel):
    """A PushTopic record: a SOQL query whose matching record changes are streamed."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    name: str = Field(max_length=25)
    query: str = Field(max_length=1300)
    api_version: float = 62.0
    is_active: bool = True
    notify_for_fields: NotifyForFields = "Referenced"
    notify_for_operation_create: bool = True
    notify_for_operation_update: bool = True
    notify_for_operation_delete: bool = True
    notify_for_operation_undelete: bool = True
    description: str | None = None
    id: str | None = None


class StreamingChannelDef(BaseModel):
    """A StreamingChannel record: a generic `/u/` channel."""

    model_config = ConfigDict(extra="forbid")

    name: str
    description: str | None = None
    id: str | None = None

    @field_validator("name")
    @classmethod
    def _u(cls, value: str) -> str:
        if not value.startswith("/u/") or len(value) <= 3:
            raise ValueError(f"streaming channel {value!r} must look like /u/Name")
        return value


class UserDef(BaseModel):
    """The integration user the emulator authenticates."""

    model_config = ConfigDict(extra="forbid")

    id: str = "0055g00000EmuUsrAAA"
    username: str = "integration@sfstream.example"
    name: str = "Integration User"
    email: str = "integration@sfstream.example"
    view_all_data: bool = True
    """Without it, CDC subscriptions are refused, as in Salesforce."""


class OrgSpec(BaseModel):
    """A whole emulated org."""

    model_config = ConfigDict(extra="forbid")

    org_id: str = "00D5g00000EmuOrgEAA"
    name: str = "sfstream Emulated Org"
    edition: str = "Developer Edition"
    user: UserDef = Field(default_factory=UserDef)
    objects: list[ObjectDef] = Field(default_factory=list)
    platform_events: list[EventDef] = Field(default_factory=list)
    change_events: list[str] = Field(default_factory=list)
    """Entities selected for the standard `/data/ChangeEvents` channel."""
    channels: list[EventChannelDef] = Field(default_factory=list)
    push_topics: list[PushTopicDef] = Field(default_factory=list)
    streaming_channels: list[StreamingChannelDef] = Field(default_factory=list)
    restricted_channels: list[str] = Field(default_factory=list)
    """Channels the integration user may not subscribe to (`403::Restricted channel`)."""

    def object(self, name: str) -> ObjectDef | None:
        """The object called `name`, matched case-insensitively like the REST API."""
        lowered = name.lower()
        return next((o for o in self.objects if o.name.lower() == lowered), None)

    def event(self, name: str) -> EventDef | None:
        """The platform event called `name`, matched case-insensitively."""
        lowered = name.lower()
        return next((e for e in self.platform_events if e.name.lower() == lowered), None)

    def object_by_change_event(self, change_event: str) -> ObjectDef | None:
        """The object whose change event is called `change_event` (exact case)."""
        return next((o for o in self.objects if o.change_event_name == change_event), None)

    def object_by_prefix(self, key_prefix: str) -> ObjectDef | None:
        return next((o for o in self.objects if o.key_prefix == key_prefix), None)

    def channel(self, name: str) -> EventChannelDef | None:
        return next((c for c in self.channels if c.name == name), None)

    def push_topic(self, name: str) -> PushTopicDef | None:
        return next((t for t in self.push_topics if t.name == name), None)

    def streaming_channel(self, name: str) -> StreamingChannelDef | None:
        return next((c for c in self.streaming_channels if c.name == name), None)

    def cdc_selected(self, entity: str) -> bool:
        """Whether `entity` raises change events on at least one channel."""
        return entity in self.change_events or any(
            entity in c.members for c in self.channels if c.channel_type == "data"
        )


def _complete_object(obj: ObjectDef) -> None:
    given = list(obj.fields)
    names = [f.name for f in given]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise OrgError(f"object {obj.name}: duplicate fields {duplicates}")
    fields = [f for f in _object_system_fields(obj.has_owner) if f.name not in names]
    for field in given:
        fields.append(field)
        if field.is_compound:
            fields.extend(c for c in _compound_components(field) if c.name not in names)
    obj.fields = fields


def _complete_event(event: EventDef) -> None:
    if not event.name.endswith("__e"):
        raise OrgError(f"platform event {event.name!r} must end in __e")
    names = {f.name for f in event.fields}
    bad = sorted(n for n in names if not n.endswith("__c"))
    if bad:
        raise OrgError(f"platform event {event.name}: custom fields must end in __c: {bad}")
    event.fields = [f for f in _event_system_fields() if f.name not in names] + list(event.fields)


def complete(org: OrgSpec) -> OrgSpec:
    """Add system fields and compound components, and check cross references."""
    prefixes: dict[str, str] = {}
    for obj in org.objects:
        if obj.key_prefix in prefixes:
            raise OrgError(
                f"objects {prefixes[obj.key_prefix]} and {obj.name} share key prefix "
                f"{obj.key_prefix}"
            )
        prefixes[obj.key_prefix] = obj.name
        _complete_object(obj)
    _no_duplicates("objects", [o.name.lower() for o in org.objects])
    _no_duplicates("platform_events", [e.name.lower() for e in org.platform_events])
    _no_duplicates("channels", [c.name for c in org.channels])
    _no_duplicates("push_topics", [t.name for t in org.push_topics])
    _no_duplicates("streaming_channels", [c.name for c in org.streaming_channels])
    for event in org.platform_events:
        _complete_event(event)
    selected_names: list[str] = []
    for entity in org.change_events:
        selected = org.object(entity)
        if selected is None or not selected.supports_cdc:
            raise OrgError(f"change_events: {entity!r} is not an object with change events")
        # Names are matched exactly later on (channel membership), so store the API name.
        if selected.name not in selected_names:
            selected_names.append(selected.name)
    org.change_events = selected_names
    for channel in org.channels:
        members: list[str] = []
        for member in channel.members:
            known: ObjectDef | EventDef | None
            if channel.channel_type == "data":
                known = org.object(member)
                if known is not None and not known.supports_cdc:
                    raise OrgError(
                        f"channel {channel.name}: {known.name} is not an object with change events"
                    )
            else:
                known = org.event(member)
            if known is None:
                raise OrgError(f"channel {channel.name}: unknown member {member!r}")
            if known.name not in members:
                members.append(known.name)
        channel.members = members
    for topic in org.push_topics:
        _check_push_topic(org, topic)
    return org


def _no_duplicates(section: str, names: list[str]) -> None:
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise OrgError(f"{section}: duplicate names {repeated}")


def _check_push_topic(org: OrgSpec, topic: PushTopicDef) -> None:
    """A PushTopic's query must parse and name an object and fields of this org."""
    from sfstream_emulator.soql import SoqlError, parse

    try:
        query = parse(topic.query)
    except SoqlError as exc:
        raise OrgError(f"push topic {topic.name}: invalid query: {exc}") from exc
    obj = org.object(query.entity)
    if obj is None:
        raise OrgError(f"push topic {topic.name}: unknown object {query.entity!r} in its query")
    if query.count_only:
        raise OrgError(f"push topic {topic.name}: a PushTopic query cannot use COUNT()")
    unknown = [f for f in (*query.fields, *query.where_fields) if obj.field_ci(f) is None]
    if unknown:
        raise OrgError(f"push topic {topic.name}: no field(s) {unknown} on {obj.name}")
    if "id" not in {f.lower() for f in query.fields}:
        raise OrgError(f"push topic {topic.name}: the query must select Id")


# libyaml's parser when PyYAML was built with it: the pure-Python one takes tens of
# milliseconds for the default org, which every emulator start pays.
_LOADER: Final[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _parse_yaml(text: str, source: str) -> Any:
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        raise OrgError(f"{source} is not valid YAML: {exc}") from exc


@functools.cache
def _default_org_data() -> Any:
    """The parsed bundled org; parsed once per process, copied for every load."""
    text = resources.files("sfstream_emulator").joinpath("default_org.yaml").read_text()
    return _parse_yaml(text, "default_org.yaml")


def load_org(path: str | Path | None = None) -> OrgSpec:
    """Load and complete an org from YAML; the bundled default org when `path` is None.

    Raises:
        OrgError: the file is unreadable, is not valid YAML, or does not describe an org.
    """
    if path is None:
        source = "default_org.yaml"
        raw = copy.deepcopy(_default_org_data())
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
            raise OrgError(f"cannot read org file {path}: {reason}") from exc
        raw = _parse_yaml(text, source)
    if not isinstance(raw, dict):
        raise OrgError(f"{source}: an org file is a mapping at the top level")
    try:
        org = OrgSpec.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise OrgError(f"{source}: {problems}") from exc
    return complete(org)
