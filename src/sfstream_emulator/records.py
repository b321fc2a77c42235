"""Records of the emulated org, and the change events their changes raise.

Every REST call that writes records runs one `Transaction`: its changes are validated,
applied, and on commit turned into change events (one per change, numbered by
`sequenceNumber`, identical changes merged into one event naming several records, as
Salesforce does) and into PushTopic notifications for the topics whose query matches.

Change event bodies follow the CometD rules (Salesforce, "Change Event Body Fields"): a
create or undelete carries every non-empty field, an update only the changed fields plus
`LastModifiedDate` (and `LastModifiedById` when the modifying user changed), a delete no
fields. Compound fields (addresses, geolocations, a contact's Name) are nested, and
`changedFields` names a changed component as `BillingAddress.City`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

import orjson

from sfstream_emulator.bus import BusEvent
from sfstream_emulator.ids import is_valid_id, to18
from sfstream_emulator.org import FieldDef, ObjectDef, component_key
from sfstream_emulator.runtime import ChangeEvent, OrgRuntime
from sfstream_emulator.schemas import CDC_EXCLUDED
from sfstream_emulator.soql import Query, parse
from sfstream_emulator.values import FieldValueError, coerce, format_datetime, rest_value

ChangeType = Literal["CREATE", "UPDATE", "DELETE", "UNDELETE"]
_TOPIC_EVENT: Final = {
    "CREATE": "created",
    "UPDATE": "updated",
    "DELETE": "deleted",
    "UNDELETE": "undeleted",
}
_AUDIT: Final = frozenset({"LastModifiedDate", "LastModifiedById", "SystemModstamp"})


class RecordError(Exception):
    """A write Salesforce refuses: HTTP status and the REST error entries."""

    def __init__(self, status: int, error_code: str, message: str, fields: list[str] | None = None):
        super().__init__(message)
        self.status = status
        self.error_code = error_code
        self.message = message
        self.fields = fields or []

    def as_error(self) -> dict[str, Any]:
        """The entry of a REST error array (`[{"message", "errorCode", "fields"}]`)."""
        return {"message": self.message, "errorCode": self.error_code, "fields": self.fields}

    @classmethod
    def from_value(cls, exc: FieldValueError) -> RecordError:
        # A missing-fields error names several fields, comma-separated.
        return cls(400, exc.error_code, str(exc), exc.field.split(","))


def not_found() -> RecordError:
    return RecordError(404, "NOT_FOUND", "The requested resource does not exist")


def check_record_id(obj: ObjectDef, record_id: str) -> None:
    """Refuse, as the REST API does, an id in a record URL that cannot be one of `obj`'s.

    Raises:
        RecordError: 404 `NOT_FOUND` for a malformed id or another object's key prefix.
    """
    if not is_valid_id(record_id) or record_id[:3] != obj.key_prefix:
        raise RecordError(
            404,
            "NOT_FOUND",
            f"Provided external ID field does not exist or is not accessible: {record_id}",
        )


@dataclass(frozen=True, slots=True)
class RecordWrite:
    """What one record write did: the record's id and the change event it raised.

    `replay_id` is None when the write raised no change event: the object is not selected
    for Change Data Capture, or an update changed nothing.
    """

    record_id: str
    replay_id: int | None


def _required_missing(fields: list[str]) -> RecordError:
    return RecordError(
        400,
        "REQUIRED_FIELD_MISSING",
        f"Required fields are missing: [{', '.join(fields)}]",
        fields,
    )


@dataclass(slots=True)
class _Change:
    obj: ObjectDef
    change_type: ChangeType
    record_id: str
    before: dict[str, Any] | None
    after: dict[str, Any] | None
    changed: list[str] = field(default_factory=list)


class RecordStore:
    """All records of the org, by object."""

    def __init__(self, runtime: OrgRuntime) -> None:
        self.runtime = runtime
        self.records: dict[str, dict[str, dict[str, Any]]] = {
            obj.name: {} for obj in runtime.spec.objects
        }
        self.recycle_bin: dict[str, tuple[str, dict[str, Any]]] = {}
        self._auto_numbers: dict[str, int] = {}
        self._topic_queries: dict[tuple[str, str], Query] = {}

    def object_for_id(self, record_id: str) -> ObjectDef:
        """The object a record id belongs to, by its key prefix."""
        obj = self.runtime.spec.object_by_prefix(record_id[:3])
        if obj is None:
            raise not_found()
        return obj

    def get(self, obj: ObjectDef, record_id: str) -> dict[str, Any]:
        """A live record's values.

        Raises:
            RecordError: 404 for an unknown id, `ENTITY_IS_DELETED` for one in the recycle bin.
        """
        if not is_valid_id(record_id):
            raise not_found()
        full = to18(record_id)
        record = self.records.get(obj.name, {}).get(full)
        if record is None:
            if full in self.recycle_bin:
                raise RecordError(404, "ENTITY_IS_DELETED", "entity is deleted")
            raise not_found()
        return record

    def transaction(self, origin: str) -> Transaction:
        """Start a transaction whose change events carry `origin` as `changeOrigin`."""
        return Transaction(self, origin)

    def rest_record(
        self,
        obj: ObjectDef,
        record: dict[str, Any],
        fields: list[str] | None = None,
        *,
        version: str | None = None,
    ) -> dict[str, Any]:
        """A record as the REST API returns it, with `attributes` first.

        `fields` None means every field; `version` is the API version of the request (the
        emulator's own when not given), which the `attributes.url` repeats.
        """
        shown_version = version or self.runtime.api_version
        result: dict[str, Any] = {
            "attributes": {
                "type": obj.name,
                "url": f"/services/data/v{shown_version}/sobjects/{obj.name}/{record['Id']}",
            }
        }
        wanted = [f.name for f in obj.fields] if fields is None else fields
        for name in wanted:
            field_def = obj.field_ci(name)
            if field_def is None:
                continue
            result[field_def.name] = self._rest_field(obj, field_def, record)
        return result

    def _rest_field(self, obj: ObjectDef, field_def: FieldDef, record: dict[str, Any]) -> Any:
        if field_def.is_compound:
            parts = obj.compound_parts(field_def.name)
            values = {component_key(field_def, p): record.get(p.name) for p in parts}
            if all(v is None for v in values.values()):
                return None
            return {k[0].lower() + k[1:]: v for k, v in values.items()}
        return rest_value(field_def, record.get(field_def.name))

    def next_auto_number(self, obj: ObjectDef, field_def: FieldDef) -> str:
        key = f"{obj.name}.{field_def.name}"
        self._auto_numbers[key] = self._auto_numbers.get(key, 1000) + 1
        return f"{self._auto_numbers[key]:08d}"

    def topic_query(self, name: str, text: str) -> Query:
        key = (name, text)
        query = self._topic_queries.get(key)
        if query is None:
            query = parse(text)
            self._topic_queries[key] = query
        return query


class Transaction:
    """One unit of work: changes applied now, events published on `commit`."""

    def __init__(self, store: RecordStore, origin: str) -> None:
        self.store = store
        self.origin = origin
        self.now = format_datetime(store.runtime.clock.now())
        """The transaction's time: every record it writes carries the same audit dates."""
        self.changes: list[_Change] = []
        self.published: list[BusEvent] = []
        """The change events `commit` published, in order."""
        self._undo: list[tuple[str, str, dict[str, Any] | None, tuple[str, dict[str, Any]] | None]]
        self._undo = []

    # -- writes -----------------------------------------------------------------------------

    def _checked_values(
        self, obj: ObjectDef, values: dict[str, Any], creating: bool
    ) -> dict[str, Any]:
        checked: dict[str, Any] = {}
        for key, value in values.items():
            if key == "attributes":
                continue
            field_def = obj.field_ci(key)
            if field_def is None:
                raise RecordError(
                    400, "INVALID_FIELD", f"No such column '{key}' on sobject of type {obj.name}"
                )
            allowed = field_def.createable if creating else field_def.updateable
            if key.lower() == "id" and not creating:
                continue
            if (
                not allowed
                or field_def.is_compound
                or (field_def.system and field_def.name != "OwnerId")
            ):
                raise RecordError(
                    400,
                    "INVALID_FIELD_FOR_INSERT_UPDATE",
                    f"Unable to create/update fields: {field_def.name}. Please check the "
                    "security settings of this field and verify that it is read/write for "
                    "your profile or permission set.",
                    [field_def.name],
                )
            try:
                coerced = coerce(field_def, value)
            except FieldValueError as exc:
                raise RecordError.from_value(exc) from exc
            if coerced is None and field_def.type == "boolean" and not field_def.nillable:
                coerced = False  # a checkbox set to null is unchecked
            checked[field_def.name] = coerced
        return checked

    @staticmethod
    def _nulled_required(obj: ObjectDef, checked: dict[str, Any]) -> list[str]:
        """Required fields that `checked` explicitly sets to null."""
        return [
            name
            for name, value in checked.items()
            if value is None
            and (field_def := obj.field(name)) is not None
            and not field_def.nillable
            and not field_def.system
        ]

    def create(self, obj: ObjectDef, values: dict[str, Any]) -> str:
        """Insert a record; returns its id."""
        runtime = self.store.runtime
        checked = self._checked_values(obj, values, creating=True)
        now = self.now
        user = runtime.spec.user.id
        record: dict[str, Any] = {}
        missing = self._nulled_required(obj, checked)
        for field_def in obj.fields:
            if field_def.name in checked:
                record[field_def.name] = checked[field_def.name]
            elif field_def.auto_number:
                record[field_def.name] = self.store.next_auto_number(obj, field_def)
            elif field_def.default_value is not None:
                record[field_def.name] = field_def.default_value
            elif (
                not field_def.nillable
                and field_def.createable
                and not field_def.system
                and not field_def.is_compound
            ):
                missing.append(field_def.name)
            else:
                record[field_def.name] = None
        if missing:
            missing = [f.name for f in obj.fields if f.name in missing]
            raise _required_missing(missing)
        record_id = runtime.ids.new(obj.key_prefix)
        record.update(
            Id=record_id,
            IsDeleted=False,
            CreatedDate=now,
            CreatedById=user,
            LastModifiedDate=now,
            LastModifiedById=user,
            SystemModstamp=now,
        )
        if obj.field("OwnerId") is not None and record.get("OwnerId") is None:
            record["OwnerId"] = user
        _derive_name(obj, record)
        self._undo.append((obj.name, record_id, None, None))
        self.store.records[obj.name][record_id] = record
        self.changes.append(_Change(obj, "CREATE", record_id, None, record))
        return record_id

    def update(self, obj: ObjectDef, record_id: str, values: dict[str, Any]) -> None:
        """Change fields of a live record."""
        record = self.store.get(obj, record_id)
        checked = self._checked_values(obj, values, creating=False)
        missing = self._nulled_required(obj, checked)
        if missing:
            raise _required_missing(missing)
        before = dict(record)
        changed = [name for name, value in checked.items() if record.get(name) != value]
        if not changed:
            return
        now = self.now
        self._undo.append((obj.name, record["Id"], before, None))
        record.update(checked)
        _derive_name(obj, record)
        record["LastModifiedDate"] = now
        record["SystemModstamp"] = now
        if record.get("LastModifiedById") != self.store.runtime.spec.user.id:
            record["LastModifiedById"] = self.store.runtime.spec.user.id
            changed.append("LastModifiedById")
        changed.append("LastModifiedDate")
        self.changes.append(_Change(obj, "UPDATE", record["Id"], before, record, changed))

    def delete(self, obj: ObjectDef, record_id: str) -> None:
        """Move a live record to the recycle bin."""
        record = self.store.get(obj, record_id)
        full = record["Id"]
        self._undo.append((obj.name, full, dict(record), None))
        del self.store.records[obj.name][full]
        record["IsDeleted"] = True
        self.store.recycle_bin[full] = (obj.name, record)
        self.changes.append(_Change(obj, "DELETE", full, record, None))

    def undelete(self, record_id: str) -> ObjectDef:
        """Restore a record from the recycle bin."""
        if not is_valid_id(record_id):
            raise RecordError(400, "MALFORMED_ID", f"malformed id {record_id}")
        full = to18(record_id)
        entry = self.store.recycle_bin.get(full)
        if entry is None:
            # Salesforce gives the same answer for a live record and for one that is gone
            # for good (purged from the recycle bin, or never there).
            raise RecordError(400, "UNDELETE_FAILED", "Entity is not in the recycle bin")
        obj_name, record = entry
        obj = self.store.runtime.spec.object(obj_name)
        assert obj is not None
        self._undo.append((obj_name, full, None, entry))
        del self.store.recycle_bin[full]
        record["IsDeleted"] = False
        self.store.records[obj_name][full] = record
        self.changes.append(_Change(obj, "UNDELETE", full, None, record))
        return obj

    def rollback(self) -> None:
        """Undo every change of this transaction; nothing is published."""
        for obj_name, record_id, before, recycled in reversed(self._undo):
            live = self.store.records[obj_name]
            self.store.recycle_bin.pop(record_id, None)
            live.pop(record_id, None)
            if recycled is not None:
                self.store.recycle_bin[record_id] = recycled
                recycled[1]["IsDeleted"] = True
            elif before is not None:
                if before.get("IsDeleted"):
                    self.store.recycle_bin[record_id] = (obj_name, before)
                else:
                    live[record_id] = before
        self.changes.clear()
        self._undo.clear()

    # -- events -----------------------------------------------------------------------------

    def commit(self) -> int:
        """Publish the change events and PushTopic notifications; returns the event count."""
        runtime = self.store.runtime
        events: list[ChangeEvent] = []
        for change in self.changes:
            if not runtime.cdc_channels_for(change.obj.name):
                # Entities not selected for Change Data Capture raise no change event, and
                # take no place in the transaction's sequenceNumber order either.
                continue
            event = ChangeEvent(
                change.obj.name,
                change.change_type,
                [change.record_id],
                _event_fields(change),
                _changed_field_names(change.obj, change.changed),
            )
            previous = events[-1] if events else None
            if previous is not None and _mergeable(previous, event):
                previous.record_ids.append(change.record_id)
            else:
                events.append(event)
        published = runtime.publish_change_events(events, self.origin)
        for change in self.changes:
            self._notify_topics(change)
        self.changes.clear()
        self._undo.clear()
        self.published.extend(published)
        return len(published)

    def _notify_topics(self, change: _Change) -> None:
        runtime = self.store.runtime
        for topic in runtime.spec.push_topics:
            if not topic.is_active:
                continue
            query = self.store.topic_query(topic.name, topic.query)
            if query.entity.lower() != change.obj.name.lower():
                continue
            flag = {
                "CREATE": topic.notify_for_operation_create,
                "UPDATE": topic.notify_for_operation_update,
                "DELETE": topic.notify_for_operation_delete,
                "UNDELETE": topic.notify_for_operation_undelete,
            }[change.change_type]
            state = change.before if change.change_type == "DELETE" else change.after
            if not flag or state is None:
                continue
            # Conditions see stored values (datetimes in the `Z` form SOQL literals take), the
            # notification shows REST values.
            if not query.matches(state):
                continue
            rest = {f.name: self.store._rest_field(change.obj, f, state) for f in change.obj.fields}
            if change.change_type == "UPDATE" and not _topic_fields_changed(
                topic.notify_for_fields, query, change.changed
            ):
                continue
            sobject = {}
            for name in query.fields:
                field_def = change.obj.field_ci(name)
                if field_def is not None:
                    sobject[field_def.name] = rest.get(field_def.name)
            runtime.publish_push_topic(topic.name, _TOPIC_EVENT[change.change_type], sobject, rest)


def _derive_name(obj: ObjectDef, record: dict[str, Any]) -> None:
    """A contact's Name is computed from its components, as in Salesforce."""
    name_field = obj.field("Name")
    if name_field is None or name_field.createable:
        return
    parts = [p for p in obj.compound_parts("Name") if p.name != "Salutation"]
    if parts:
        record["Name"] = " ".join(str(record[p.name]) for p in parts if record.get(p.name)) or None


def _event_fields(change: _Change) -> dict[str, Any]:
    obj = change.obj
    if change.change_type == "DELETE":
        return {}
    record = change.after or {}
    if change.change_type == "UPDATE":
        wanted = set(change.changed)
        include_nulls = True
    else:
        wanted = {name for name, value in record.items() if value is not None}
        include_nulls = False
    fields: dict[str, Any] = {}
    compounds = {f.compound_field_name for f in obj.fields if f.compound_field_name}
    for field_def in obj.top_level_fields():
        name = field_def.name
        if name in CDC_EXCLUDED or name == "Id" or field_def.calculated:
            continue
        if name in compounds:
            nested = {
                component_key(field_def, part): record.get(part.name)
                for part in obj.compound_parts(name)
                if part.name in wanted and (include_nulls or record.get(part.name) is not None)
            }
            if nested:
                fields[name] = nested
        elif name in wanted:
            fields[name] = record.get(name)
    return fields


def _changed_field_names(obj: ObjectDef, changed: list[str]) -> list[str]:
    names = []
    for name in changed:
        field_def = obj.field(name)
        if field_def is None or name in ("SystemModstamp",):
            continue
        if field_def.compound_field_name:
            compound = obj.field(field_def.compound_field_name)
            assert compound is not None
            names.append(f"{compound.name}.{component_key(compound, field_def)}")
        else:
            names.append(name)
    return names


def _mergeable(previous: ChangeEvent, event: ChangeEvent) -> bool:
    return (
        previous.entity == event.entity
        and previous.change_type == event.change_type
        and previous.changed_fields == event.changed_fields
        and orjson.dumps(previous.fields) == orjson.dumps(event.fields)
    )


def _topic_fields_changed(notify_for_fields: str, query: Query, changed: list[str]) -> bool:
    business = {name.lower() for name in changed if name not in _AUDIT}
    if not business:
        return False
    if notify_for_fields == "All":
        return True
    selected = {name.lower() for name in query.fields}
    where = {name.lower() for name in query.where_fields}
    relevant = {"Select": selected, "Where": where}.get(notify_for_fields, selected | where)
    return bool(business & relevant)
