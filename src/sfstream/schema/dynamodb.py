"""The schema registry in DynamoDB: items in the state's table, when the state is there.

Needs the `aws` extra. The versions share the state's table (see `sfstream.state.dynamodb`
for its keys) under their own partition: `pk = schemas`, `sk = <subject>#v<version, ten
digits>` (`sf.event.account_changes#v0000000002`), so that a `Query` lists a subject's
versions in order, and every subject. Attributes: `subject` S, `version` N, `fingerprint` S,
`json_schema` S, `avro_schema` S and `diff` S (JSON text), `schema_id` S (absent when there is
none), `breaking` BOOL, `created_at` S. A version whose JSON would not fit in an item (400 KB)
keeps the three JSON attributes zlib-compressed instead, as binary `json_schema_z`,
`avro_schema_z` and `diff_z`.

A registration reads the subject's versions (a consistent `Query`) and puts the next one
conditioned on its key being new: when another registrant got there first, it reads again
and returns that version if it has the same schema, so that concurrent registrations agree.
`read_only=True` writes nothing, and a missing table reads as an empty registry. Every boto3
call runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import threading
import zlib
from collections.abc import Callable, Mapping
from typing import Any, Final, TypeVar

import orjson

from sfstream.errors import StorageError
from sfstream.schema.registry import SchemaVersion, next_version
from sfstream.schema.render import fingerprint
from sfstream.state.dynamodb import (
    PK,
    SK,
    ConditionFailedError,
    DynamoDbTable,
    TableMissingError,
)

T = TypeVar("T")

SCHEMAS_PK: Final = "schemas"
# Room left in an item for its keys and other attributes.
_PLAIN_LIMIT: Final = 350_000


class DynamoDbSchemaRegistry:
    """Schema versions in the state's DynamoDB table (see the module).

    Args:
        table: the state's table (`sfstream state init` creates it).
        region: its region; None takes the AWS chain's.
        endpoint_url: the DynamoDB endpoint; None takes boto3's.
        read_only: only read; `register` raises `StorageError`.

    Raises:
        ConfigError: boto3 is not installed, or the table name is malformed.
    """

    def __init__(
        self,
        table: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        read_only: bool = False,
    ) -> None:
        self._table = DynamoDbTable(
            table, region=region, endpoint_url=endpoint_url, role="schema registry"
        )
        self.table = table
        self.region = region
        self.read_only = read_only
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        flag = ", read_only=True" if self.read_only else ""
        return f"DynamoDbSchemaRegistry({self.table!r}, region={self.region!r}{flag})"

    def describe(self) -> str:
        """Where the versions are kept, for messages."""
        return self._table.describe()

    async def register(
        self,
        subject: str,
        schema: dict[str, Any],
        *,
        avro: dict[str, Any],
        schema_id: str | None = None,
    ) -> tuple[SchemaVersion, bool]:
        if self.read_only:
            raise StorageError(
                f"schema registry in {self.describe()} is open read-only; cannot register"
            )
        digest = fingerprint(schema)

        def work() -> tuple[SchemaVersion, bool]:
            while True:
                versions = self._versions(subject, "register")
                for version in versions:
                    if version.fingerprint == digest:
                        return version, False
                made = next_version(
                    subject,
                    schema,
                    avro=avro,
                    schema_id=schema_id,
                    previous=versions[-1] if versions else None,
                )
                try:
                    self._table.call(
                        "register",
                        "put_item",
                        TableName=self.table,
                        Item=_encode(made),
                        ConditionExpression="attribute_not_exists(#pk)",
                        ExpressionAttributeNames={"#pk": PK},
                    )
                except ConditionFailedError:
                    continue  # another registrant took this number: look again
                return made, True

        return await self._run(work)

    async def get(self, subject: str, version: int | None = None) -> SchemaVersion | None:
        def work() -> SchemaVersion | None:
            if version is None:
                versions = self._versions(subject, "get")
                return versions[-1] if versions else None
            try:
                answer = self._table.call(
                    "get",
                    "get_item",
                    TableName=self.table,
                    Key=_key(subject, version),
                    ConsistentRead=True,
                )
            except TableMissingError:
                if self.read_only:
                    return None
                raise
            item = answer.get("Item")
            return self._decode(item) if item else None

        return await self._run(work)

    async def history(self, subject: str) -> list[SchemaVersion]:
        return await self._run(lambda: self._versions(subject, "history"))

    async def subjects(self) -> list[str]:
        def work() -> list[str]:
            items = self._query(
                "subjects",
                KeyConditionExpression="#pk = :pk",
                ExpressionAttributeNames={"#pk": PK, "#subject": "subject"},
                ExpressionAttributeValues={":pk": {"S": SCHEMAS_PK}},
                ProjectionExpression="#subject",
            )
            return sorted({str(item["subject"]["S"]) for item in items if "subject" in item})

        return await self._run(work)

    async def close(self) -> None:
        def work() -> None:
            with self._lock:
                self._closed = True
                self._table.close()

        await asyncio.to_thread(work)

    # -- worker thread ---------------------------------------------------------------------

    async def _run(self, work: Callable[[], T]) -> T:
        def locked() -> T:
            with self._lock:
                if self._closed:
                    raise StorageError(f"schema registry in {self.describe()} is closed")
                return work()

        return await asyncio.to_thread(locked)

    def _versions(self, subject: str, action: str) -> list[SchemaVersion]:
        """Every version of `subject`, oldest first."""
        items = self._query(
            action,
            KeyConditionExpression="#pk = :pk AND begins_with(#sk, :prefix)",
            ExpressionAttributeNames={"#pk": PK, "#sk": SK},
            ExpressionAttributeValues={
                ":pk": {"S": SCHEMAS_PK},
                ":prefix": {"S": f"{subject}#v"},
            },
        )
        versions = [self._decode(item) for item in items]
        return sorted((v for v in versions if v.subject == subject), key=lambda v: v.version)

    def _query(self, action: str, **params: Any) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        start: dict[str, Any] | None = None
        while True:
            page = dict(params, TableName=self.table, ConsistentRead=True)
            if start is not None:
                page["ExclusiveStartKey"] = start
            try:
                answer = self._table.call(action, "query", **page)
            except TableMissingError:
                if self.read_only:
                    return []
                raise
            items.extend(answer.get("Items", []))
            start = answer.get("LastEvaluatedKey")
            if not start:
                return items

    def _decode(self, item: Mapping[str, Any]) -> SchemaVersion:
        try:
            return _decode(item)
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise StorageError(
                f"schema registry in {self.describe()}: the item {item.get(SK)} is not one "
                f"sfstream wrote ({type(exc).__name__}: {exc})"
            ) from exc


def _key(subject: str, version: int) -> dict[str, Any]:
    return {PK: {"S": SCHEMAS_PK}, SK: {"S": f"{subject}#v{version:010d}"}}


def _encode(version: SchemaVersion) -> dict[str, Any]:
    texts = {
        "json_schema": orjson.dumps(version.schema, option=orjson.OPT_SORT_KEYS),
        "avro_schema": orjson.dumps(version.avro, option=orjson.OPT_SORT_KEYS),
        "diff": orjson.dumps(version.diff),
    }
    item: dict[str, Any] = {
        **_key(version.subject, version.version),
        "subject": {"S": version.subject},
        "version": {"N": str(version.version)},
        "fingerprint": {"S": version.fingerprint},
        "breaking": {"BOOL": version.breaking},
        "created_at": {"S": version.created_at},
    }
    if version.schema_id is not None:
        item["schema_id"] = {"S": version.schema_id}
    if sum(len(text) for text in texts.values()) <= _PLAIN_LIMIT:
        item.update({name: {"S": text.decode()} for name, text in texts.items()})
    else:
        item.update({f"{name}_z": {"B": zlib.compress(text, 9)} for name, text in texts.items()})
    return item


def _decode(item: Mapping[str, Any]) -> SchemaVersion:
    def json_of(name: str) -> Any:
        if name in item:
            return orjson.loads(item[name]["S"])
        return orjson.loads(zlib.decompress(item[f"{name}_z"]["B"]))

    schema_id = item.get("schema_id")
    return SchemaVersion(
        subject=str(item["subject"]["S"]),
        version=int(item["version"]["N"]),
        fingerprint=str(item["fingerprint"]["S"]),
        schema=json_of("json_schema"),
        avro=json_of("avro_schema"),
        schema_id=None if schema_id is None else str(schema_id["S"]),
        diff=json_of("diff"),
        breaking=bool(item["breaking"]["BOOL"]),
        created_at=str(item["created_at"]["S"]),
    )
