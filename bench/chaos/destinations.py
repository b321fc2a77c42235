"""The destinations a chaos run can target besides the file sink: Kafka, PostgreSQL and S3.

Each `Destination` gives the connector its `sink:` settings (a fresh topic prefix, table or
bucket per run), says what it holds while the connector runs (`held`: the highest RECORD
replayId per stream, for the checkpoint check after every kill and for the catch-up), and
is read back in full at the end (`read_back`), independently of the sink:

- Kafka: every partition of the run's topics from offset 0 to its end, with a
  confluent-kafka consumer that `assign()`s partitions (no consumer group); RECORD values
  are the file sink's lines. Order is checked per partition (the sink promises no order
  across partitions);
- PostgreSQL: the table's rows in `seq` order, given back as the file sink's lines by the
  query of docs/sinks.md (psycopg). Order is checked per stream;
- S3: every object under the run's prefix (boto3), a stream's objects read in the order the
  sink documents (dates ascending, names within a date descending). Order is checked per
  stream.

While the connector runs, Kafka and S3 are read incrementally (only the messages or objects
that are new since the last look); PostgreSQL answers an aggregate query. The full read at
the end starts from nothing. Blocking clients run in worker threads: the emulator shares the
harness's event loop.

Every message read back is also written to `DUMP_FILE` in the run's directory (Kafka: topic,
partition, offset, key, headers and value; PostgreSQL: the rows as JSON; S3: each object's
key and content), so that the search for secrets covers the destination too.
"""

from __future__ import annotations

import abc
import asyncio
import gzip
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, ClassVar, Final

import orjson

from bench.chaos.audit import StreamAudit
from bench.servers import AWS_REGION, aws_environment, redact_dsn, without_aws

__all__ = [
    "DUMP_FILE",
    "Destination",
    "Holding",
    "KafkaDestination",
    "PostgresDestination",
    "ReadBack",
    "S3Destination",
]

DUMP_FILE: Final = "destination.jsonl"
_READ_TIMEOUT_S: Final = 120.0

# -- what a destination holds ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holding:
    """What a destination holds at a moment: the highest RECORD replayId per stream."""

    max_replay_ids: dict[str, int]
    records: int

    def reached(self, last_ids: Mapping[str, int | None]) -> bool:
        """Whether every stream holds its `last_ids` replayId (None: nothing to hold)."""
        return all(
            last is None or self.max_replay_ids.get(stream, -1) >= last
            for stream, last in last_ids.items()
        )


@dataclass(slots=True)
class ReadBack:
    """Tallies of the file sink's lines a destination gives back, per stream.

    `add(line, scope)`: a line read back; records of one `scope` (a Kafka partition, or
    None: the whole stream) must come in replayId order.
    """

    channels: Mapping[str, str]
    streams: dict[str, StreamAudit] = field(init=False)
    messages: int = 0
    bytes: int = 0
    corrupt: int = 0
    """Lines that are not a message, or objects that are not the sink's."""
    gaps: int = 0
    unknown_streams: int = 0
    _last: dict[tuple[str, object], int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self.streams = {s: StreamAudit(s, c) for c, s in self.channels.items()}

    @property
    def records(self) -> int:
        return sum(s.records for s in self.streams.values())

    def holding(self) -> Holding:
        held = {s: a.max_replay_id for s, a in self.streams.items() if a.max_replay_id is not None}
        return Holding(held, self.records)

    def add(self, line: bytes, scope: object = None) -> None:
        self.messages += 1
        self.bytes += len(line)
        try:
            message = orjson.loads(line)
            kind = message["type"]
            stream = message.get("stream")
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            self.corrupt += 1
            return
        if kind == "GAP":
            self.gaps += 1
            return
        if kind != "RECORD":
            return
        audit = self.streams.get(stream) if isinstance(stream, str) else None
        if audit is None:
            self.unknown_streams += 1
            return
        replay_id, key = message.get("replay_id"), message.get("key")
        if not isinstance(replay_id, int) or not (key is None or isinstance(key, str)):
            self.corrupt += 1
            return
        audit.records += 1
        if (replay_id, key) in audit.keys:
            audit.duplicates += 1
        else:
            audit.keys.add((replay_id, key))
        previous = self._last.get((audit.stream, scope))
        if previous is not None and replay_id < previous:
            audit.out_of_order += 1
        else:
            self._last[(audit.stream, scope)] = replay_id
        if audit.max_replay_id is None or replay_id > audit.max_replay_id:
            audit.max_replay_id = replay_id
        audit.replay_ids.add(replay_id)


class Destination(abc.ABC):
    """Where a chaos run's connector writes, other than the file sink."""

    name: ClassVar[str]

    @abc.abstractmethod
    def sink_settings(self) -> dict[str, Any]:
        """The connector's `sink:` section."""

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """The sink and where it writes, as JSON-ready values (for the report)."""

    def connector_environment(self, environ: dict[str, str]) -> dict[str, str]:
        """The connector's environment, from the harness's."""
        return environ

    async def prepare(self, channels: Mapping[str, str]) -> None:
        """Make the destination ready (empty) for streams `channels` (channel -> stream)."""
        self._channels = dict(channels)

    @abc.abstractmethod
    async def held(self) -> Holding:
        """What the destination holds now."""

    @abc.abstractmethod
    async def read_back(self, dump: Path) -> ReadBack:
        """Everything the destination holds, read from the start; each message also to `dump`."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the harness's clients (a destination may also drop what the run made)."""


def _run_id() -> str:
    return uuid.uuid4().hex[:10]


# -- Kafka -----------------------------------------------------------------------------------


class KafkaDestination(Destination):
    """Topics `{prefix}.{stream}` and `{prefix}.control` on `bootstrap`."""

    name = "kafka"

    def __init__(self, bootstrap: str, prefix: str | None = None) -> None:
        self.bootstrap = bootstrap
        self.prefix = prefix or f"chaos-{_run_id()}"
        self.control_topic = f"{self.prefix}.control"
        self._watch: _KafkaReader | None = None
        self._watched: ReadBack | None = None

    def sink_settings(self) -> dict[str, Any]:
        return {
            "type": "kafka",
            "bootstrap_servers": self.bootstrap,
            "topic": f"{self.prefix}.{{stream}}",
            "control_topic": self.control_topic,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "bootstrap_servers": self.bootstrap,
            "topics": f"{self.prefix}.<stream>",
            "control_topic": self.control_topic,
        }

    async def prepare(self, channels: Mapping[str, str]) -> None:
        await super().prepare(channels)
        self._watch = _KafkaReader(self.bootstrap, self.prefix)
        self._watched = ReadBack(self._channels)

    async def held(self) -> Holding:
        reader, tally = self._watch, self._watched
        assert reader is not None, "prepare() first"
        assert tally is not None, "prepare() first"
        await asyncio.to_thread(reader.read, lambda m: tally.add(m.raw, m.where), False)
        return tally.holding()

    async def read_back(self, dump: Path) -> ReadBack:
        return await asyncio.to_thread(self._read_all, dump)

    def _read_all(self, dump: Path) -> ReadBack:
        tally = ReadBack(self._channels)
        reader = _KafkaReader(self.bootstrap, self.prefix)
        try:
            with dump.open("wb") as out:

                def seen(message: _Consumed) -> None:
                    out.write(message.dump() + b"\n")
                    tally.add(message.raw, message.where)

                reader.read(seen, True)
        finally:
            reader.close()
        return tally

    async def close(self) -> None:
        if self._watch is not None:
            await asyncio.to_thread(self._watch.close)
            self._watch = None


@dataclass(frozen=True, slots=True)
class _Consumed:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes
    headers: list[tuple[str, bytes]]

    @property
    def where(self) -> tuple[str, int]:
        return self.topic, self.partition

    def dump(self) -> bytes:
        def text(data: bytes | None) -> str | None:
            return None if data is None else data.decode(errors="replace")

        return orjson.dumps(
            {
                "topic": self.topic,
                "partition": self.partition,
                "offset": self.offset,
                "key": text(self.key),
                "headers": [[name, text(value)] for name, value in self.headers],
                "value": text(self.raw),
            }
        )


class _KafkaReader:
    """Reads the partitions of a run's topics from where it last stopped to their end."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        from confluent_kafka import Consumer

        self.prefix = prefix
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": f"sfstream-chaos-audit-{_run_id()}",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "fetch.wait.max.ms": 10,
                "logger": _Quiet(),
            }
        )
        self._next: dict[tuple[str, int], int] = {}

    def read(self, seen: Callable[[_Consumed], None], control: bool) -> None:
        """Hand every message not read yet to `seen`; the control topic too if `control`."""
        from confluent_kafka import KafkaError, TopicPartition

        consumer = self._consumer
        control_topic = f"{self.prefix}.control"
        metadata = consumer.list_topics(timeout=15).topics
        partitions = [
            (topic, partition)
            for topic, info in sorted(metadata.items())
            if topic.startswith(f"{self.prefix}.") and (control or topic != control_topic)
            if info.error is None
            for partition in sorted(info.partitions)
        ]
        if not partitions:
            return
        consumer.assign([TopicPartition(t, p, self._next.get((t, p), 0)) for t, p in partitions])
        pending = set(partitions)
        deadline_at = time.monotonic() + _READ_TIMEOUT_S
        last_error = None
        try:
            while pending:
                if time.monotonic() > deadline_at:
                    raise TimeoutError(
                        f"Kafka partitions {sorted(pending)} did not reach their end "
                        f"in {_READ_TIMEOUT_S:g} s (last error: {last_error})"
                    )
                for message in consumer.consume(1000, 0.2):
                    error = message.error()
                    where = (message.topic(), message.partition())
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            pending.discard(where)
                        else:
                            last_error = error
                        continue
                    offset = message.offset() or 0
                    self._next[where] = offset + 1
                    seen(
                        _Consumed(
                            where[0],
                            where[1],
                            offset,
                            message.key(),
                            message.value() or b"",
                            list(message.headers() or []),
                        )
                    )
        finally:
            consumer.unassign()

    def close(self) -> None:
        self._consumer.close()


class _Quiet:
    """Drops librdkafka's log lines."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        pass


# -- PostgreSQL ------------------------------------------------------------------------------

# The table given back as the file sink's lines: the query of docs/sinks.md, as text.
_MESSAGES: Final = """
SELECT COALESCE(message, CASE type
    WHEN 'STATE' THEN json_build_object('type', type, 'stream', stream, 'replay_id', replay_id)
    ELSE json_build_object(
        'type', type, 'stream', stream, 'key', key, 'replay_id', replay_id,
        'data', data, 'meta', meta,
        'emitted_at', to_char(emitted_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'))
    END)::text
FROM {} ORDER BY seq
"""
_HELD: Final = (
    "SELECT stream, max(replay_id), count(*) FROM {} WHERE type = 'RECORD' GROUP BY stream"
)


class PostgresDestination(Destination):
    """A table of its own (`chaos_<hex>`) in the database of `dsn`, dropped by `close`
    unless `keep`."""

    name = "postgres"

    def __init__(self, dsn: str, table: str | None = None, *, keep: bool = False) -> None:
        self.dsn = dsn
        self.table = table or f"chaos_{_run_id()}"
        self.keep = keep
        self._connection: Any = None

    def sink_settings(self) -> dict[str, Any]:
        return {"type": "postgres", "dsn": self.dsn, "table": self.table}

    def describe(self) -> dict[str, Any]:
        return {"type": self.name, "dsn": redact_dsn(self.dsn), "table": self.table}

    async def _connect(self) -> Any:
        import psycopg

        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        return self._connection

    def _query(self, text: str) -> Any:
        from psycopg import sql

        return sql.SQL(text).format(sql.Identifier(self.table))

    async def prepare(self, channels: Mapping[str, str]) -> None:
        await super().prepare(channels)
        connection = await self._connect()
        await connection.execute(self._query("DROP TABLE IF EXISTS {}"))

    async def _exists(self) -> bool:
        connection = await self._connect()
        cursor = await connection.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def held(self) -> Holding:
        if not await self._exists():
            return Holding({}, 0)
        connection = await self._connect()
        cursor = await connection.execute(self._query(_HELD))
        rows = await cursor.fetchall()
        return Holding({s: int(m) for s, m, _ in rows}, sum(int(n) for _, _, n in rows))

    async def read_back(self, dump: Path) -> ReadBack:
        tally = ReadBack(self._channels)
        with dump.open("wb") as out:
            if not await self._exists():
                return tally
            connection = await self._connect()
            # A server-side cursor: the rows come in pages, not all at once.
            async with connection.transaction(), connection.cursor(name="chaos_read_back") as rows:
                rows.itersize = 5000
                await rows.execute(self._query(_MESSAGES))
                async for (text,) in rows:
                    line = text.encode()
                    out.write(line + b"\n")
                    tally.add(line)
        return tally

    async def close(self) -> None:
        if self._connection is None:
            return
        try:
            if not self.keep and not self._connection.closed:
                await self._connection.execute(self._query("DROP TABLE IF EXISTS {}"))
        finally:
            await self._connection.close()
            self._connection = None


# -- S3 --------------------------------------------------------------------------------------

_S3_KEY: Final = re.compile(r"(?P<stream>[^/]+)/dt=(?P<date>\d{4}-\d{2}-\d{2})/(?P<name>[^/]+)")


class S3Destination(Destination):
    """A bucket of its own (`chaos-<hex>`) on the S3 endpoint `endpoint` (moto's server)."""

    name = "s3"

    def __init__(
        self,
        endpoint: str,
        bucket: str | None = None,
        *,
        prefix: str = "chaos",
        region: str = AWS_REGION,
    ) -> None:
        self.endpoint = endpoint
        self.bucket = bucket or f"chaos-{_run_id()}"
        self.prefix = prefix
        self.region = region
        self._seen: set[str] = set()
        self._watched: ReadBack | None = None
        self._client: Any = None

    def sink_settings(self) -> dict[str, Any]:
        return {
            "type": "s3",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "endpoint_url": self.endpoint,
        }

    def describe(self) -> dict[str, Any]:
        return {
            "type": self.name,
            "endpoint_url": self.endpoint,
            "bucket": self.bucket,
            "prefix": self.prefix,
        }

    def connector_environment(self, environ: dict[str, str]) -> dict[str, str]:
        return without_aws(environ) | aws_environment()

    def _s3(self) -> Any:
        if self._client is None:
            import boto3

            self._client = boto3.client(
                "s3",
                region_name=self.region,
                endpoint_url=self.endpoint,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",  # moto's dummy key
            )
        return self._client

    async def prepare(self, channels: Mapping[str, str]) -> None:
        await super().prepare(channels)
        self._watched = ReadBack(self._channels)
        await asyncio.to_thread(
            self._s3().create_bucket,
            Bucket=self.bucket,
            CreateBucketConfiguration={"LocationConstraint": self.region},
        )

    def _keys(self) -> Iterator[str]:
        pages = self._s3().get_paginator("list_objects_v2")
        for page in pages.paginate(Bucket=self.bucket, Prefix=f"{self.prefix}/"):
            for item in page.get("Contents", ()):
                yield str(item["Key"])

    def _lines(self, key: str) -> list[bytes]:
        body = self._s3().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        if key.endswith(".gz"):
            body = gzip.decompress(body)
        return body.splitlines()

    def _stream_order(self, keys: list[str], tally: ReadBack) -> list[tuple[str, str]]:
        """(stream, key) of the sink's objects in the documented reading order; other
        objects count as corrupt."""
        found: list[tuple[str, str, str, str]] = []
        for key in keys:
            match = _S3_KEY.fullmatch(key[len(self.prefix) + 1 :])
            if match is None:
                tally.corrupt += 1
                continue
            found.append((match["stream"], match["date"], match["name"], key))
        # Dates ascending, names within a date descending (they sort newest first).
        found.sort(key=lambda f: (f[0], f[1]))
        ordered: list[tuple[str, str]] = []
        start = 0
        while start < len(found):
            end = start
            while end < len(found) and found[end][:2] == found[start][:2]:
                end += 1
            day = sorted(found[start:end], key=lambda f: f[2], reverse=True)
            ordered += [(f[0], f[3]) for f in day]
            start = end
        return ordered

    def _read(self, tally: ReadBack, seen: set[str], out: BinaryIO | None) -> None:
        keys = [k for k in self._keys() if k not in seen]
        for stream, key in self._stream_order(keys, tally):
            lines = self._lines(key)
            seen.add(key)
            if out is not None:
                out.write(orjson.dumps({"object": key}) + b"\n")
            for line in lines:
                if out is not None:
                    out.write(line + b"\n")
                tally.add(line, stream)

    async def held(self) -> Holding:
        assert self._watched is not None, "prepare() first"
        await asyncio.to_thread(self._read, self._watched, self._seen, None)
        return self._watched.holding()

    async def read_back(self, dump: Path) -> ReadBack:
        tally = ReadBack(self._channels)

        def read_all() -> None:
            with dump.open("wb") as out:
                self._read(tally, set(), out)

        await asyncio.to_thread(read_all)
        return tally

    async def close(self) -> None:
        """The bucket stays (moto's server, which holds it, ends with the run)."""
        if self._client is not None:
            await asyncio.to_thread(self._client.close)
            self._client = None
