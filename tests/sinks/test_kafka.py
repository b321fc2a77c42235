"""KafkaSink against a real Kafka-protocol broker (Tansu, see tests/kafka.py)."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sfstream.engine.config import Config
from sfstream.errors import ConfigError, StorageError, StorageUnavailableError
from sfstream.protocol import (
    GapMessage,
    Message,
    Record,
    SchemaMessage,
    StateMessage,
    decode,
    encode,
)
from sfstream.sinks import Sink
from sfstream.sinks.kafka import KafkaSink, murmur2, partition_for
from sfstream.testing.sinks import SINK_CHECKS, SinkCheck, check_sink
from sfstream_emulator import Emulator, EmulatorSettings
from tests.conftest import MakeConfig
from tests.kafka import Broker, Consumed, ProxiedBroker, free_port, list_topics, read_topics
from tests.runners.process import start_run

BIG: dict[str, str | bool | int | float] = {"message.max.bytes": 16 * 1024 * 1024}


class KafkaHarness:
    """Sinks writing to topics of their own; read back with a plain consumer from the start
    of every partition of those topics, not through the sink."""

    order = "key"

    def __init__(self, bootstrap: str, *, shared_topic: bool = False) -> None:
        self.bootstrap = bootstrap
        self.prefix = Broker.prefix("conformance")
        self.topic = f"{self.prefix}.records" if shared_topic else f"{self.prefix}.{{stream}}"
        self.control_topic = f"{self.prefix}.control"

    async def open(self) -> Sink:
        return KafkaSink(
            self.bootstrap, topic=self.topic, control_topic=self.control_topic, producer=BIG
        )

    async def read_back(self) -> list[dict[str, Any]]:
        topics = await asyncio.to_thread(list_topics, self.bootstrap, self.prefix + ".")
        consumed = await asyncio.to_thread(read_topics, self.bootstrap, topics)
        # Oldest first: by the time each was produced (a message of a later write is never
        # older); then partition by partition, which keeps each key's order.
        consumed.sort(key=lambda m: (m.timestamp_ms, m.topic, m.partition, m.offset))
        return [decode(message.value) for message in consumed]


@pytest.mark.parametrize("shared", [False, True], ids=["topic-per-stream", "one-topic"])
@pytest.mark.parametrize(("name", "check"), SINK_CHECKS, ids=[name for name, _ in SINK_CHECKS])
async def test_conformance(name: str, check: SinkCheck, shared: bool, kafka_broker: Broker) -> None:
    await check(KafkaHarness(kafka_broker.bootstrap, shared_topic=shared))


async def test_whole_suite_on_one_location(kafka_broker: Broker) -> None:
    await check_sink(KafkaHarness(kafka_broker.bootstrap, shared_topic=True))


# -- layout: topics, keys, partitions, headers ---------------------------------------------

EMITTED = "2024-05-01T12:00:00.000000Z"


def record(
    stream: str, replay_id: int, key: str | None = "", meta: dict[str, Any] | None = None
) -> Record:
    return Record(
        stream,
        f"001{replay_id:015d}" if key == "" else key,
        replay_id,
        {"n": replay_id},
        meta if meta is not None else {},
        EMITTED,
    )


class Topics:
    """A test's own topics on the shared broker, and how to read them back."""

    def __init__(self, bootstrap: str, *, shared: bool = False) -> None:
        self.bootstrap = bootstrap
        self.prefix = Broker.prefix("kafka")
        self.topic = f"{self.prefix}.records" if shared else f"{self.prefix}.{{stream}}"
        self.control = f"{self.prefix}.control"

    def sink(self, **kwargs: Any) -> KafkaSink:
        kwargs.setdefault("topic", self.topic)
        return KafkaSink(self.bootstrap, control_topic=self.control, **kwargs)

    def records_topic(self, stream: str) -> str:
        return self.topic.format(stream=stream)

    async def read(self) -> list[Consumed]:
        topics = await asyncio.to_thread(list_topics, self.bootstrap, self.prefix + ".")
        return await asyncio.to_thread(read_topics, self.bootstrap, topics)

    async def records(self) -> list[dict[str, Any]]:
        """Every RECORD held, decoded, in offset order per partition."""
        found = [decode(m.value) for m in await self.read() if m.topic != self.control]
        return [m for m in found if m["type"] == "RECORD"]


def once_each(records: list[dict[str, Any]]) -> Counter[tuple[str, int, str | None]]:
    return Counter((r["stream"], r["replay_id"], r["key"]) for r in records)


async def test_records_controls_keys_partitions_and_headers(kafka_broker: Broker) -> None:
    topics = Topics(kafka_broker.bootstrap)
    stream = "sf.event.account_changes"
    meta = {"change_type": "UPDATE", "schema_version": 3, "run_id": "run-1", "other": "x"}
    messages: list[Message] = [
        SchemaMessage(stream=stream, subject=stream, version=3, schema={"type": "object"}),
        *[record(stream, n, meta=meta) for n in range(1, 41)],
        record(stream, 41, key=None),
        record(stream, 42, key=None, meta={}),
        GapMessage(stream, "expired", 42, "latest"),
        StateMessage(stream, 42),
    ]
    async with topics.sink() as sink:
        await sink.write(messages)
    consumed = await topics.read()
    by_value = {m.value: m for m in consumed}
    assert len(by_value) == len(consumed) == len(messages)
    records_topic = topics.records_topic(stream)
    for message in messages:
        found = by_value[encode(message)]  # the file sink's line, without its newline
        if isinstance(message, Record):
            assert found.topic == records_topic
            key = None if message.key is None else message.key.encode()
            assert found.key == key
            # Tansu creates missing topics with 4 partitions.
            assert found.partition == partition_for(key or str(message.replay_id).encode(), 4)
            expected = {
                "sfstream.type": "RECORD",
                "sfstream.stream": stream,
                "sfstream.replay_id": str(message.replay_id),
            }
            if message.meta:
                expected |= {
                    "sfstream.change_type": "UPDATE",
                    "sfstream.schema_version": "3",
                    "sfstream.run_id": "run-1",
                }
            assert found.headers == expected
        else:
            assert found.topic == topics.control
            assert found.key == stream.encode()
            assert found.partition == partition_for(stream.encode(), 4)
            assert found.headers["sfstream.type"] == message.type
            assert found.headers["sfstream.stream"] == stream
    state = by_value[encode(messages[-1])]
    assert state.headers["sfstream.replay_id"] == "42"
    assert state.headers["sfstream.topic"] == records_topic
    # Within a partition, a stream's records are in replayId order.
    for partition in range(4):
        ids = [
            int(m.headers["sfstream.replay_id"])
            for m in consumed
            if m.topic == records_topic and m.partition == partition
        ]
        assert ids == sorted(ids)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        # Kafka's own vectors: clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java
        (b"21", -973932308),
        (b"foobar", -790332482),
        (b"a-little-bit-long-string", -985981536),
        (b"a-little-bit-longer-string", -1486304829),
        (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
        (b"abc", 479470107),
    ],
)
def test_murmur2_is_javas(key: bytes, expected: int) -> None:
    assert murmur2(key) == expected


async def test_partitions_agree_with_librdkafkas_java_compatible_partitioner(
    kafka_broker: Broker,
) -> None:
    # librdkafka's `murmur2` partitioner is documented as Java-compatible; it picks the
    # partitions itself here, and the sink's choice must be the same.
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topic = Broker.prefix("murmur")
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=7)])[topic].result(15)
    keys = [f"001{n:015d}".encode() for n in range(200)] + ["clé-🔑".encode(), b"x", b"xy"]
    chosen: dict[bytes, int] = {}

    def remember(key: bytes) -> Any:
        def report(error: Any, message: Any) -> None:
            assert error is None
            chosen[key] = message.partition()

        return report

    producer = Producer({"bootstrap.servers": kafka_broker.bootstrap, "partitioner": "murmur2"})
    for key in keys:
        producer.produce(topic, value=b"v", key=key, on_delivery=remember(key))
    assert producer.flush(15) == 0
    assert chosen == {key: partition_for(key, 7) for key in keys}
    assert len(set(chosen.values())) == 7


async def test_an_existing_topic_keeps_its_partition_count(kafka_broker: Broker) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic  # type: ignore[attr-defined]

    topics = Topics(kafka_broker.bootstrap)
    stream = "sf.event.order_placed"
    admin = AdminClient({"bootstrap.servers": kafka_broker.bootstrap})
    name = topics.records_topic(stream)
    admin.create_topics([NewTopic(name, num_partitions=3)])[name].result(15)
    messages = [record(stream, n) for n in range(1, 61)]
    async with topics.sink() as sink:
        await sink.write(messages)
    consumed = [m for m in await topics.read() if m.topic == name]
    assert len(consumed) == 60
    assert {m.partition for m in consumed} == {0, 1, 2}
    for message in consumed:
        assert message.key is not None
        assert message.partition == partition_for(message.key, 3)


async def test_a_missing_topic_is_created_by_the_broker_on_write_only(
    kafka_broker: Broker,
) -> None:
    topics = Topics(kafka_broker.bootstrap)
    stream = "sf.event.new"
    async with topics.sink() as sink:
        assert await sink.high_watermarks([stream]) == {}
        # Reading creates nothing.
        assert await asyncio.to_thread(list_topics, kafka_broker.bootstrap, topics.prefix) == []
        await sink.write([record(stream, 1), StateMessage(stream, 1)])
    assert await asyncio.to_thread(list_topics, kafka_broker.bootstrap, topics.prefix) == sorted(
        [topics.control, topics.records_topic(stream)]
    )
    assert [r["replay_id"] for r in await topics.records()] == [1]


# -- exactly once: what an unfinished write left is not written again -----------------------


def split_event(stream: str, replay_id: int, keys: list[str]) -> list[Record]:
    """One event merged into several records: the same replayId, different keys."""
    return [record(stream, replay_id, key=key) for key in keys]


@pytest.mark.parametrize("shared", [False, True], ids=["topic-per-stream", "one-topic"])
async def test_a_cut_batch_is_completed_without_duplicates(
    kafka_broker: Broker, shared: bool
) -> None:
    topics = Topics(kafka_broker.bootstrap, shared=shared)
    a, b = "sf.event.a", "sf.event.b"
    first: list[Message] = [record(a, 1), record(b, 2), StateMessage(a, 1), StateMessage(b, 2)]
    cut_records: list[Record] = [
        *[record(a, n) for n in range(3, 30)],
        *split_event(a, 30, ["001A", "001B", "001C", "001D", "001E"]),
        *[record(b, n) for n in range(31, 60)],
        record(b, 60, key=None),
    ]
    batch: list[Message] = [*cut_records, StateMessage(a, 30), StateMessage(b, 60)]
    # A crash in the middle of the batch: the records of two partitions landed (and one of
    # the split event's records elsewhere), the STATEs did not.
    landed = [
        r
        for r in cut_records
        if partition_for((r.key or str(r.replay_id)).encode(), 4) in (0, 2) or r.key == "001C"
    ]
    assert 0 < len(landed) < len(cut_records)
    async with topics.sink() as sink:
        await sink.write(first)
    async with topics.sink() as crashed:
        await crashed.write(landed)
    # The next run: the engine resumes from its checkpoint (before `first`'s commit, say)
    # and writes everything again.
    async with topics.sink() as sink:
        assert await sink.high_watermarks([a, b]) == {}
        with capture_logs() as logs:
            await sink.write([*first, *batch])
        assert sink.duplicates_skipped == 2 + len(landed)
        await sink.write([record(a, 61), StateMessage(a, 61)])
    assert [e["streams"] for e in logs if e["event"] == "sink.kafka.duplicates_skipped"]
    held = once_each(await topics.records())
    assert set(held.values()) == {1}
    assert set(held) == {
        (r.stream, r.replay_id, r.key)
        for r in [*first, *cut_records, record(a, 61)]
        if isinstance(r, Record)
    }


async def test_without_asking_for_marks_nothing_is_dropped(kafka_broker: Broker) -> None:
    # The engine asks for marks at start; a sink that was not asked writes what it is given.
    topics = Topics(kafka_broker.bootstrap)
    stream = "sf.event.a"
    async with topics.sink() as sink:
        await sink.write([record(stream, 1), StateMessage(stream, 1)])
    async with topics.sink() as sink:
        await sink.write([record(stream, 1)])
    assert once_each(await topics.records())[(stream, 1, record(stream, 1).key)] == 2


async def test_a_gap_restarts_the_numbering(kafka_broker: Broker) -> None:
    topics = Topics(kafka_broker.bootstrap)
    s = "sf.event.a"
    async with topics.sink() as sink:
        await sink.high_watermarks([s])
        await sink.write([record(s, 10), record(s, 11), StateMessage(s, 11)])
        # Lower replayIds after a GAP are new events: written, in the same batch or later.
        await sink.write([GapMessage(s, "expired", 11, "earliest"), record(s, 5)])
        await sink.write([record(s, 6), StateMessage(s, 6)])
    async with topics.sink() as sink:
        assert await sink.high_watermarks([s]) == {}
        # The latest STATE after the GAP counts again: 5 and 6 are held.
        await sink.write([record(s, 5), record(s, 6), record(s, 7), StateMessage(s, 7)])
        assert sink.duplicates_skipped == 2
        await sink.write([GapMessage(s, "expired", 7, "latest")])
    async with topics.sink() as sink:
        # A GAP last: nothing is dropped until the next STATE (at-least-once there).
        await sink.high_watermarks([s])
        await sink.write([record(s, 7)])
        assert sink.duplicates_skipped == 0
    ids = [r["replay_id"] for r in await topics.records()]
    assert sorted(ids) == [5, 6, 7, 7, 10, 11]


async def test_a_state_written_for_another_topic_does_not_count(kafka_broker: Broker) -> None:
    topics = Topics(kafka_broker.bootstrap)
    s = "sf.event.a"
    async with topics.sink() as sink:
        await sink.write([record(s, 1), record(s, 2), StateMessage(s, 2)])
    # The same control topic, the records now in another topic: they are not there yet.
    moved = f"{topics.prefix}.moved.{{stream}}"
    async with topics.sink(topic=moved) as sink:
        await sink.high_watermarks([s])
        await sink.write([record(s, 1), record(s, 2), StateMessage(s, 2)])
        assert sink.duplicates_skipped == 0
    consumed = [m for m in await topics.read() if m.topic == moved.format(stream=s)]
    assert len(consumed) == 2


async def test_the_backward_read_stops_at_its_bound(kafka_broker: Broker) -> None:
    topics = Topics(kafka_broker.bootstrap, shared=True)
    quiet, busy = "sf.event.quiet", "sf.event.busy"
    async with topics.sink() as sink:
        await sink.write([record(quiet, 1)])  # unfinished: no STATE
        await sink.write([record(busy, n) for n in range(2, 400)])
    async with topics.sink(scan_limit=20) as sink:
        with capture_logs() as logs:
            await sink.high_watermarks([quiet])
        # Beyond the bound: written again (a duplicate, never a loss).
        await sink.write([record(quiet, 1)])
        assert sink.duplicates_skipped == 0
    assert "sink.kafka.scan_limit_reached" in [e["event"] for e in logs]
    async with topics.sink() as sink:
        await sink.high_watermarks([quiet])
        await sink.write([record(quiet, 1)])
        assert sink.duplicates_skipped == 1


# -- the network: a broker that goes away and comes back ------------------------------------

FAST_RECONNECT: dict[str, str | bool | int | float] = {
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 200,
}


def batch_of(stream: str, first: int, count: int, pad: int = 0) -> list[Message]:
    return [
        *[
            Record(stream, f"001{n:015d}", n, {"n": n, "pad": "x" * pad}, {}, EMITTED)
            for n in range(first, first + count)
        ],
        StateMessage(stream, first + count - 1),
    ]


async def test_a_short_outage_makes_the_write_wait(kafka_behind_proxy: ProxiedBroker) -> None:
    proxy = kafka_behind_proxy.proxy
    topics = Topics(kafka_behind_proxy.bootstrap)
    s = "sf.event.a"
    async with topics.sink(producer=FAST_RECONNECT) as sink:
        await sink.high_watermarks([s])
        await sink.write(batch_of(s, 1, 10))
        proxy.cut()
        writing = asyncio.create_task(sink.write(batch_of(s, 11, 500)))
        await asyncio.sleep(2)
        assert not writing.done()
        proxy.restore()
        await asyncio.wait_for(writing, 30)
    held = once_each(await topics.records())
    assert sorted(replay for _, replay, _ in held) == list(range(1, 511))
    assert set(held.values()) == {1}


async def test_a_long_outage_fails_the_write_retryably_and_a_retry_completes_it(
    kafka_behind_proxy: ProxiedBroker,
) -> None:
    proxy = kafka_behind_proxy.proxy
    topics = Topics(kafka_behind_proxy.bootstrap)
    s, t = "sf.event.a", "sf.event.b"
    # Small produce requests, so that the cut falls between some of them.
    producer = {**FAST_RECONNECT, "message.timeout.ms": 3000, "batch.num.messages": 50}
    batch = batch_of(s, 11, 2000, pad=200) + batch_of(t, 5000, 1000, pad=200)
    async with topics.sink(producer=producer) as sink:
        await sink.high_watermarks([s, t])
        await sink.write(batch_of(s, 1, 10))
        # Cut once some of the batch went through: part of it lands, part does not.
        proxy.cut_after(200_000)
        with pytest.raises(StorageUnavailableError) as raised:
            await sink.write(batch)
        assert raised.value.retryable
        assert "right now" in str(raised.value)
        assert proxy.cuts == 1
        proxy.restore()
        landed = len(await topics.records()) - 10
        assert 0 < landed < 3000, landed
        # The engine retries the batch (a restart would too, see the SIGKILL audit).
        await sink.write(batch)
        assert sink.duplicates_skipped >= landed
    held = once_each(await topics.records())
    assert set(held.values()) == {1}
    assert len(held) == 3010


async def test_close_gives_up_a_write_stuck_in_an_outage(
    kafka_behind_proxy: ProxiedBroker,
) -> None:
    proxy = kafka_behind_proxy.proxy
    topics = Topics(kafka_behind_proxy.bootstrap)
    s = "sf.event.a"
    sink = topics.sink(producer=FAST_RECONNECT)
    await sink.write(batch_of(s, 1, 10))
    proxy.cut()
    writing = asyncio.create_task(sink.write(batch_of(s, 11, 10)))
    await asyncio.sleep(0.5)
    began = time.monotonic()
    await sink.close()
    assert time.monotonic() - began < 15
    with pytest.raises(StorageError, match="closed during a write"):
        await writing
    with pytest.raises(StorageError, match="closed"):
        await sink.write([])
    await sink.close()


async def test_an_unreachable_cluster_is_retryable(tmp_path: Path) -> None:
    port = free_port()  # nobody listens there
    sink = KafkaSink(f"127.0.0.1:{port}", producer={"message.timeout.ms": 1500})
    try:
        with pytest.raises(StorageUnavailableError, match=f"127.0.0.1:{port}"):
            await sink.write([record("sf.event.a", 1)])
        with pytest.raises(StorageUnavailableError):
            await sink.high_watermarks(["sf.event.a"])
    finally:
        await sink.close()


async def test_refused_credentials_fail_the_write_at_once(
    kafka_broker_with_authentication: Broker,
) -> None:
    secret = "pa55-w0rd-never-shown"
    sink = KafkaSink(
        kafka_broker_with_authentication.bootstrap,
        producer={
            "security.protocol": "SASL_PLAINTEXT",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": "nobody",
            "sasl.password": secret,
        },
    )
    began = time.monotonic()
    try:
        with capture_logs() as logs, pytest.raises(StorageError) as raised:
            await sink.write([record("sf.event.a", 1)])
    finally:
        await sink.close()
    assert not raised.value.retryable
    assert "SASL authentication error" in str(raised.value)
    assert "check the sasl.* and ssl.* properties" in str(raised.value)
    # Well before message.timeout.ms (120 s): a refusal is not waited out.
    assert time.monotonic() - began < 20
    assert secret not in str(raised.value)
    assert secret not in str(logs)


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("properties", "message"),
    [
        ({"enable.idempotence": False}, "enable.idempotence: must stay true"),
        ({"acks": 1}, "acks: must stay all"),
        ({"request.required.acks": "0"}, "must stay all"),
        ({"transactional.id": "x"}, "does not use transactions"),
        ({"bootstrap.servers": "elsewhere:9092"}, "set sink.bootstrap_servers"),
        ({"no.such.property": "x"}, 'No such configuration property: "no.such.property"'),
        ({"max.in.flight.requests.per.connection": 50}, "max.in.flight"),
    ],
)
def test_refused_producer_properties(properties: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        KafkaSink("127.0.0.1:9", producer=properties)


def test_a_refused_property_never_shows_a_secret() -> None:
    # librdkafka quotes refused values; a secret given as another property's value too is
    # blanked out wherever it appears.
    with pytest.raises(ConfigError) as raised:
        KafkaSink(
            "127.0.0.1:9",
            producer={"sasl.password": "hunter2-secret", "security.protocol": "hunter2-secret"},
        )
    assert "security.protocol" in str(raised.value)
    assert "hunter2" not in str(raised.value)
    assert "[REDACTED]" in str(raised.value)


async def test_allowed_properties_are_rendered_and_used(kafka_broker: Broker) -> None:
    topics = Topics(kafka_broker.bootstrap)
    async with topics.sink(
        producer={
            "enable.idempotence": True,
            "acks": -1,
            "linger.ms": 1,
            "compression.type": "gzip",
        }
    ) as sink:
        await sink.write([record("sf.event.a", 1)])
    assert len(await topics.records()) == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"topic": "{stream}.{other}"}, "sink.topic"),
        ({"control_topic": "bad topic"}, "sink.control_topic"),
        ({"scan_limit": 0}, "scan_limit"),
    ],
)
def test_bad_settings(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        KafkaSink("127.0.0.1:9", **kwargs)


async def test_a_stream_that_makes_a_bad_topic_name_is_refused(kafka_broker: Broker) -> None:
    async with KafkaSink(kafka_broker.bootstrap, topic="x" * 240 + ".{stream}") as sink:
        with pytest.raises(StorageError, match="Kafka does not accept"):
            await sink.write([record("sf.event.account_changes", 1)])


async def test_an_oversized_record_is_refused_naming_it(kafka_broker: Broker) -> None:
    topics = Topics(kafka_broker.bootstrap)
    s = "sf.event.a"
    big = Record(s, "001", 7, {"Blob": "x" * 2_000_000}, {}, EMITTED)
    async with topics.sink() as sink:
        with pytest.raises(StorageError) as raised:
            await sink.write([record(s, 6), big, record(s, 8)])
    assert not raised.value.retryable
    assert "replayId 7" in str(raised.value)
    assert "message.max.bytes" in str(raised.value)
    # Nothing after the refused record was produced (before it, the batch was given up).
    assert {r["replay_id"] for r in await topics.records()} <= {6}


def test_without_confluent_kafka_the_extra_is_named() -> None:
    code = (
        "import sys; sys.modules['confluent_kafka'] = None\n"
        "from sfstream.errors import ConfigError\n"
        "from sfstream.sinks.kafka import KafkaSink\n"
        "try:\n    KafkaSink('127.0.0.1:9')\n"
        "except ConfigError as exc:\n    print(exc)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'sfstream[kafka]'" in done.stdout


# -- exactly once across crashes: a real `sfstream run`, SIGKILLed twice ---------------------

CHANNELS = {
    "/data/AccountChangeEvent": "sf.event.account_changes",
    "/event/Order_Placed__e": "sf.event.order_placed",
}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=17)


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
async def test_sigkill_twice_mid_stream_loses_and_repeats_nothing(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    kafka_broker: Broker,
    tmp_path: Path,
    seed: int,
) -> None:
    emu = sfstream_emulator
    rng = random.Random(seed)
    topics = Topics(kafka_broker.bootstrap)
    config = await make_config(
        emu,
        [{"channel": channel, "initial_replay": "earliest"} for channel in CHANNELS],
        sink={
            "type": "kafka",
            "bootstrap_servers": kafka_broker.bootstrap,
            "topic": topics.topic,
            "control_topic": topics.control,
        },
        batch={"max_records": rng.choice([7, 50, 200]), "max_wait_ms": rng.choice([5, 50])},
    )
    config_path = tmp_path / "sfstream.yaml"
    log = tmp_path / "run.log"

    async def publish() -> None:
        # 2,000 events on two channels, in bursts over 7.5 s at least, while the connector
        # runs and is killed.
        for _ in range(25):
            emu.generate("Account", 40)
            emu.generate("Order_Placed__e", 40)
            await asyncio.sleep(rng.uniform(0.3, 0.6))

    publisher = asyncio.create_task(publish())
    for _ in range(2):
        process = await start_run(config_path, log)
        await asyncio.sleep(rng.uniform(1.5, 3.0))
        process.send_signal(signal.SIGKILL)
        await process.wait()
        assert not publisher.done(), "killed after the stream ended"
    await publisher
    want = {
        stream: [m["data"]["event"]["replayId"] for m in emu.published(channel)]
        for channel, stream in CHANNELS.items()
    }
    assert sum(len(ids) for ids in want.values()) == 2000
    process = await start_run(config_path, log)
    try:
        async with asyncio.timeout(120):
            while True:
                held = {(r["stream"], r["replay_id"]) for r in await topics.records()}
                if all((s, n) in held for s, ids in want.items() for n in ids):
                    break
                await asyncio.sleep(1)
    finally:
        process.send_signal(signal.SIGTERM)
        code = await process.wait()
    assert code == 0, log.read_text()[-3000:]
    # The audit, from the topics alone.
    consumed = [m for m in await topics.read() if m.topic != topics.control]
    records = [decode(m.value) for m in consumed]
    for stream, ids in want.items():
        mine = [(r["replay_id"], r["key"]) for r in records if r["stream"] == stream]
        assert sorted({replay for replay, _ in mine}) == ids, f"{stream} lost or invented events"
        repeated = [item for item, count in Counter(mine).items() if count > 1]
        assert repeated == [], f"{stream} has {len(repeated)} duplicates: {repeated[:5]}"
    # Each partition holds each stream's records in replayId order.
    partitions: dict[tuple[str, int], list[int]] = {}
    for message in consumed:
        partitions.setdefault((message.topic, message.partition), []).append(
            int(message.headers["sfstream.replay_id"])
        )
    for where, ids in partitions.items():
        assert ids == sorted(ids), where
    assert await checkpoints(config) == {stream: ids[-1] for stream, ids in want.items()}


async def checkpoints(config: Config) -> dict[str, int]:
    from sfstream.runners.wiring import open_state

    store = open_state(config)
    try:
        return {k: v.replay_id for k, v in (await store.load(None)).items()}
    finally:
        await store.close()
