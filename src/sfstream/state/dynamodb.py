"""DynamoDB state store, for connectors on AWS whose local disk goes with the task (Fargate,
Lambda).

Needs the `aws` extra (`pip install 'sfstream[aws]'`): boto3 is imported by the first call,
in a worker thread, never when `sfstream` is. Every boto3 call runs in a worker thread; a
`threading.Lock` serializes a store's calls (it stays held when an awaiting task is cancelled
and the thread runs on, and it binds to no event loop: warm AWS Lambda invocations may reuse
the store).

## The table

`sfstream state init --config FILE` creates it (the store never does): on-demand capacity
(`PAY_PER_REQUEST`) and two string keys, `pk` (partition key, HASH) and `sk` (sort key,
RANGE). It holds five kinds of items:

- `pk = checkpoints`, `sk = shard#00` ... `shard#15`: the checkpoints and pending overrides
  of the streams whose id hashes to that shard;
- `pk = lock`, `sk = <stream id>`: the run lock of one stream (`owner`);
- `pk = lease#00` ... `lease#15`, `sk = <stream id>`: the lease of one stream
  (`LeaseStore`), under the shard number of its checkpoint;
- `pk = member`, `sk = <worker id>`: a worker taking part in the leases (`join`);
- `pk = schemas`, `sk = <subject>#v0000000001`: a version of the schema registry
  (`sfstream.schema.dynamodb`).

Each kind has a partition key of its own, so that no stream, worker or subject id can make
two kinds meet.

A shard item has two JSON objects as text: `checkpoints` (stream id -> `replay_id`,
`updated_at`, and `event_time` when the commit gave one) and `overrides` (stream id ->
`start`, absent for the initial replay; `previous`, absent when there was no checkpoint;
`requested_at`); and `version` (N), which counts the item's writes and the acquisitions of
its streams' leases (see below). JSON text rather than DynamoDB maps: it is smaller, and a
shard is always read and written whole.

**Why shards.** A commit is atomic: all its streams are stored, or none. A DynamoDB
transaction writes at most 100 items, and one commit may hold thousands of streams; so the
streams are spread over 16 items by a hash of their id (BLAKE2b), and a commit writes the
shards its streams fall in, in one `TransactWriteItems` (one `PutItem` when they all fall in
one). Each write is conditioned on the `version` the store last saw: a write by another store
meanwhile fails the condition, and the commit reads the shards again and applies itself
again (optimistic concurrency), so that concurrent commits never mix and never lose each
other's streams. Reads take the shards in one `TransactGetItems`: a consistent snapshot. An
item holds at most 400 KB, about 4,000 checkpoints with 30-character stream ids; a commit
writes at most 4 MB, which bounds a table to about 40,000 streams.

As in the other backends, a commit stores what it is given, also a lower replayId (after a
replay gap): the connector only commits positions whose events are durably written, and an
operator's `set`/`reset` is an override that the next run takes over.

**The run lock.** `owner(streams)` puts one lock item per stream (`pk = lock`), conditioned on
there being none or only an expired one: attributes `owner` (a random id of the block),
`holder` (`pid N on host H`), `since` and `expires_at` (epoch seconds). The holder renews the
expiry every 10 s while the block runs (30 s ahead) and deletes its items at the end. A
holder that dies leaves its items to expire: 30 s later another process may take them. If the
renewals fail for 30 s (the holder cut off from DynamoDB), the lock may go to another process
without the holder noticing; it logs `state_lock_lost` when it finds out. Several connectors
can share one table, each with its own streams.

**Leases.** The store is also a `LeaseStore`: one item per stream with `owner` (the worker
id; absent once released), `token` (N, the fencing token), `expires_at` and `acquired_at`,
and, once a fenced commit was refused, `refused` (N, a count), `refused_at`,
`refused_token` and `refused_worker`. A member item has `worker`, `expires_at` and
`joined_at`. Times are epoch seconds of the worker's own `time.time()`: DynamoDB has no
server clock to put in a condition. **The workers' clocks must agree within the skew the
connector allows** (the lease keeper's `skew_s`, see `sfstream.engine.leases`; NTP, as on
AWS hosts, does much better): the owner stops a stream by its own clock, another worker
takes the lease over by its clock, and a taker whose clock runs ahead by more than that
margin could start the stream while the owner still consumes it. Fencing still keeps the
owner's late commits out, but both would write events for a while.

Every lease write is conditional, so that workers racing for a lease never both win:
`acquire` reads the item and writes it back conditioned on the token it read and on the
lease being free (no item, no owner, or `expires_at` before now), with the token one more
(1 for a new item); a lease the worker holds is extended instead (same token). `renew`
and `release` are conditioned on `owner` and `token`. A lost condition means "not taken"
(or not renewed), never an error. Each stream is one or two calls, made one after the
other. `members()` leaves out the members past their expiry, and deletes their items
(workers that stopped without leaving would pile up).

A fenced commit (`commit(..., fence=...)`) adds to its transaction a `ConditionCheck` per
stream on the lease item (`token` is the fence's): when another worker took a lease over
meanwhile the transaction is cancelled, nothing is stored, the refusal is counted in the
stale leases and the commit raises `LeaseLostError`. A transaction holds 100 items: a
fenced commit whose streams and shards do not fit in one reads the lease items instead,
refuses a stale one, and writes its shards conditioned on their versions as always; this
is atomic too because taking a lease over also increments the `version` of the stream's
checkpoint shard (in the same transaction as the lease), so that a takeover after the read
fails the shard write, and the commit reads the leases again.

`read_only=True` writes nothing (a missing table reads as no checkpoints and no leases);
every change raises `StorageError`.

**Errors.** Throttling, DynamoDB's 5xx answers and an unreachable endpoint are
`StorageUnavailableError` (retryable); a missing table (with the hint to run `sfstream state
init`), an identity without permission, a table with other keys are `StorageError`
(terminal). The role needs `dynamodb:GetItem`, `PutItem`, `UpdateItem`, `DeleteItem` and
`Query` on the table, `ConditionCheckItem` for fenced commits (and `DescribeTable` and
`CreateTable` for `state init`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import os
import random
import re
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from types import TracebackType
from typing import Any, Final, Self, TypeVar

import orjson
import structlog

from sfstream.errors import (
    ConfigError,
    LeaseLostError,
    SfStreamError,
    StorageError,
    StorageUnavailableError,
)
from sfstream.secrets import _boto
from sfstream.state._common import (
    check_batch,
    check_start,
    check_stream,
    check_streams,
    check_tokens,
    check_ttl,
    check_worker,
    iso_utc,
    owned_message,
    utc_now,
)
from sfstream.state.base import (
    Checkpoint,
    Fence,
    Lease,
    Member,
    Override,
    StreamOwnedError,
    check_event_times,
    check_fence,
    fence_error,
)

T = TypeVar("T")
V = TypeVar("V")

log = structlog.get_logger("sfstream.state")

SHARDS: Final = 16
"""Items the checkpoints are spread over (see the module); part of the table's layout."""
LOCK_TTL_S: Final = 30.0
"""How long a run lock outlives its last renewal."""
PK: Final = "pk"
SK: Final = "sk"
CHECKPOINTS_PK: Final = "checkpoints"
LOCK_PK: Final = "lock"
LEASE_PK: Final = "lease"
"""Lease items have `pk = lease#NN`, NN the stream's shard."""
MEMBER_PK: Final = "member"

_TABLE_NAME: Final = re.compile(r"^[A-Za-z0-9_.\-]{3,255}$")
_TRANSACTION_ITEMS: Final = 100
# How long a call keeps retrying writes that lose to concurrent writers before it reports
# the table as unavailable.
_CONTENTION_LIMIT_S: Final = 30.0
_TRANSIENT_CODES: Final = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "InternalFailure",
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "TransactionInProgressException",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredTokenException",
    }
)
_CREDENTIAL_CODES: Final = frozenset(
    {
        "UnrecognizedClientException",
        "InvalidClientTokenId",
        "InvalidSignatureException",
        "SignatureDoesNotMatch",
        "MissingAuthenticationTokenException",
        "MissingAuthenticationToken",
    }
)
# Reasons a transaction is cancelled that another attempt settles.
_RETRY_REASONS: Final = frozenset({"None", "ConditionalCheckFailed", "TransactionConflict"})
_THROTTLED_REASONS: Final = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded"})


class TableMissingError(StorageError):
    """The DynamoDB table does not exist."""


class _StaleFence(Exception):  # noqa: N818 - internal: becomes `LeaseLostError`
    """A fenced commit met leases whose token is no longer the fence's (sorted)."""

    def __init__(self, streams: list[str]) -> None:
        super().__init__(", ".join(streams))
        self.streams = streams


class ConditionFailedError(Exception):
    """A conditional write (or a transaction) lost: another writer changed an item first.

    Attributes:
        reasons: the cancellation reason of each item of a transaction, in order
            (`ConditionalCheckFailed`, `TransactionConflict`, `None`); one reason for a
            single write.
        items: for each reason, the item as it is now when the request asked for it
            (`ReturnValuesOnConditionCheckFailure=ALL_OLD`) and its condition failed.
    """

    def __init__(
        self, reasons: list[str], items: list[dict[str, Any] | None] | None = None
    ) -> None:
        super().__init__(", ".join(reasons))
        self.reasons = reasons
        self.items = items if items is not None else [None] * len(reasons)


def check_table_name(table: object) -> str:
    """`table` if it is a valid DynamoDB table name, else `ConfigError`."""
    if not isinstance(table, str) or not _TABLE_NAME.match(table):
        raise ConfigError(
            f"DynamoDB table name {table!r} must have 3 to 255 letters, digits, '_', '-' or '.'"
        )
    return table


class DynamoDbTable:
    """One DynamoDB table through boto3's low-level client, shared by the state store and the
    schema registry: blocking calls (run them in a worker thread), errors translated.

    Args:
        name: the table.
        region: its region; None takes the AWS chain's (`AWS_REGION`, the profile).
        endpoint_url: the DynamoDB endpoint; None takes boto3's (which honours
            `AWS_ENDPOINT_URL_DYNAMODB` and `AWS_ENDPOINT_URL`).
        role: what the table serves, for messages (`state store`, `schema registry`).

    Raises:
        ConfigError: boto3 is not installed, or the name is not a table name.
    """

    def __init__(
        self,
        name: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        role: str = "state store",
    ) -> None:
        # Only looked for: importing boto3 takes a while, and happens in the worker thread.
        if importlib.util.find_spec("boto3") is None:
            raise ConfigError(f"the DynamoDB {role} needs boto3: pip install 'sfstream[aws]'")
        self.name = check_table_name(name)
        self.region = region
        self.endpoint_url = endpoint_url
        self.role = role
        self._client: Any = None
        self._client_lock = threading.Lock()

    def describe(self) -> str:
        """`DynamoDB table 'x' (eu-west-1)`, for messages."""
        return f"DynamoDB table {self.name!r}" + (f" ({self.region})" if self.region else "")

    def client(self) -> Any:
        """The boto3 client, made on first use (blocking: it loads the service model)."""
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = _boto.client(
                        "dynamodb", region=self.region, endpoint_url=self.endpoint_url
                    )
                except ImportError as exc:
                    raise ConfigError(
                        f"the DynamoDB {self.role} needs boto3: pip install 'sfstream[aws]'"
                    ) from exc
                except Exception as exc:
                    raise self.translate("connect", exc) from exc
            return self._client

    def call(self, action: str, operation: str, **params: Any) -> dict[str, Any]:
        """`client.<operation>(**params)`; `action` says what for, in messages (`commit`).

        Raises:
            ConditionFailedError: a condition failed, or a transaction was cancelled for
                reasons another attempt may settle.
            TableMissingError: the table does not exist.
            StorageUnavailableError, StorageError: anything else, translated.
        """
        client = self.client()
        try:
            response: dict[str, Any] = getattr(client, operation)(**params)
        except Exception as exc:
            code = _boto.error_of(exc)[0]
            if code == "ConditionalCheckFailedException":
                item = getattr(exc, "response", {}).get("Item")
                raise ConditionFailedError(["ConditionalCheckFailed"], [item or None]) from exc
            if code in ("TransactionConflictException", "TransactionConflict"):
                raise ConditionFailedError(["TransactionConflict"]) from exc
            if code == "TransactionCanceledException":
                reasons, items = _cancellation_reasons(exc)
                if reasons and all(reason in _RETRY_REASONS for reason in reasons):
                    raise ConditionFailedError(reasons, items) from exc
                if any(reason in _THROTTLED_REASONS for reason in reasons):
                    raise StorageUnavailableError(
                        f"{self.describe()}: {action} was throttled ({', '.join(reasons)}); "
                        f"will retry"
                    ) from exc
            raise self.translate(action, exc) from exc
        return response

    def close(self) -> None:
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def translate(self, action: str, exc: Exception) -> SfStreamError:
        """The sfstream error for what boto3 raised: the one place that maps them."""
        where = self.describe()
        code, said, status = _boto.error_of(exc)
        if code is None:
            kind = type(exc).__name__
            if kind == "NoRegionError":
                return StorageError(
                    f"{where}: no AWS region is configured; set state.region or AWS_REGION"
                )
            if kind in ("NoCredentialsError", "PartialCredentialsError"):
                return StorageError(
                    f"{where}: no AWS credentials were found (a task or execution role, "
                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
                )
            if isinstance(exc, ValueError | TypeError):  # a malformed request: our bug
                return StorageError(f"{where}: {action} failed: {kind}: {exc}")
            return StorageUnavailableError(
                f"{where}: {action} failed: DynamoDB cannot be reached ({kind}: {exc})"
            )
        detail = f"{code}: {said}" if said else code
        if code in _TRANSIENT_CODES or (status is not None and status >= 500):
            return StorageUnavailableError(f"{where}: {action} failed for now ({detail})")
        if code == "ResourceNotFoundException":
            return TableMissingError(
                f"{where} does not exist ({action}); create it with "
                f"`sfstream state init --config FILE`, or check state.table and state.region"
            )
        if code in ("AccessDeniedException", "AccessDenied"):
            return StorageError(
                f"{where}: the AWS identity in use may not {action} ({detail}); allow it the "
                f"DynamoDB actions listed in docs/operations.md on the table"
            )
        if code in _CREDENTIAL_CODES:
            return StorageError(f"{where}: AWS refused the credentials in use ({detail})")
        if code == "ValidationException" and "size" in said.lower():
            if self.role == "state store":
                remedy = (
                    "the checkpoints of the streams that share an item outgrew it; spread the "
                    "streams over several connectors, each with its own table"
                )
            else:
                remedy = "keep the schema registry in an SQLite file (backend: sqlite)"
            return StorageError(
                f"{where}: {action} was refused ({detail}): an item holds 400 KB at most; {remedy}"
            )
        if code == "ValidationException":
            return StorageError(
                f"{where}: {action} was refused ({detail}); the table must have the string "
                f"keys pk (partition) and sk (sort), as `sfstream state init` creates it"
            )
        return StorageError(f"{where}: {action} was refused ({detail})")

    # -- creating the table ----------------------------------------------------------------

    def create(self, *, wait_s: float = 120.0) -> bool:
        """Create the table (see `sfstream.state.dynamodb`); True when it was created, False
        when it exists already with the expected keys.

        Raises:
            StorageError: it exists with other keys, or it cannot be created.
        """
        try:
            self.call(
                "create the table",
                "create_table",
                TableName=self.name,
                AttributeDefinitions=[
                    {"AttributeName": PK, "AttributeType": "S"},
                    {"AttributeName": SK, "AttributeType": "S"},
                ],
                KeySchema=[
                    {"AttributeName": PK, "KeyType": "HASH"},
                    {"AttributeName": SK, "KeyType": "RANGE"},
                ],
                BillingMode="PAY_PER_REQUEST",
            )
            created = True
        except StorageError as exc:
            if _boto.error_of(exc.__cause__)[0] != "ResourceInUseException":
                raise
            created = False
        deadline = time.monotonic() + wait_s
        while True:
            table = self.call("describe the table", "describe_table", TableName=self.name)
            description = table.get("Table", {})
            self._check_keys(description)
            status = description.get("TableStatus")
            if status == "ACTIVE":
                return created
            if status not in ("CREATING", "UPDATING") or time.monotonic() > deadline:
                raise StorageError(f"{self.describe()} is {status}, not ACTIVE")
            time.sleep(1.0)

    def _check_keys(self, description: Mapping[str, Any]) -> None:
        keys = {
            (k.get("AttributeName"), k.get("KeyType")) for k in description.get("KeySchema", [])
        }
        types = {
            a.get("AttributeName"): a.get("AttributeType")
            for a in description.get("AttributeDefinitions", [])
        }
        if keys != {(PK, "HASH"), (SK, "RANGE")} or types.get(PK) != "S" or types.get(SK) != "S":
            shown = ", ".join(f"{name} ({kind})" for name, kind in sorted(keys, key=str))
            raise StorageError(
                f"{self.describe()} exists with the keys {shown or 'none'}; sfstream needs the "
                f"string keys pk (HASH) and sk (RANGE): give state.table another name"
            )


class _Shard:
    """One shard item as read (or written): its version (0 when it does not exist), the
    checkpoints and the pending overrides of its streams."""

    __slots__ = ("checkpoints", "index", "overrides", "version")

    def __init__(
        self,
        index: int,
        version: int = 0,
        checkpoints: dict[str, Checkpoint] | None = None,
        overrides: dict[str, Override] | None = None,
    ) -> None:
        self.index = index
        self.version = version
        self.checkpoints = checkpoints if checkpoints is not None else {}
        self.overrides = overrides if overrides is not None else {}

    def copy(self) -> _Shard:
        return _Shard(self.index, self.version, dict(self.checkpoints), dict(self.overrides))

    def same_content(self, other: _Shard) -> bool:
        return self.checkpoints == other.checkpoints and self.overrides == other.overrides


def shard_of(stream: str) -> int:
    """The shard `stream` is kept in (stable across processes and releases)."""
    digest = hashlib.blake2b(stream.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % SHARDS


def _shard_key(index: int) -> dict[str, Any]:
    return {PK: {"S": CHECKPOINTS_PK}, SK: {"S": f"shard#{index:02d}"}}


def _lease_pk(index: int) -> str:
    return f"{LEASE_PK}#{index:02d}"


def _lease_key(stream: str) -> dict[str, Any]:
    return {PK: {"S": _lease_pk(shard_of(stream))}, SK: {"S": stream}}


def _member_key(worker: str) -> dict[str, Any]:
    return {PK: {"S": MEMBER_PK}, SK: {"S": worker}}


class DynamoDbStateStore:
    """Checkpoints in a DynamoDB table (see the module for its layout), and leases with
    fencing tokens for workers that share it (`LeaseStore`).

    Use it as an async context manager, or call `close()`.

    Args:
        table: the table's name; `sfstream state init` (or `create_table`) creates it.
        region: its region; None takes the AWS chain's (`AWS_REGION`).
        endpoint_url: the DynamoDB endpoint; None takes boto3's (`AWS_ENDPOINT_URL`).
        read_only: only read (see the module); every change raises `StorageError`.
        lock_ttl_s: how long a run lock outlives its holder's last renewal.

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
        lock_ttl_s: float = LOCK_TTL_S,
    ) -> None:
        self._table = DynamoDbTable(table, region=region, endpoint_url=endpoint_url)
        self.table = table
        self.region = region
        self.read_only = read_only
        self.lock_ttl_s = lock_ttl_s
        self._cache: dict[int, _Shard] = {}
        self._lock = threading.Lock()
        self._closed = False

    def __repr__(self) -> str:
        flag = ", read_only=True" if self.read_only else ""
        return f"DynamoDbStateStore({self.table!r}, region={self.region!r}{flag})"

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def create_table(self) -> bool:
        """Create the table; True when it was created, False when it existed already with
        the expected keys (nothing is changed then).

        Raises:
            StorageError: it exists with other keys, or it cannot be created.
        """
        return await asyncio.to_thread(self._table.create)

    async def load(self, streams: Iterable[str] | None = None) -> dict[str, Checkpoint]:
        """The checkpoints of `streams` (all of them when None); missing streams are absent."""
        return await self._gather(streams, lambda shard: shard.checkpoints)

    async def commit(
        self,
        replay_ids: Mapping[str, int],
        event_times: Mapping[str, float] | None = None,
        *,
        fence: Fence | None = None,
    ) -> None:
        """Set several checkpoints in one transaction: all of them are stored, or none.

        `event_times`: the event time of some of them (see `StateStore.commit`). It also
        clears the pending overrides of these streams. With `fence`, it is stored only if
        every stream's lease still has the fence's token (see the module).

        Raises:
            LeaseLostError: the fence is stale for some streams; nothing was stored.
        """
        batch = check_batch(replay_ids)
        times = check_event_times(event_times, replay_ids)
        tokens = check_fence(fence, replay_ids)
        worker = check_worker(fence.worker) if fence is not None else ""
        if not batch:
            return
        self._writable("commit")

        def apply(shards: dict[int, _Shard]) -> None:
            updated_at = iso_utc(utc_now())
            for stream, replay_id in batch:
                shard = shards[shard_of(stream)]
                shard.checkpoints[stream] = Checkpoint(
                    stream, replay_id, updated_at, times.get(stream)
                )
                shard.overrides.pop(stream, None)

        indices = {shard_of(stream) for stream, _ in batch}
        if tokens is None:
            await self._run(lambda: self._change(indices, apply, "commit", fresh=False))
        else:
            await self._run(lambda: self._commit_fenced(indices, apply, tokens, worker))

    async def reset(self, stream: str) -> bool:
        """Forget a stream's checkpoint and its pending override; returns whether it had a
        checkpoint."""
        check_stream(stream)
        self._writable("reset")

        def apply(shards: dict[int, _Shard]) -> bool:
            shard = shards[shard_of(stream)]
            shard.overrides.pop(stream, None)
            return shard.checkpoints.pop(stream, None) is not None

        return await self._run(lambda: self._change({shard_of(stream)}, apply, "reset"))

    async def override(self, stream: str, start: int | None) -> Override:
        """Record an operator's position for `stream` (see `StateStore.override`)."""
        start = check_start(stream, start)
        self._writable("override")

        def apply(shards: dict[int, _Shard]) -> Override:
            shard = shards[shard_of(stream)]
            requested_at = iso_utc(utc_now())
            pending = shard.overrides.get(stream)
            if pending is not None:
                previous = pending.previous
            else:
                current = shard.checkpoints.get(stream)
                previous = current.replay_id if current is not None else None
            if start is not None and start >= 0:
                shard.checkpoints[stream] = Checkpoint(stream, start, requested_at, None)
            else:
                shard.checkpoints.pop(stream, None)
            made = Override(stream, start, previous, requested_at)
            shard.overrides[stream] = made
            return made

        return await self._run(lambda: self._change({shard_of(stream)}, apply, "override"))

    async def overrides(self, streams: Iterable[str] | None = None) -> dict[str, Override]:
        """The pending overrides of `streams` (all of them when None)."""
        return await self._gather(streams, lambda shard: shard.overrides)

    async def _gather(
        self, streams: Iterable[str] | None, part: Callable[[_Shard], Mapping[str, V]]
    ) -> dict[str, V]:
        """Read the shards of `streams` (all of them when None) and gather one `part` of
        their items (checkpoints or overrides) for those streams."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        shards = await self._run(lambda: self._read(_indices(wanted), "load"))
        found: dict[str, V] = {}
        for shard in shards.values():
            found.update(part(shard))
        if wanted is None:
            return found
        return {stream: found[stream] for stream in wanted if stream in found}

    @contextlib.asynccontextmanager
    async def owner(self, streams: Iterable[str]) -> AsyncIterator[None]:
        """Own `streams` for the block (see `StateStore.owner`): one lock item per stream,
        renewed while the block runs and deleted at its end (see the module).

        Raises:
            StreamOwnedError: another live holder has one of them.
            StorageUnavailableError, StorageError: as for every call.
        """
        wanted = check_streams(streams) or []
        self._writable("own streams")
        if self._closed:
            raise StorageError(f"{self._table.describe()}: the store is closed")
        token = uuid.uuid4().hex
        await asyncio.to_thread(self._take_locks, wanted, token)
        renewal = asyncio.create_task(self._keep_locks(wanted, token)) if wanted else None
        try:
            yield
        finally:
            if renewal is not None:
                renewal.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewal
            try:
                await asyncio.to_thread(self._release_locks, wanted, token)
            except SfStreamError as exc:
                log.warning(
                    "state_lock_not_released",
                    table=self.table,
                    streams=wanted,
                    error=str(exc),
                    note=f"the locks expire by themselves within {self.lock_ttl_s:g} s",
                )

    # -- leases (LeaseStore) ---------------------------------------------------------------

    async def acquire(self, streams: Iterable[str], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Take the leases of `streams` that are free, for `ttl_s` seconds; the ones taken
        (see `LeaseStore.acquire`). One conditional write per stream (see the module)."""
        wanted = check_streams(streams) or []
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        if not wanted:
            return {}
        self._writable("acquire leases")
        return await self._run(lambda: self._acquire(wanted, worker, ttl))

    async def renew(self, tokens: Mapping[str, int], worker: str, ttl_s: float) -> dict[str, Lease]:
        """Extend the leases `worker` still holds with these tokens; the ones renewed."""
        pairs = check_tokens(tokens)
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        if not pairs:
            return {}
        self._writable("renew leases")
        return await self._run(lambda: self._renew(pairs, worker, ttl))

    async def release(self, tokens: Mapping[str, int], worker: str) -> None:
        """Give up the leases `worker` holds with these tokens (others are left alone)."""
        pairs = check_tokens(tokens)
        check_worker(worker)
        if not pairs:
            return
        self._writable("release leases")
        await self._run(lambda: self._release(pairs, worker))

    async def leases(self, streams: Iterable[str] | None = None) -> dict[str, Lease]:
        """The leases of `streams` (all of them when None), held or not."""
        wanted = check_streams(streams)
        if wanted == []:
            return {}
        items = await self._run(lambda: self._lease_items(wanted, "read leases"))
        now = time.time()
        return {stream: self._lease(stream, item, now) for stream, item in sorted(items.items())}

    async def join(self, worker: str, ttl_s: float) -> None:
        """Record (or refresh) `worker` as a member for `ttl_s` seconds."""
        check_worker(worker)
        ttl = check_ttl(ttl_s)
        self._writable("join")
        await self._run(lambda: self._join(worker, ttl))

    async def leave(self, worker: str) -> None:
        """Remove `worker` from the members at once."""
        check_worker(worker)
        self._writable("leave")
        await self._run(
            lambda: self._table.call(
                "leave", "delete_item", TableName=self.table, Key=_member_key(worker)
            )
        )

    async def members(self) -> list[Member]:
        """The members that have not expired, by worker id."""
        return await self._run(self._members)

    async def close(self) -> None:
        """Close the client (after any call in flight); calling it again does nothing."""
        await asyncio.to_thread(self._close)

    # -- worker thread ---------------------------------------------------------------------

    def _writable(self, action: str) -> None:
        if self.read_only:
            raise StorageError(
                f"{self._table.describe()} is opened read-only; cannot {action} (open it "
                f"without read_only to change checkpoints)"
            )

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.to_thread(self._locked, work)

    def _locked(self, work: Callable[[], T]) -> T:
        with self._lock:
            if self._closed:
                raise StorageError(f"{self._table.describe()}: the store is closed")
            return work()

    def _close(self) -> None:
        with self._lock:
            self._closed = True
            self._cache.clear()
            self._table.close()

    def _read(self, indices: list[int], action: str) -> dict[int, _Shard]:
        """The shards `indices`, read together (a consistent snapshot)."""
        deadline = time.monotonic() + _CONTENTION_LIMIT_S
        attempt = 0
        while True:
            try:
                answer = self._table.call(
                    action,
                    "transact_get_items",
                    TransactItems=[
                        {"Get": {"TableName": self.table, "Key": _shard_key(index)}}
                        for index in indices
                    ],
                )
            except TableMissingError:
                if self.read_only:
                    return {index: _Shard(index) for index in indices}
                raise
            except ConditionFailedError:
                # A read that met a transaction in flight: read again.
                attempt = self._backoff(attempt, deadline, action)
                continue
            responses = answer.get("Responses", [])
            shards = {
                index: self._decode(index, (responses[at] if at < len(responses) else {}))
                for at, index in enumerate(indices)
            }
            self._cache.update({index: shard.copy() for index, shard in shards.items()})
            return shards

    def _change(
        self,
        indices: set[int],
        apply: Callable[[dict[int, _Shard]], T],
        action: str,
        *,
        fresh: bool = True,
        checks: list[tuple[str, dict[str, Any]]] | None = None,
        verify: Callable[[], None] | None = None,
    ) -> T:
        """Read-modify-write of the shards `indices` with `apply`, conditioned on their
        versions, until it lands. With `fresh=False` the first attempt starts from the
        shards as this store last saw them (a commit: it reads nothing when no other store
        wrote meanwhile).

        A fenced commit gives either `checks` (stream, `ConditionCheck` on its lease), put
        in the same transaction, or `verify`, called at each attempt after the shards'
        versions are known and before they are written.

        Raises:
            _StaleFence: a check failed, or `verify` found stale tokens; nothing written.
        """
        ordered = sorted(indices)
        deadline = time.monotonic() + _CONTENTION_LIMIT_S
        attempt = 0
        cached = not fresh
        while True:
            if cached and all(index in self._cache for index in ordered):
                base = {index: self._cache[index].copy() for index in ordered}
            else:
                base = self._read(ordered, action)
            work = {index: shard.copy() for index, shard in base.items()}
            result = apply(work)
            changed = [
                work[index] for index in ordered if not work[index].same_content(base[index])
            ]
            if not changed and not checks:
                return result
            if verify is not None:
                verify()
            try:
                self._write(changed, action, checks or [])
            except ConditionFailedError as failed:
                # A failed condition comes with the item as it is now: the next attempt
                # starts from it without reading again.
                for shard, reason, item in zip(changed, failed.reasons, failed.items, strict=False):
                    if reason == "ConditionalCheckFailed" and item is not None:
                        self._cache[shard.index] = self._decode(shard.index, {"Item": item})
                    elif reason != "None":
                        self._cache.pop(shard.index, None)
                # The lease checks follow the shards in the transaction.
                stale = [
                    stream
                    for (stream, _), reason in zip(
                        checks or [], failed.reasons[len(changed) :], strict=False
                    )
                    if reason == "ConditionalCheckFailed"
                ]
                if stale:
                    raise _StaleFence(sorted(stale)) from None
                cached = True
                attempt = self._backoff(attempt, deadline, action)
                continue
            except BaseException:
                for index in ordered:
                    self._cache.pop(index, None)
                raise
            for shard in changed:
                shard.version += 1
                self._cache[shard.index] = shard.copy()
            return result

    def _write(
        self, shards: list[_Shard], action: str, checks: list[tuple[str, dict[str, Any]]]
    ) -> None:
        """Put `shards`, each conditioned on its version being what was read, with `checks`
        (lease `ConditionCheck`s) in the same transaction."""
        puts = [self._put(shard) for shard in shards]
        if len(puts) == 1 and not checks:
            self._table.call(action, "put_item", **puts[0])
        else:
            self._table.call(
                action,
                "transact_write_items",
                TransactItems=[{"Put": p} for p in puts] + [check for _, check in checks],
            )

    def _put(self, shard: _Shard) -> dict[str, Any]:
        put: dict[str, Any] = {
            "TableName": self.table,
            "Item": _encode_shard(shard),
            "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
        }
        if shard.version == 0:
            put["ConditionExpression"] = "attribute_not_exists(#pk)"
            put["ExpressionAttributeNames"] = {"#pk": PK}
        else:
            put["ConditionExpression"] = "#version = :version"
            put["ExpressionAttributeNames"] = {"#version": "version"}
            put["ExpressionAttributeValues"] = {":version": {"N": str(shard.version)}}
        return put

    def _backoff(self, attempt: int, deadline: float, action: str) -> int:
        if time.monotonic() > deadline:
            raise StorageUnavailableError(
                f"{self._table.describe()}: {action} kept losing to concurrent writers for "
                f"{_CONTENTION_LIMIT_S:g} s; will retry"
            )
        # Short: a loser retries from the item its failed write returned, with one round
        # trip, as the winner does; a long wait would let a busy winner starve it.
        time.sleep(random.uniform(0.0, min(0.05, 0.005 * (attempt + 1))))  # noqa: S311 - jitter
        return attempt + 1

    def _decode(self, index: int, response: Mapping[str, Any]) -> _Shard:
        item = response.get("Item")
        if not item:
            return _Shard(index)
        try:
            return _decode_shard(index, item)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageError(
                f"{self._table.describe()}: the item (pk {CHECKPOINTS_PK}, sk "
                f"shard#{index:02d}) is not one sfstream wrote ({type(exc).__name__}: {exc}); "
                f"give state.table a table of its own"
            ) from exc

    # -- run lock --------------------------------------------------------------------------

    def _lock_item(self, stream: str, token: str, holder: str, since: str) -> dict[str, Any]:
        return {
            PK: {"S": LOCK_PK},
            SK: {"S": stream},
            "owner": {"S": token},
            "holder": {"S": holder},
            "since": {"S": since},
            "expires_at": {"N": _seconds(time.time() + self.lock_ttl_s)},
        }

    def _take_locks(self, streams: list[str], token: str) -> None:
        holder = f"pid {os.getpid()} on host {socket.gethostname()}"
        since = iso_utc(utc_now())
        taken: list[str] = []
        deadline = time.monotonic() + _CONTENTION_LIMIT_S
        attempt = 0
        chunks = [
            streams[at : at + _TRANSACTION_ITEMS]
            for at in range(0, len(streams), _TRANSACTION_ITEMS)
        ]
        try:
            for chunk in chunks:
                while True:
                    now = {":now": {"N": _seconds(time.time())}}
                    try:
                        self._table.call(
                            "own streams",
                            "transact_write_items",
                            TransactItems=[
                                {
                                    "Put": {
                                        "TableName": self.table,
                                        "Item": self._lock_item(stream, token, holder, since),
                                        "ConditionExpression": (
                                            "attribute_not_exists(#pk) OR #expires < :now"
                                        ),
                                        "ExpressionAttributeNames": {
                                            "#pk": PK,
                                            "#expires": "expires_at",
                                        },
                                        "ExpressionAttributeValues": now,
                                    }
                                }
                                for stream in chunk
                            ],
                        )
                    except ConditionFailedError as failed:
                        owned = [
                            stream
                            for stream, reason in zip(chunk, failed.reasons, strict=False)
                            if reason == "ConditionalCheckFailed"
                        ]
                        if owned:
                            raise self._owned(owned) from None
                        attempt = self._backoff(attempt, deadline, "own streams")
                        continue
                    taken.extend(chunk)
                    break
        except BaseException:
            with contextlib.suppress(SfStreamError):
                self._release_locks(taken, token)
            raise

    def _owned(self, streams: list[str]) -> StreamOwnedError:
        holder: str | None = None
        with contextlib.suppress(SfStreamError):
            answer = self._table.call(
                "own streams",
                "get_item",
                TableName=self.table,
                Key={PK: {"S": LOCK_PK}, SK: {"S": streams[0]}},
                ConsistentRead=True,
            )
            item = answer.get("Item") or {}
            who = item.get("holder", {}).get("S")
            since = item.get("since", {}).get("S")
            if isinstance(who, str) and who:
                holder = f"{who}, since {since}" if isinstance(since, str) else who
        return StreamOwnedError(owned_message(streams, holder), streams=streams, holder=holder)

    async def _keep_locks(self, streams: list[str], token: str) -> None:
        lost = False
        while True:
            await asyncio.sleep(self.lock_ttl_s / 3)
            try:
                gone = await asyncio.to_thread(self._renew_locks, streams, token)
            except SfStreamError as exc:
                log.warning(
                    "state_lock_not_renewed", table=self.table, streams=streams, error=str(exc)
                )
                continue
            if gone and not lost:
                lost = True
                log.warning(
                    "state_lock_lost",
                    table=self.table,
                    streams=gone,
                    note="the run lock expired and another process took it: two runs may "
                    "now commit these streams",
                )

    def _renew_locks(self, streams: list[str], token: str) -> list[str]:
        """Push the expiry of this holder's locks on; the streams whose lock it no longer
        holds."""
        gone: list[str] = []
        for stream in streams:
            try:
                self._table.call(
                    "renew the run lock",
                    "update_item",
                    TableName=self.table,
                    Key={PK: {"S": LOCK_PK}, SK: {"S": stream}},
                    UpdateExpression="SET #expires = :expires",
                    ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#expires": "expires_at", "#owner": "owner"},
                    ExpressionAttributeValues={
                        ":expires": {"N": _seconds(time.time() + self.lock_ttl_s)},
                        ":owner": {"S": token},
                    },
                )
            except ConditionFailedError:
                gone.append(stream)
        return gone

    def _release_locks(self, streams: list[str], token: str) -> None:
        for stream in streams:
            with contextlib.suppress(ConditionFailedError):  # expired and taken by another
                self._table.call(
                    "release the run lock",
                    "delete_item",
                    TableName=self.table,
                    Key={PK: {"S": LOCK_PK}, SK: {"S": stream}},
                    ConditionExpression="#owner = :owner",
                    ExpressionAttributeNames={"#owner": "owner"},
                    ExpressionAttributeValues={":owner": {"S": token}},
                )

    # -- leases ----------------------------------------------------------------------------

    def _conditional(self, action: str, operation: str, **params: Any) -> dict[str, Any] | None:
        """`call` for one conditional write; None when its condition failed. A write that
        met a transaction in flight is tried again."""
        deadline = time.monotonic() + _CONTENTION_LIMIT_S
        attempt = 0
        while True:
            try:
                return self._table.call(action, operation, TableName=self.table, **params)
            except ConditionFailedError as failed:
                if "ConditionalCheckFailed" in failed.reasons:
                    return None
                attempt = self._backoff(attempt, deadline, action)

    def _lease_item(self, stream: str, action: str) -> dict[str, Any] | None:
        answer = self._table.call(
            action, "get_item", TableName=self.table, Key=_lease_key(stream), ConsistentRead=True
        )
        item: dict[str, Any] | None = answer.get("Item") or None
        return item

    def _query(self, pk: str, action: str) -> list[dict[str, Any]]:
        """Every item of partition `pk`, page after page."""
        params: dict[str, Any] = {
            "TableName": self.table,
            "KeyConditionExpression": "#pk = :pk",
            "ExpressionAttributeNames": {"#pk": PK},
            "ExpressionAttributeValues": {":pk": {"S": pk}},
            "ConsistentRead": True,
        }
        items: list[dict[str, Any]] = []
        while True:
            try:
                answer = self._table.call(action, "query", **params)
            except TableMissingError:
                if self.read_only:
                    return []
                raise
            items.extend(answer.get("Items") or [])
            last = answer.get("LastEvaluatedKey")
            if not last:
                return items
            params["ExclusiveStartKey"] = last

    def _lease_items(self, wanted: list[str] | None, action: str) -> dict[str, dict[str, Any]]:
        """The lease items of `wanted` (all of them when None) by stream: a Query per
        shard they fall in."""
        found: dict[str, dict[str, Any]] = {}
        for index in _indices(wanted):
            for item in self._query(_lease_pk(index), action):
                stream = item.get(SK, {}).get("S")
                if isinstance(stream, str):
                    found[stream] = item
        if wanted is None:
            return found
        return {stream: found[stream] for stream in wanted if stream in found}

    def _lease(self, stream: str, item: Mapping[str, Any], now: float) -> Lease:
        """A lease item as a `Lease`, held as of `now`."""
        try:
            owner = item["owner"]["S"] if "owner" in item else None
            expires_at = float(item["expires_at"]["N"])
            refused_at = item.get("refused_at", {}).get("N")
            refused_token = item.get("refused_token", {}).get("N")
            refused_worker = item.get("refused_worker", {}).get("S")
            return Lease(
                stream=stream,
                owner=str(owner) if owner is not None else None,
                token=int(item["token"]["N"]),
                expires_at=expires_at,
                acquired_at=float(item["acquired_at"]["N"]),
                held=owner is not None and expires_at > now,
                refused=int(item.get("refused", {}).get("N", "0")),
                refused_at=None if refused_at is None else float(refused_at),
                refused_token=None if refused_token is None else int(refused_token),
                refused_worker=None if refused_worker is None else str(refused_worker),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StorageError(
                f"{self._table.describe()}: the lease item of stream {stream!r} is not one "
                f"sfstream wrote ({type(exc).__name__}: {exc}); give state.table a table of "
                f"its own"
            ) from exc

    def _acquire(self, streams: list[str], worker: str, ttl_s: float) -> dict[str, Lease]:
        taken: dict[str, Lease] = {}
        for stream in streams:
            lease = self._acquire_one(stream, worker, ttl_s)
            if lease is not None:
                taken[stream] = lease
        return taken

    def _acquire_one(self, stream: str, worker: str, ttl_s: float) -> Lease | None:
        """Take `stream`'s lease if it is free, extend it if `worker` holds it; None when
        another worker holds it."""
        action = "acquire leases"
        key = _lease_key(stream)
        item = self._lease_item(stream, action)
        deadline = time.monotonic() + _CONTENTION_LIMIT_S
        attempt = 0
        while True:
            now = time.time()
            moment, expires = _seconds(now), _seconds(now + ttl_s)
            current = None if item is None else self._lease(stream, item, now)
            if current is not None and current.owner is not None and current.expires_at >= now:
                if current.owner != worker:
                    return None
                # Its own lease: extended with the same token, unless it expires first.
                try:
                    answer = self._table.call(
                        action,
                        "update_item",
                        TableName=self.table,
                        Key=key,
                        UpdateExpression="SET #expires = :expires",
                        ConditionExpression=(
                            "#owner = :owner AND #token = :token AND #expires >= :now"
                        ),
                        ExpressionAttributeNames={
                            "#expires": "expires_at",
                            "#owner": "owner",
                            "#token": "token",
                        },
                        ExpressionAttributeValues={
                            ":expires": {"N": expires},
                            ":owner": {"S": worker},
                            ":token": {"N": str(current.token)},
                            ":now": {"N": moment},
                        },
                        ReturnValues="ALL_NEW",
                        ReturnValuesOnConditionCheckFailure="ALL_OLD",
                    )
                except ConditionFailedError as failed:
                    item = self._after_failure(failed, stream, action)
                    attempt = self._backoff(attempt, deadline, action)
                    continue
                return self._lease(stream, answer.get("Attributes") or {}, now)
            # Free: taken with the next token. The condition on the token read keeps two
            # workers from both writing the same next token (one read before the other's
            # take and release); the one on the owner keeps a renewed lease from being taken.
            token = 1 if current is None else current.token + 1
            names = {
                "#owner": "owner",
                "#token": "token",
                "#expires": "expires_at",
                "#acquired": "acquired_at",
            }
            values = {
                ":owner": {"S": worker},
                ":token": {"N": str(token)},
                ":expires": {"N": expires},
                ":now": {"N": moment},
            }
            if current is None:
                condition = "attribute_not_exists(#pk)"
                names["#pk"] = PK
            else:
                condition = "#token = :old AND (attribute_not_exists(#owner) OR #expires < :now)"
                values[":old"] = {"N": str(current.token)}
            take = {
                "TableName": self.table,
                "Key": key,
                "UpdateExpression": (
                    "SET #owner = :owner, #token = :token, #expires = :expires, #acquired = :now"
                ),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": names,
                "ExpressionAttributeValues": values,
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }
            index = shard_of(stream)
            try:
                self._table.call(
                    action,
                    "transact_write_items",
                    TransactItems=[{"Update": take}, {"Update": self._shard_bump(index)}],
                )
            except ConditionFailedError as failed:
                item = self._after_failure(failed, stream, action)
                attempt = self._backoff(attempt, deadline, action)
                continue
            # This store's copy of the shard is one version behind now.
            self._cache.pop(index, None)
            written = {
                **(item or key),
                "owner": {"S": worker},
                "token": {"N": str(token)},
                "expires_at": {"N": expires},
                "acquired_at": {"N": moment},
            }
            return self._lease(stream, written, now)

    def _shard_bump(self, index: int) -> dict[str, Any]:
        """The update that moves checkpoint shard `index` on a version, with the takeover
        of one of its streams' leases: a fenced commit too big for lease checks fails its
        shard write then (see the module). It makes an empty shard when there is none."""
        return {
            "TableName": self.table,
            "Key": _shard_key(index),
            "UpdateExpression": (
                "SET #checkpoints = if_not_exists(#checkpoints, :empty), "
                "#overrides = if_not_exists(#overrides, :empty) ADD #version :one"
            ),
            "ExpressionAttributeNames": {
                "#checkpoints": "checkpoints",
                "#overrides": "overrides",
                "#version": "version",
            },
            "ExpressionAttributeValues": {":empty": {"S": "{}"}, ":one": {"N": "1"}},
        }

    def _after_failure(
        self, failed: ConditionFailedError, stream: str, action: str
    ) -> dict[str, Any] | None:
        """The lease item after a lost write (the first item of it): as the failure returned
        it, else read again."""
        if failed.reasons[:1] == ["ConditionalCheckFailed"] and failed.items[0] is not None:
            return failed.items[0]
        return self._lease_item(stream, action)

    def _renew(self, pairs: list[tuple[str, int]], worker: str, ttl_s: float) -> dict[str, Lease]:
        renewed: dict[str, Lease] = {}
        for stream, token in pairs:
            now = time.time()
            answer = self._conditional(
                "renew leases",
                "update_item",
                Key=_lease_key(stream),
                UpdateExpression="SET #expires = :expires",
                ConditionExpression="#owner = :owner AND #token = :token",
                ExpressionAttributeNames={
                    "#expires": "expires_at",
                    "#owner": "owner",
                    "#token": "token",
                },
                ExpressionAttributeValues={
                    ":expires": {"N": _seconds(now + ttl_s)},
                    ":owner": {"S": worker},
                    ":token": {"N": str(token)},
                },
                ReturnValues="ALL_NEW",
            )
            if answer is not None:
                renewed[stream] = self._lease(stream, answer.get("Attributes") or {}, now)
        return renewed

    def _release(self, pairs: list[tuple[str, int]], worker: str) -> None:
        for stream, token in pairs:
            self._conditional(
                "release leases",
                "update_item",
                Key=_lease_key(stream),
                UpdateExpression="REMOVE #owner SET #expires = :now",
                ConditionExpression="#owner = :owner AND #token = :token",
                ExpressionAttributeNames={
                    "#expires": "expires_at",
                    "#owner": "owner",
                    "#token": "token",
                },
                ExpressionAttributeValues={
                    ":now": {"N": _seconds(time.time())},
                    ":owner": {"S": worker},
                    ":token": {"N": str(token)},
                },
            )

    def _commit_fenced(
        self,
        indices: set[int],
        apply: Callable[[dict[int, _Shard]], None],
        tokens: dict[str, int],
        worker: str,
    ) -> None:
        """`_change` for a fenced commit: with a lease check per stream when they fit in
        the transaction beside the shards, else verifying the tokens read (see the module).

        Raises:
            LeaseLostError: some tokens are stale; nothing was stored.
        """
        try:
            if len(tokens) + len(indices) <= _TRANSACTION_ITEMS:
                checks = [
                    (stream, {"ConditionCheck": self._token_check(stream, token)})
                    for stream, token in sorted(tokens.items())
                ]
                self._change(indices, apply, "commit", fresh=False, checks=checks)
            else:
                self._change(
                    indices, apply, "commit", fresh=False, verify=lambda: self._verify(tokens)
                )
        except _StaleFence as stale:
            try:
                self._record_refusals(stale.streams, tokens, worker)
            except SfStreamError as exc:
                log.warning(
                    "lease_refusal_not_recorded",
                    table=self.table,
                    streams=stale.streams,
                    error=str(exc),
                )
            raise LeaseLostError(
                fence_error(stale.streams, worker), streams=stale.streams
            ) from None

    def _token_check(self, stream: str, token: int) -> dict[str, Any]:
        return {
            "TableName": self.table,
            "Key": _lease_key(stream),
            "ConditionExpression": "#token = :token",
            "ExpressionAttributeNames": {"#token": "token"},
            "ExpressionAttributeValues": {":token": {"N": str(token)}},
        }

    def _verify(self, tokens: dict[str, int]) -> None:
        """Raise `_StaleFence` unless every lease has the fence's token, as read now."""
        items = self._lease_items(sorted(tokens), "commit")
        now = time.time()
        stale = [
            stream
            for stream, token in sorted(tokens.items())
            if stream not in items or self._lease(stream, items[stream], now).token != token
        ]
        if stale:
            raise _StaleFence(stale)

    def _record_refusals(self, streams: list[str], tokens: dict[str, int], worker: str) -> None:
        """Count a refused commit in each stale stream's lease item that exists."""
        moment = _seconds(time.time())
        for stream in streams:
            self._conditional(
                "record a refused commit",
                "update_item",
                Key=_lease_key(stream),
                UpdateExpression=(
                    "ADD #refused :one SET #at = :now, #token = :token, #worker = :worker"
                ),
                ConditionExpression="attribute_exists(#pk)",
                ExpressionAttributeNames={
                    "#pk": PK,
                    "#refused": "refused",
                    "#at": "refused_at",
                    "#token": "refused_token",
                    "#worker": "refused_worker",
                },
                ExpressionAttributeValues={
                    ":one": {"N": "1"},
                    ":now": {"N": moment},
                    ":token": {"N": str(tokens[stream])},
                    ":worker": {"S": worker},
                },
            )

    def _join(self, worker: str, ttl_s: float) -> None:
        now = time.time()
        moment, expires = _seconds(now), _seconds(now + ttl_s)
        extended = self._conditional(
            "join",
            "update_item",
            Key=_member_key(worker),
            UpdateExpression=(
                "SET #worker = :worker, #expires = :expires, #joined = if_not_exists(#joined, :now)"
            ),
            ConditionExpression="attribute_not_exists(#pk) OR #expires >= :now",
            ExpressionAttributeNames={
                "#pk": PK,
                "#worker": "worker",
                "#expires": "expires_at",
                "#joined": "joined_at",
            },
            ExpressionAttributeValues={
                ":worker": {"S": worker},
                ":expires": {"N": expires},
                ":now": {"N": moment},
            },
        )
        if extended is None:
            # Its membership had expired: this is a new one, joined now.
            self._table.call(
                "join",
                "put_item",
                TableName=self.table,
                Item={
                    **_member_key(worker),
                    "worker": {"S": worker},
                    "expires_at": {"N": expires},
                    "joined_at": {"N": moment},
                },
            )

    def _members(self) -> list[Member]:
        now = time.time()
        live: list[Member] = []
        gone: list[Member] = []
        for item in self._query(MEMBER_PK, "read members"):
            try:
                member = Member(
                    worker=str(item["worker"]["S"]),
                    expires_at=float(item["expires_at"]["N"]),
                    joined_at=float(item["joined_at"]["N"]),
                )
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise StorageError(
                    f"{self._table.describe()}: the member item {item.get(SK)!r} is not one "
                    f"sfstream wrote ({type(exc).__name__}: {exc}); give state.table a table "
                    f"of its own"
                ) from exc
            (live if member.expires_at > now else gone).append(member)
        if not self.read_only:
            # Workers that stopped without leaving (each run has its own id) would pile up.
            for member in gone:
                with contextlib.suppress(SfStreamError):
                    self._conditional(
                        "remove expired members",
                        "delete_item",
                        Key=_member_key(member.worker),
                        ConditionExpression="#expires < :now",
                        ExpressionAttributeNames={"#expires": "expires_at"},
                        ExpressionAttributeValues={":now": {"N": _seconds(now)}},
                    )
        return sorted(live, key=lambda member: member.worker)


def _indices(wanted: list[str] | None) -> list[int]:
    if wanted is None:
        return list(range(SHARDS))
    return sorted({shard_of(stream) for stream in wanted})


def _seconds(moment: float) -> str:
    """Epoch seconds as a DynamoDB number, to the millisecond."""
    return f"{moment:.3f}"


def _encode_shard(shard: _Shard) -> dict[str, Any]:
    checkpoints: dict[str, Any] = {}
    for stream, point in shard.checkpoints.items():
        fields: dict[str, Any] = {"replay_id": point.replay_id, "updated_at": point.updated_at}
        if point.event_time is not None:
            fields["event_time"] = point.event_time
        checkpoints[stream] = fields
    overrides: dict[str, Any] = {}
    for stream, pending in shard.overrides.items():
        fields = {"requested_at": pending.requested_at}
        if pending.start is not None:
            fields["start"] = pending.start
        if pending.previous is not None:
            fields["previous"] = pending.previous
        overrides[stream] = fields
    return {
        **_shard_key(shard.index),
        "version": {"N": str(shard.version + 1)},
        "checkpoints": {"S": orjson.dumps(checkpoints, option=orjson.OPT_SORT_KEYS).decode()},
        "overrides": {"S": orjson.dumps(overrides, option=orjson.OPT_SORT_KEYS).decode()},
    }


def _decode_shard(index: int, item: Mapping[str, Any]) -> _Shard:
    version = int(item["version"]["N"])
    checkpoints: dict[str, Checkpoint] = {}
    for stream, fields in orjson.loads(item["checkpoints"]["S"]).items():
        moment = fields.get("event_time")
        replay_id = fields["replay_id"]
        if not isinstance(replay_id, int) or isinstance(replay_id, bool):
            raise TypeError(f"the replay_id of {stream!r} is {replay_id!r}")
        checkpoints[stream] = Checkpoint(
            stream,
            replay_id,
            str(fields["updated_at"]),
            None if moment is None else float(moment),
        )
    overrides: dict[str, Override] = {}
    for stream, fields in orjson.loads(item["overrides"]["S"]).items():
        start = fields.get("start")
        previous = fields.get("previous")
        overrides[stream] = Override(
            stream,
            None if start is None else int(start),
            None if previous is None else int(previous),
            str(fields["requested_at"]),
        )
    return _Shard(index, version, checkpoints, overrides)


def _cancellation_reasons(exc: BaseException) -> tuple[list[str], list[dict[str, Any] | None]]:
    """The code of each item's cancellation reason, and the item when it came with it."""
    answer = getattr(exc, "response", None)
    if not isinstance(answer, dict):
        return [], []
    reasons = [r for r in answer.get("CancellationReasons") or [] if isinstance(r, dict)]
    return [str(r.get("Code", "None")) for r in reasons], [r.get("Item") or None for r in reasons]
