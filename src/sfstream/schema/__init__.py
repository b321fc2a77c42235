"""Schemas: derived from Salesforce's event definitions, versioned, and tracked at run time."""

from sfstream.schema.compat import Change, diff, is_breaking
from sfstream.schema.model import FieldModel, RecordModel, from_describe, from_event_schema
from sfstream.schema.registry import SchemaRegistry, SchemaVersion, SqliteSchemaRegistry
from sfstream.schema.render import canonical_bytes, fingerprint, to_avro, to_json_schema

__all__ = [
    "Change",
    "FieldModel",
    "RecordModel",
    "SchemaRegistry",
    "SchemaVersion",
    "SqliteSchemaRegistry",
    "canonical_bytes",
    "diff",
    "fingerprint",
    "from_describe",
    "from_event_schema",
    "is_breaking",
    "to_avro",
    "to_json_schema",
]
