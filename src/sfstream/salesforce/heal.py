"""Reading records back through REST, to heal the gaps Change Data Capture leaves.

Salesforce sends a gap event (`GAP_CREATE`, `GAP_UPDATE`, `GAP_DELETE`, `GAP_UNDELETE`) when it
cannot send a change itself: an event over 1 MB, some field type conversions, an internal
error, a change made directly in the database. Its header names the records (`recordIds`),
but the event carries no field values. `GAP_OVERFLOW` comes when one transaction changes more
than 100,000 records; its `recordIds` may be a wildcard such as `001*` (every record of the
entity with that key prefix). See "Change Data Capture Developer Guide: Gap Events" and
"Overflow Events".

- `read_records`: the current values of named records, through sObject Collections
  (`GET /composite/sobjects/{SObject}?ids=...&fields=...`, 200 ids a call). A record that no
  longer exists comes back as None (deleted, or never there).
- `read_window`: the records of an entity changed in a time window, through SOQL on
  `SystemModstamp` (paged by `nextRecordsUrl`). A window of more than a few hundred thousand
  records would want Bulk API 2.0 instead (a query job: no request per 2,000 records, and
  no 10-minute query cursor limit); this reads through the REST query API.

The fields read are the entity's fields that describe lists as queryable, except compound
fields (`Address`, `Location`: their components are read) and base64 fields (a
`GET` would return a URL to the blob, not its content).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

from sfstream.errors import ProtocolError
from sfstream.salesforce.rest import RestClient

COLLECTION_LIMIT: Final = 200
"""Ids per sObject Collections request (Salesforce's limit)."""
_SKIPPED_TYPES: Final = frozenset({"address", "location", "base64"})


async def readable_fields(rest: RestClient, sobject: str) -> list[str]:
    """The entity's fields to read back (see the module)."""
    described = await rest.describe(sobject)
    fields = described.get("fields")
    if not isinstance(fields, list):
        raise ProtocolError(f"describe of {sobject} lacks `fields`")
    names = []
    for field in fields:
        if not isinstance(field, dict) or not isinstance(field.get("name"), str):
            continue
        if field.get("type") in _SKIPPED_TYPES:
            continue
        names.append(field["name"])
    if "Id" not in names:
        names.insert(0, "Id")
    return names


async def read_records(
    rest: RestClient, sobject: str, ids: Sequence[str], fields: Sequence[str]
) -> dict[str, dict[str, Any] | None]:
    """Record id -> its current field values (without `attributes`), or None when it does
    not exist any more."""
    found: dict[str, dict[str, Any] | None] = {}
    wanted = list(dict.fromkeys(ids))
    for start in range(0, len(wanted), COLLECTION_LIMIT):
        chunk = wanted[start : start + COLLECTION_LIMIT]
        body = await rest.get(
            f"composite/sobjects/{sobject}", {"ids": ",".join(chunk), "fields": ",".join(fields)}
        )
        if not isinstance(body, list) or len(body) != len(chunk):
            raise ProtocolError(f"sObject Collections read of {sobject} gave {type(body).__name__}")
        for record_id, record in zip(chunk, body, strict=True):
            found[record_id] = _values(record) if isinstance(record, dict) else None
    return found


async def read_window(
    rest: RestClient,
    sobject: str,
    fields: Sequence[str],
    *,
    since: datetime,
    until: datetime,
    prefix: str | None = None,
) -> list[dict[str, Any]]:
    """The records of `sobject` whose `SystemModstamp` is in `[since, until]` (those whose id
    starts with `prefix`, when given), oldest change first."""
    where = f"SystemModstamp >= {_soql_time(since)} AND SystemModstamp <= {_soql_time(until)}"
    # The names come from the org's describe and the times are formatted here: no user text.
    soql = f"SELECT {', '.join(fields)} FROM {sobject} WHERE {where} ORDER BY SystemModstamp"  # noqa: S608
    records = [_values(record) for record in await rest.query(soql)]
    if prefix:
        records = [r for r in records if str(r.get("Id", "")).startswith(prefix)]
    return records


def _values(record: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in record.items() if name != "attributes"}


def _soql_time(moment: datetime) -> str:
    """A SOQL datetime literal (UTC, no quotes): `2024-05-01T12:00:00Z`."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
