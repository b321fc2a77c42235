"""`KafkaSink`: the output protocol produced to Kafka, acknowledged by every in-sync replica
before `write` returns.

Needs the `kafka` extra (`pip install 'sfstream[kafka]'`): confluent-kafka (librdkafka) is
imported when a sink is made, never when `sfstream` is.

## The topics

- A RECORD goes to `topic.format(stream=...)` (default: the stream id), keyed by the record's
  key (UTF-8; a null key stays null). Its value is exactly the line the file sink writes for
  it, without the newline. Headers: `sfstream.type` (`RECORD`), `sfstream.stream`,
  `sfstream.replay_id`, and from its `meta`, when present, `sfstream.schema_version`,
  `sfstream.change_type` and `sfstream.run_id`.
- SCHEMA, STATE and GAP messages go to `control_topic`, keyed by the stream id (a stream's
  control messages stay in order in one partition), valued as the file sink's lines, with
  headers `sfstream.type` and `sfstream.stream`; a STATE also carries `sfstream.replay_id` and
  `sfstream.topic` (the topic of the stream's records).
- The sink picks every partition itself: Java's murmur2 hash of the key, modulo the topic's
  partition count, which is what Kafka's Java producer and Kafka Streams compute, so Java
  consumers and Streams joins agree on where a key lives. A null key gets the partition the
  decimal text of its replayId would get. Partition counts come from the topic's metadata,
  read once per sink (and again after a failed write). A missing topic is created by the
  broker when it allows it (`auto.create.topics.enable`, with its default partitions);
  otherwise the write is refused (`StorageError`): create the topics first.

Records of one stream in one partition are in replayId order (only a write retried after a
failure can append a record it missed after later ones that had landed). Across partitions,
and between the records and the control topic, there is no order (the conformance suite's
`order="key"`).

## Writes

The producer is idempotent (`enable.idempotence=true`, `acks=all`; `producer` properties may
not weaken either): the broker keeps each partition's messages in produce order, without
gaps or duplicates from retries. A write is produced in rounds, each waiting for every
delivery report before the next starts: the batch's SCHEMA messages (so a schema is in the
control topic before the records that follow it), then its RECORDs, then its STATE and GAP
messages, in batch order. `write` returns once every report is positive. So a STATE message
in the control topic is a commit marker: every record of its stream up to that replayId is
in the topic.

## Exactly once without transactions

A crash (or a failed write) can leave a batch's records in some partitions and not in others,
and without the batch's STATE. No single high-water mark describes that, so
`high_watermarks` returns `{}` and the engine resumes from its checkpoint, which is never
ahead of what the topics hold. Instead the sink drops, from later writes, the records the
topics already hold. For each stream asked about, `high_watermarks` reads:

1. the stream's control partition backwards to its latest STATE or GAP. A STATE gives the
   stream's *committed* replayId (every record up to it is written: the engine only
   re-sends those after a crash between a write and its checkpoint). A GAP restarts the
   stream's numbering: nothing is dropped for it until its next STATE (at-least-once there).
2. every partition of the stream's topic backwards, collecting the (replayId, key) of the
   stream's records above the committed replayId, until it meets one of the stream's records
   at or below it (or the partition's start, or `scan_limit` messages). These are the records
   of writes that never finished.

A later RECORD is dropped when its replayId is at or below the committed one, or when its
(replayId, key) was found. Since the set is exact, a batch cut anywhere (some partitions
written, some not, or one event's records split between partitions) is completed without a
duplicate and without a loss, whatever the partition counts. A write that fails marks its
streams for the same reading before the sink's next write, so a batch retried on the same sink
is completed the same way. A GAP in a write stops dropping for its stream; a STATE makes its
replayId the committed one.

**Bounds.** A partition is read backwards at most `scan_limit` messages (50,000 by default)
per call. With a topic per stream this stops after a handful of messages. With a topic shared
by several streams, a stream whose records are rare in a partition can make that partition
be read up to the bound at start. Records of an unfinished write further back than the bound
are written again (duplicates, never losses). A topic deleted and recreated between runs
makes the records up to the committed replayId count as written.

**Why not transactions.** They would make batches atomic (`read_committed` consumers never see
a cut batch), but every consumer would have to read with `read_committed` and the principal
would need transactional ACLs; and the broker of the tests does not honour them (Tansu 0.6
accepts InitProducerId, commit and abort, but serves aborted records to `read_committed`
consumers), so that atomicity could not be tested.

## Errors

Unreachable brokers, timeouts (`message.timeout.ms`, 120 s here unless set), lost leaders,
too few in-sync replicas, throttling and fatal idempotence errors (the producer is then
replaced) are `StorageUnavailableError` (retryable). Refused credentials, missing ACLs,
messages larger than allowed (`message.max.bytes`, the topic's `max.message.bytes`), a missing
topic the broker will not create, invalid topic names and policy violations are `StorageError`
(terminal). Bad `producer` properties are `ConfigError`. After any failed write the producer
is replaced, so that nothing of the failed batch is retried behind the sink's back.

All blocking calls run in a worker thread under a `threading.Lock`: the event loop keeps
polling while Kafka answers, and a call abandoned by a cancelled caller finishes before the
next starts (`close` makes an abandoned write give up at once).
"""

from __future__ import annotations

import functools
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

import structlog

from sfstream.errors import ConfigError, StorageError, StorageUnavailableError
from sfstream.protocol import GapMessage, Message, Record, SchemaMessage, StateMessage, encode
from sfstream.sinks._io import run_blocking

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka import Message as KafkaMessage

    from sfstream.state.base import Fence

log = structlog.get_logger("sfstream.sinks.kafka")

_FIXED: Final = {"enable.idempotence": "true", "acks": "all"}
_DEFAULTS: Final = {"message.timeout.ms": "120000", "client.id": "sfstream"}
_REFUSED: Final = {
    "bootstrap.servers": "set sink.bootstrap_servers instead",
    "transactional.id": "the sink does not use transactions (see docs/sinks.md)",
}
# Properties only a producer knows: not handed to the consumer that reads the tails.
_PRODUCER_ONLY: Final = re.compile(
    r"acks|request\.required\.acks|enable\.idempotence|enable\.gapless\.guarantee"
    r"|(message|delivery|transaction|request)\.timeout\.ms|linger\.ms|queue\.buffering\..*"
    r"|batch\..*|compression\..*|retries|message\.send\.max\.retries|partitioner"
    r"|sticky\.partitioning\.linger\.ms|queuing\.strategy|produce\.offset\.report"
    r"|delivery\.report\.only\.error|client\.id"
)
_SENSITIVE: Final = re.compile(r"password|secret|token|jaas|credential|\.pem$|oauthbearer", re.I)
_TOPIC_NAME: Final = re.compile(r"[A-Za-z0-9._-]{1,249}")

_POLL_S: Final = 0.1
_METADATA_TIMEOUT_S: Final = 15.0
_AUTO_CREATE_WAIT_S: Final = 10.0
_DRAIN_S: Final = 10.0
_CLOSE_FLUSH_S: Final = 30.0
_FIRST_CHUNK: Final = 64
DEFAULT_SCAN_LIMIT: Final = 50_000

# librdkafka's errors by name (`KafkaError.name()`): refusals, with what to do about them;
# transient conditions; and the refusals it reports for the whole client (not per message).
_SIZE: Final = (
    "raise sink.producer message.max.bytes (librdkafka's default is 1,000,000 bytes) and the "
    "topic's max.message.bytes"
)
_CREDENTIALS: Final = "check the sasl.* and ssl.* properties of sink.producer"
_MISSING: Final = "create the topic (the broker does not create topics)"
_REFUSALS: Final = {
    "TOPIC_AUTHORIZATION_FAILED": "grant the principal WRITE and DESCRIBE on the topic",
    "CLUSTER_AUTHORIZATION_FAILED": "grant the principal IDEMPOTENT_WRITE on the cluster",
    "MSG_SIZE_TOO_LARGE": _SIZE,
    "RECORD_LIST_TOO_LARGE": _SIZE,
    "INVALID_MSG_SIZE": _SIZE,
    "UNKNOWN_TOPIC_OR_PART": _MISSING,
    "_UNKNOWN_TOPIC": _MISSING,
    "TOPIC_EXCEPTION": "use a topic name Kafka accepts",
    "POLICY_VIOLATION": "the broker's policy refused it",
    "INVALID_RECORD": "the broker refused the record",
    "SASL_AUTHENTICATION_FAILED": _CREDENTIALS,
    "_AUTHENTICATION": _CREDENTIALS,
    "UNSUPPORTED_SASL_MECHANISM": _CREDENTIALS,
    "ILLEGAL_SASL_STATE": _CREDENTIALS,
    "_UNSUPPORTED_FEATURE": "the broker must support the idempotent producer (Kafka 0.11+)",
    "INVALID_REQUIRED_ACKS": "the broker refused acks=all",
    "_INVALID_ARG": "check sink.producer",
}
_TRANSIENT: Final = frozenset(
    [
        "_MSG_TIMED_OUT",
        "_TIMED_OUT",
        "_TIMED_OUT_QUEUE",
        "_TRANSPORT",
        "_ALL_BROKERS_DOWN",
        "_RESOLVE",
        "_PURGE_QUEUE",
        "_PURGE_INFLIGHT",
        "_QUEUE_FULL",
        "_FATAL",
        "_UNKNOWN_PARTITION",
        "_DESTROY",
        "REQUEST_TIMED_OUT",
        "NOT_ENOUGH_REPLICAS",
        "NOT_ENOUGH_REPLICAS_AFTER_APPEND",
        "LEADER_NOT_AVAILABLE",
        "NOT_LEADER_FOR_PARTITION",
        "THROTTLING_QUOTA_EXCEEDED",
        "OUT_OF_ORDER_SEQUENCE_NUMBER",
        "UNKNOWN_PRODUCER_ID",
        "INVALID_PRODUCER_EPOCH",
    ]
)
_CLIENT_REFUSALS: Final = frozenset(
    {
        "_AUTHENTICATION",
        "SASL_AUTHENTICATION_FAILED",
        "UNSUPPORTED_SASL_MECHANISM",
        "CLUSTER_AUTHORIZATION_FAILED",
    }
)

_MASK: Final = 0xFFFFFFFF
_M: Final = 0x5BD1E995
_SEED: Final = 0x9747B28C


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash of `data` (`org.apache.kafka.common.utils.Utils.murmur2`), as
    Java's signed 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    whole = length & ~3
    for i in range(0, whole, 4):
        k = (int.from_bytes(data[i : i + 4], "little") * _M) & _MASK
        k = ((k ^ (k >> 24)) * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[whole + 2] << 16
    if rest >= 2:
        h ^= data[whole + 1] << 8
    if rest >= 1:
        h = ((h ^ data[whole]) * _M) & _MASK
    h = ((h ^ (h >> 13)) * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


@functools.lru_cache(maxsize=65536)
def partition_for(key: bytes, partitions: int) -> int:
    """The partition of `key` among `partitions`, as Kafka's Java producer picks it."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


class _Out(NamedTuple):
    """One message to produce."""

    kind: str  # RECORD, STATE, GAP, SCHEMA
    stream: str
    replay_id: int | None  # a RECORD's or STATE's; None for the others
    record_key: str | None  # a RECORD's key, as the record has it
    key: bytes | None
    value: bytes
    headers: list[tuple[str, str | bytes | None]]
    topic: str = ""
    partition: int = -1


@dataclass
class _Dedupe:
    """What a stream's topic already holds: every record up to `committed` (None: unknown),
    and, above it, the (replayId, key) of the records `present`."""

    committed: int | None
    present: set[tuple[int, str | None]] = field(default_factory=set)

    def holds(self, replay_id: int, key: str | None) -> bool:
        if self.committed is not None and replay_id <= self.committed:
            return True
        return (replay_id, key) in self.present


@dataclass
class _Round:
    """The delivery reports of one round of produced messages."""

    pending: int = 0
    failure: tuple[KafkaError, str, str | None, int | None] | None = None

    def report(self, error: KafkaError | None, message: KafkaMessage) -> None:
        self.pending -= 1
        if error is not None and self.failure is None:
            headers = _headers(message)
            replay = headers.get("sfstream.replay_id")
            self.failure = (
                error,
                message.topic() or "?",
                headers.get("sfstream.stream"),
                int(replay) if replay and replay.isdigit() else None,
            )


class _LibrdkafkaLog:
    """librdkafka's log lines (`logger` property) as structlog events."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        # Python logging levels; librdkafka's errors are mostly a broker it cannot reach yet,
        # which it retries: warnings. What fails a call is raised (and logged) by the sink.
        text = fmt % args if args else fmt
        (log.warning if level >= 30 else log.debug)("sink.kafka.client", message=text)


class KafkaSink:
    """Produces messages to Kafka topics; `write` returns once every one is acknowledged.

    Args:
        bootstrap_servers: `host:port[,host:port...]`.
        topic: the records' topic, a template of `{stream}` (the stream id).
        control_topic: the topic of the SCHEMA, STATE and GAP messages.
        producer: librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`,
            `message.max.bytes`, `compression.type`, ...) on top of the sink's own; booleans
            become "true"/"false". The connection properties also serve the consumer that
            reads the topics' tails.
        scan_limit: how many messages `high_watermarks` reads back at most per partition.

    Raises:
        ConfigError: confluent-kafka is not installed, the topic template is not one, or a
            property is unknown, invalid or would weaken the idempotent producer.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        *,
        topic: str = "{stream}",
        control_topic: str = "sfstream.control",
        producer: Mapping[str, str | bool | int | float] | None = None,
        scan_limit: int = DEFAULT_SCAN_LIMIT,
    ) -> None:
        try:
            import confluent_kafka
        except ImportError as exc:
            raise ConfigError(
                "the Kafka sink needs confluent-kafka: pip install 'sfstream[kafka]'"
            ) from exc
        if scan_limit < 1:
            raise ConfigError("scan_limit must be positive")
        try:
            topic.format(stream="s")
        except (KeyError, IndexError, ValueError) as exc:
            raise ConfigError(
                f"sink.topic {topic!r} must be a topic name with at most {{stream}} in it"
            ) from exc
        if not _TOPIC_NAME.fullmatch(control_topic) or control_topic in (".", ".."):
            raise ConfigError(f"sink.control_topic {control_topic!r} is not a Kafka topic name")
        self._topic = topic
        self._control = control_topic
        self._scan_limit = scan_limit
        self._user = _properties(producer or {})
        self._secrets = [
            value
            for name, value in self._user.items()
            if _SENSITIVE.search(name) and len(value) >= 3
        ]
        self._config: dict[str, Any] = {
            **_DEFAULTS,
            **self._user,
            **_FIXED,
            "bootstrap.servers": bootstrap_servers,
        }
        self._reader_config: dict[str, Any] = {
            **{k: v for k, v in self._user.items() if not _PRODUCER_ONLY.fullmatch(k)},
            "bootstrap.servers": bootstrap_servers,
            "client.id": "sfstream-reader",
            "group.id": "sfstream-sink-reader",  # required; never joined (assign only)
            "enable.auto.commit": "false",
            "enable.partition.eof": "true",
            "allow.auto.create.topics": "false",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_uncommitted",
            "fetch.wait.max.ms": "10",
        }
        self._name = f"Kafka at {bootstrap_servers}"
        # Metadata and reads wait no longer than a message may: an unreachable cluster is
        # reported as soon as a write would report it.
        timeout = self._config["message.timeout.ms"]
        timeout_s = int(timeout) / 1000 if timeout.isdigit() else 0
        self._timeout_s = min(_METADATA_TIMEOUT_S, timeout_s) or _METADATA_TIMEOUT_S
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._closed = False
        self._global_error: KafkaError | None = None
        self._topics: dict[str, str] = {}
        self._partitions: dict[str, int] = {}
        self._dedupe: dict[str, _Dedupe] = {}
        self._stale: set[str] = set()
        self._skipped = 0
        self._producer: Producer | None = None
        self._producer = self._new_producer(confluent_kafka)

    @property
    def duplicates_skipped(self) -> int:
        """Records dropped from writes because the topics already held them."""
        return self._skipped

    async def __aenter__(self) -> KafkaSink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def write(self, messages: Sequence[Message], fence: Fence | None = None) -> None:
        """Produce `messages`; every one is acknowledged by the in-sync replicas on return.

        Records the topics already hold (see the module's docstring) are left out.

        Raises:
            StorageError: Kafka refused (credentials, ACLs, message size, missing topic), or
                the sink is closed.
            StorageUnavailableError: Kafka cannot be reached or did not acknowledge in time.
            EncodingError: a message cannot be encoded; nothing was produced.
        """
        # Encoded here, before any I/O: an unencodable message fails the batch before a byte
        # is produced, and the worker thread never touches the caller's objects.
        outgoing = [_outgoing(message, self._topic_of) for message in messages]
        if self._closed or self._closing.is_set():
            raise StorageError(f"{self._name}: the sink is closed")
        if not outgoing:
            return
        await run_blocking(self._name, "write to", lambda: self._write_sync(outgoing))

    async def high_watermarks(self, streams: Iterable[str]) -> dict[str, int]:
        """Always `{}`: a cut batch has no single mark (see the module's docstring). Reads
        what the topics hold of `streams`, so that later writes leave it out.

        Raises:
            StorageError: the topics cannot be read (ACLs), or the sink is closed.
            StorageUnavailableError: Kafka cannot be reached.
        """
        wanted = frozenset(streams)
        if self._closed or self._closing.is_set():
            raise StorageError(f"{self._name}: the sink is closed")
        if wanted:
            await run_blocking(self._name, "read", lambda: self._scan_sync(wanted))
        return {}

    async def close(self) -> None:
        """Flush and close the producer; idempotent. Written data is already acknowledged."""
        self._closing.set()
        await run_blocking(self._name, "close", self._close_sync)

    # Everything below runs in a worker thread, under `_lock`.

    def _new_producer(self, kafka: Any) -> Producer:
        config = {**self._config, "error_cb": self._on_error, "logger": _LibrdkafkaLog()}
        try:
            producer: Producer = kafka.Producer(config)
        except (kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"sink.producer: librdkafka refused the properties: {self._redact(exc)}"
            ) from None
        return producer

    def _on_error(self, error: KafkaError) -> None:
        """librdkafka's errors that concern no single message (served by `poll`). Connection
        troubles are in librdkafka's own log lines already; refusals and fatal errors are
        logged here."""
        self._global_error = error
        refused = error.fatal() or _is_refusal(error)
        (log.error if refused else log.debug)(
            "sink.kafka.error",
            error=self._redact(error.str()),
            code=error.name(),
            fatal=error.fatal(),
        )

    def _redact(self, text: object) -> str:
        result = str(text)
        for secret in self._secrets:
            result = result.replace(secret, "[REDACTED]")
        return result

    def _write_sync(self, outgoing: list[_Out]) -> None:
        with self._lock:
            producer = self._ensure_open()
            streams = {out.stream for out in outgoing if out.replay_id is not None}
            if self._stale:
                self._scan_locked(frozenset(self._stale))
            try:
                rounds, states, gaps, skipped = self._plan(outgoing)
                producer.poll(0)  # serves reports of earlier calls before errors are noted
                self._global_error = None
                for messages in rounds:
                    if messages:
                        self._deliver(producer, messages)
            except BaseException:
                self._stale.update(streams)
                self._reset_producer()
                raise
            if skipped:
                self._skipped += sum(skipped.values())
                log.info("sink.kafka.duplicates_skipped", streams=skipped)
            for stream in gaps:
                self._dedupe.pop(stream, None)
            for stream, replay_id in states.items():
                # Every record of the stream up to it is in the topic now; records found
                # above it (an unfinished write reached further) still count.
                held = self._dedupe.get(stream)
                above = {p for p in held.present if p[0] > replay_id} if held else set()
                self._dedupe[stream] = _Dedupe(replay_id, above)

    def _ensure_open(self) -> Producer:
        if self._closed or self._closing.is_set():
            raise StorageError(f"{self._name}: the sink is closed")
        if self._producer is None:
            import confluent_kafka

            self._producer = self._new_producer(confluent_kafka)
        return self._producer

    def _plan(
        self, outgoing: list[_Out]
    ) -> tuple[list[list[_Out]], dict[str, int], set[str], dict[str, int]]:
        """The rounds to produce (SCHEMA, RECORD, STATE and GAP), with partitions, leaving
        out the records the topics hold; what the batch settles (each stream's last STATE
        after its last GAP, the streams whose last control message is a GAP); and how many
        records of each stream were left out."""
        schemas: list[_Out] = []
        records: list[_Out] = []
        controls: list[_Out] = []
        states: dict[str, int] = {}
        gaps: set[str] = set()
        skipped: dict[str, int] = {}
        for out in outgoing:
            if out.kind == "RECORD":
                assert out.replay_id is not None
                held = self._dedupe.get(out.stream)
                if held is not None and held.holds(out.replay_id, out.record_key):
                    skipped[out.stream] = skipped.get(out.stream, 0) + 1
                    continue
                records.append(self._placed(self._topic_of(out.stream), out))
            elif out.kind == "SCHEMA":
                schemas.append(self._placed(self._control, out))
            else:
                controls.append(self._placed(self._control, out))
                if out.kind == "GAP":
                    # Numbering restarts: nothing of the stream is dropped after it.
                    self._dedupe.pop(out.stream, None)
                    states.pop(out.stream, None)
                    gaps.add(out.stream)
                else:
                    assert out.replay_id is not None
                    states[out.stream] = out.replay_id
                    gaps.discard(out.stream)
        if not records:
            return [schemas + controls], states, gaps, skipped
        return [schemas, records, controls], states, gaps, skipped

    def _topic_of(self, stream: str) -> str:
        topic = self._topics.get(stream)
        if topic is not None:
            return topic
        topic = self._topic.format(stream=stream)
        if not _TOPIC_NAME.fullmatch(topic) or topic in (".", ".."):
            raise StorageError(
                f"stream {stream} gives the topic name {topic!r} (sink.topic {self._topic!r}), "
                "which Kafka does not accept: up to 249 letters, digits, '.', '_' and '-'"
            )
        self._topics[stream] = topic
        return topic

    def _placed(self, topic: str, out: _Out) -> _Out:
        """`out` on `topic`, its key turned into a partition."""
        count = self._partition_count(topic)
        # A record without a key is spread by its replayId.
        key = out.key if out.key is not None else str(out.replay_id).encode()
        return out._replace(topic=topic, partition=partition_for(key, count))

    def _partition_count(self, topic: str) -> int:
        """The topic's partition count; asking for a missing topic lets the broker create it."""
        count = self._partitions.get(topic)
        if count is not None:
            return count
        from confluent_kafka import KafkaError

        assert self._producer is not None
        deadline = time.monotonic() + _AUTO_CREATE_WAIT_S
        while True:
            metadata = _metadata(
                self._producer,
                topic,
                self._timeout_s,
                f"read the metadata of topic {topic!r} from {self._name}",
                lambda: self._global_error,
            )
            found = metadata.topics.get(topic)
            error = found.error if found is not None else None
            if found is not None and error is None and found.partitions:
                self._partitions[topic] = count = len(found.partitions)
                return count
            waiting = error is None or error.code() in (
                KafkaError.UNKNOWN_TOPIC_OR_PART,
                KafkaError.LEADER_NOT_AVAILABLE,
                KafkaError._UNKNOWN_TOPIC,
            )
            if not waiting or time.monotonic() > deadline:
                break
            time.sleep(0.2)  # a topic the broker is creating
        if error is not None and error.code() in (
            KafkaError.UNKNOWN_TOPIC_OR_PART,
            KafkaError._UNKNOWN_TOPIC,
        ):
            raise StorageError(
                f"cannot write to topic {topic!r} of {self._name}: it does not exist and the "
                "broker does not create topics (auto.create.topics.enable); create it"
            )
        if error is not None:
            raise _kafka_error(error, f"write to topic {topic!r} of {self._name}")
        raise StorageUnavailableError(
            f"cannot write to topic {topic!r} of {self._name} right now: it has no partitions "
            "with a leader yet"
        )

    def _deliver(self, producer: Producer, messages: list[_Out]) -> None:
        """Produce `messages` and wait for every delivery report; raise on the first failure."""
        from confluent_kafka import KafkaException

        round_ = _Round()
        for out in messages:
            if round_.failure is not None:
                break  # what follows would land behind a hole: stop here
            while True:
                try:
                    producer.produce(
                        out.topic,
                        value=out.value,
                        key=out.key,
                        partition=out.partition,
                        headers=out.headers,
                        on_delivery=round_.report,
                    )
                except BufferError:  # librdkafka's queue is full: let it drain
                    producer.poll(_POLL_S)
                    self._interrupt(producer, round_)
                    continue
                except KafkaException as exc:
                    self._drain(producer, round_)
                    raise _kafka_error(
                        exc.args[0], f"write {_described(out)} to {self._name}"
                    ) from exc
                round_.pending += 1
                break
        while round_.pending > 0:
            producer.poll(_POLL_S)
            self._interrupt(producer, round_)
        if round_.failure is not None:
            error, topic, stream, replay_id = round_.failure
            what = f"topic {topic!r}"
            if stream is not None:
                what += f" (stream {stream}" + (
                    f", replayId {replay_id})" if replay_id is not None else ")"
                )
            raise _kafka_error(error, f"write to {what} of {self._name}", self._global_error)

    def _interrupt(self, producer: Producer, round_: _Round) -> None:
        """Give a write up when the sink is closing or the producer is unusable."""
        error = self._global_error
        if self._closing.is_set():
            self._drain(producer, round_)
            raise StorageError(f"{self._name}: the sink was closed during a write")
        if error is not None and (error.fatal() or _is_refusal(error)):
            self._drain(producer, round_)
            raise _kafka_error(error, f"write to {self._name}")

    def _drain(self, producer: Producer, round_: _Round) -> None:
        """Drop what is not yet acknowledged, and collect its reports."""
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        deadline = time.monotonic() + _DRAIN_S
        while round_.pending > 0 and time.monotonic() < deadline:
            producer.poll(_POLL_S)

    def _reset_producer(self) -> None:
        """Replace the producer after a failed write: nothing of the failed batch may be
        retried by it later, behind the next write's reading of the topics."""
        producer, self._producer = self._producer, None
        self._partitions.clear()
        if producer is None:
            return
        try:
            producer.purge(in_queue=True, in_flight=True, blocking=False)
            producer.flush(0)
            producer.close()
        except Exception:  # the producer is dropped whatever it says
            log.debug("sink.kafka.producer_close_failed", exc_info=True)
        log.warning("sink.kafka.producer_replaced", streams_to_reread=sorted(self._stale))

    def _close_sync(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
            self._closed = True
            if producer is None:
                return
            left = producer.flush(_CLOSE_FLUSH_S)
            if left:
                log.warning("sink.kafka.close_dropped", messages=left)
                producer.purge()
            producer.close()

    # -- reading the tails ---------------------------------------------------------------

    def _scan_sync(self, streams: frozenset[str]) -> None:
        with self._lock:
            if self._closed or self._closing.is_set():
                raise StorageError(f"{self._name}: the sink is closed")
            self._scan_locked(streams)

    def _scan_locked(self, streams: frozenset[str]) -> None:
        """Read what the topics hold of `streams` (see the module's docstring)."""
        import confluent_kafka

        began = time.monotonic()
        topics = {stream: self._topic_of(stream) for stream in streams}
        try:
            consumer = confluent_kafka.Consumer(
                {**self._reader_config, "error_cb": self._on_error, "logger": _LibrdkafkaLog()}
            )
        except (confluent_kafka.KafkaException, ValueError, TypeError) as exc:
            raise ConfigError(
                f"sink.producer: librdkafka refused the properties: {self._redact(exc)}"
            ) from None
        reader = _TailReader(
            consumer, self._name, self._scan_limit, self._timeout_s, lambda: self._global_error
        )
        try:
            committed, after_gap = self._read_control(reader, topics)
            by_topic: dict[str, dict[str, int | None]] = {}
            for stream in streams - after_gap:
                by_topic.setdefault(topics[stream], {})[stream] = committed.get(stream)
            found: dict[str, _Dedupe] = {}
            for topic, marks in by_topic.items():
                present = self._read_records(reader, topic, marks)
                for stream, mark in marks.items():
                    found[stream] = _Dedupe(mark, present.get(stream, set()))
        finally:
            consumer.close()
        for stream in streams:
            self._dedupe.pop(stream, None)
        self._dedupe.update(found)
        self._stale.difference_update(streams)
        log.info(
            "sink.kafka.tails_read",
            committed={s: d.committed for s, d in found.items()},
            after_gap=sorted(streams - found.keys()),
            messages=reader.messages_read,
            unfinished={s: len(d.present) for s, d in found.items() if d.present},
            duration_s=round(time.monotonic() - began, 3),
        )

    def _read_control(
        self, reader: _TailReader, topics: Mapping[str, str]
    ) -> tuple[dict[str, int], set[str]]:
        """Each stream's committed replayId, from its latest STATE (when that was written
        for the same topic), and the streams whose latest control message is a GAP."""
        committed: dict[str, int] = {}
        after_gap: set[str] = set()
        count = reader.partition_count(self._control)
        if count is None:
            return committed, after_gap
        groups: dict[int, set[str]] = {}
        for stream in topics:
            groups.setdefault(partition_for(stream.encode(), count), set()).add(stream)
        for partition, pending in groups.items():
            for message in reader.backwards(self._control, partition):
                headers = _headers(message)
                owner = headers.get("sfstream.stream")
                if owner is None or owner not in pending:
                    continue
                kind = headers.get("sfstream.type")
                if kind == "GAP":
                    after_gap.add(owner)
                elif kind == "STATE":
                    replay = headers.get("sfstream.replay_id", "")
                    if headers.get("sfstream.topic") == topics[owner] and replay.isdigit():
                        committed[owner] = int(replay)
                else:
                    continue
                pending.discard(owner)
                if not pending:
                    break
        return committed, after_gap

    def _read_records(
        self, reader: _TailReader, topic: str, marks: Mapping[str, int | None]
    ) -> dict[str, set[tuple[int, str | None]]]:
        """The (replayId, key) of each stream's records above its mark, in every partition."""
        count = reader.partition_count(topic)
        present: dict[str, set[tuple[int, str | None]]] = {}
        for partition in range(count or 0):
            pending = set(marks)
            for message in reader.backwards(topic, partition):
                headers = _headers(message)
                stream = headers.get("sfstream.stream")
                replay = headers.get("sfstream.replay_id", "")
                if (
                    stream not in pending
                    or headers.get("sfstream.type") != "RECORD"
                    or not replay.isdigit()
                ):
                    continue
                mark = marks[stream]
                if mark is not None and int(replay) <= mark:
                    pending.discard(stream)  # everything before it is older
                    if not pending:
                        break
                    continue
                raw = message.key()
                key = None if raw is None else raw.decode("utf-8", "surrogateescape")
                present.setdefault(stream, set()).add((int(replay), key))
        return present


class _TailReader:
    """Reads partitions backwards, newest message first, with one consumer (`assign` only:
    no group is joined)."""

    def __init__(
        self,
        consumer: Consumer,
        name: str,
        limit: int,
        timeout_s: float,
        errors: Callable[[], KafkaError | None],
    ) -> None:
        self._consumer = consumer
        self._name = name
        self._limit = limit
        self._timeout_s = timeout_s
        self._errors = errors
        self.messages_read = 0

    def partition_count(self, topic: str) -> int | None:
        """The topic's partition count; None when it does not exist (it is not created)."""
        from confluent_kafka import KafkaError

        doing = f"read topic {topic!r} of {self._name}"
        metadata = _metadata(self._consumer, topic, self._timeout_s, doing, self._errors)
        found = metadata.topics.get(topic)
        if found is None or (
            found.error is not None
            and found.error.code() in (KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_TOPIC)
        ):
            return None
        if found.error is not None:
            raise _kafka_error(found.error, f"read topic {topic!r} of {self._name}")
        return len(found.partitions)

    def backwards(self, topic: str, partition: int) -> Iterator[KafkaMessage]:
        """The partition's messages, newest first, `limit` at most.

        Chunks of growing size are read forward and handed out in reverse. The first chunk
        is read up to the end of the partition rather than to its reported high watermark:
        some brokers (Tansu 0.6) report the last batch's base offset + 1 there.
        """
        from confluent_kafka import KafkaException, TopicPartition

        try:
            low, high = self._consumer.get_watermark_offsets(
                TopicPartition(topic, partition), timeout=self._timeout_s, cached=False
            )
        except KafkaException as exc:
            raise _kafka_error(exc.args[0], f"read topic {topic!r} of {self._name}") from exc
        if high <= low:
            return
        chunk = _FIRST_CHUNK
        start, end = max(low, high - chunk), None
        read = 0
        while True:
            messages = self._forward(topic, partition, start, end)
            self.messages_read += len(messages)
            for message in reversed(messages):
                yield message
                read += 1
                if read >= self._limit:
                    log.warning(
                        "sink.kafka.scan_limit_reached",
                        topic=topic,
                        partition=partition,
                        limit=self._limit,
                    )
                    return
            if start <= low:
                return
            chunk = min(chunk * 2, 16_384)
            start, end = max(low, start - chunk), start

    def _forward(
        self, topic: str, partition: int, start: int, end: int | None
    ) -> list[KafkaMessage]:
        """Messages from offset `start` to `end` (exclusive; None: the partition's end)."""
        from confluent_kafka import KafkaError, TopicPartition

        self._consumer.assign([TopicPartition(topic, partition, start)])
        found: list[KafkaMessage] = []
        stalled = time.monotonic() + self._timeout_s
        try:
            while True:
                # What is already fetched, at once; else wait a little for more.
                batch = self._consumer.consume(500, timeout=0)
                if not batch:
                    polled = self._consumer.poll(_POLL_S)
                    batch = [polled] if polled is not None else []
                refusal = self._errors()
                if refusal is not None and (refusal.fatal() or _is_refusal(refusal)):
                    raise _kafka_error(refusal, f"read topic {topic!r} of {self._name}")
                if not batch and time.monotonic() > stalled:
                    raise StorageUnavailableError(
                        f"cannot read topic {topic!r} of {self._name} right now: "
                        f"partition {partition} gave nothing for {self._timeout_s:g} s"
                    )
                for message in batch:
                    stalled = time.monotonic() + self._timeout_s
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            return found
                        if error.name() in _REFUSALS or error.fatal():
                            raise _kafka_error(error, f"read topic {topic!r} of {self._name}")
                        continue  # transient: librdkafka retries by itself
                    offset = message.offset()
                    if end is not None and offset is not None and offset >= end:
                        return found
                    found.append(message)
                    if end is not None and offset is not None and offset >= end - 1:
                        return found
        finally:
            self._consumer.unassign()


# -- helpers ---------------------------------------------------------------------------------


def _properties(given: Mapping[str, str | bool | int | float]) -> dict[str, str]:
    """The user's librdkafka properties as strings; refuses those that would weaken the
    idempotent producer or that the sink sets itself."""
    properties: dict[str, str] = {}
    problems: list[str] = []
    for name, value in given.items():
        text = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if name in _REFUSED:
            problems.append(f"{name}: {_REFUSED[name]}")
        elif name == "enable.idempotence" and text.lower() != "true":
            problems.append(
                "enable.idempotence: must stay true (exactly-once delivery relies on it)"
            )
        elif name in ("acks", "request.required.acks") and text.lower() not in ("all", "-1"):
            problems.append(
                f"{name}: must stay all (a write is durable once every in-sync replica has it)"
            )
        else:
            # One name for the delivery timeout, which also bounds the sink's own waits.
            properties["message.timeout.ms" if name == "delivery.timeout.ms" else name] = text
    if problems:
        raise ConfigError("sink.producer: " + "; ".join(problems))
    return properties


def _outgoing(message: Message, topic_of: Callable[[str], str]) -> _Out:
    """`message` as a Kafka message (topic and partition still to be chosen)."""
    value = encode(message)
    stream = message.stream
    kind = message.type
    headers: list[tuple[str, str | bytes | None]] = [
        ("sfstream.type", kind.encode()),
        ("sfstream.stream", stream.encode()),
    ]
    if isinstance(message, Record):
        headers.append(("sfstream.replay_id", str(message.replay_id).encode()))
        meta = message.meta
        headers.extend(
            (f"sfstream.{name}", str(item).encode())
            for name in ("schema_version", "change_type", "run_id")
            if (item := meta.get(name)) is not None
        )
        key = None if message.key is None else message.key.encode("utf-8", "surrogateescape")
        return _Out(kind, stream, message.replay_id, message.key, key, value, headers)
    if isinstance(message, StateMessage):
        headers.append(("sfstream.replay_id", str(message.replay_id).encode()))
        headers.append(("sfstream.topic", topic_of(stream).encode()))
        return _Out(kind, stream, message.replay_id, None, stream.encode(), value, headers)
    assert isinstance(message, GapMessage | SchemaMessage)
    return _Out(kind, stream, None, None, stream.encode(), value, headers)


def _headers(message: KafkaMessage) -> dict[str, str]:
    """A message's headers as text (the first of each name)."""
    result: dict[str, str] = {}
    given = message.headers() or []
    for name, value in given.items() if isinstance(given, dict) else given:
        if name not in result and isinstance(value, bytes):
            result[name] = value.decode("utf-8", "replace")
    return result


def _described(out: _Out) -> str:
    if out.kind == "RECORD":
        return f"the record of stream {out.stream} at replayId {out.replay_id}"
    return f"a {out.kind} message of stream {out.stream}"


def _metadata(
    client: Producer | Consumer,
    topic: str,
    timeout_s: float,
    doing: str,
    errors: Callable[[], KafkaError | None],
) -> Any:
    """The cluster's metadata of `topic`, asked for in short attempts for `timeout_s` at
    most; a refusal that the client reports meanwhile (credentials) ends the wait at once."""
    from confluent_kafka import KafkaException

    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            return client.list_topics(topic, timeout=min(1.0, max(0.1, left)))
        except KafkaException as exc:
            client.poll(0)  # serves the client's error callbacks
            latest = errors()
            if latest is not None and (latest.fatal() or _is_refusal(latest)):
                raise _kafka_error(latest, doing) from exc
            if left <= 1.0:
                raise _kafka_error(exc.args[0], doing, latest) from exc
            time.sleep(_POLL_S)


def _is_refusal(error: KafkaError) -> bool:
    """An error of the whole client that no retry will fix (credentials, ACLs)."""
    return error.name() in _CLIENT_REFUSALS


def _kafka_error(
    error: KafkaError, doing: str, context: KafkaError | None = None
) -> StorageError | StorageUnavailableError:
    """The sfstream error for librdkafka's `error` while doing `doing`; `context` is the
    client's latest error (why a message timed out, say)."""
    name, text = error.name(), error.str()
    if name in _REFUSALS:
        return StorageError(f"cannot {doing}: {text} [{name}]; {_REFUSALS[name]}")
    if name in _TRANSIENT or error.retriable() or error.fatal():
        why = ""
        if context is not None and context.name() != name:
            why = f" (latest client error: {context.str()} [{context.name()}])"
        return StorageUnavailableError(f"cannot {doing} right now: {text} [{name}]{why}")
    return StorageError(f"cannot {doing}: {text} [{name}]")
