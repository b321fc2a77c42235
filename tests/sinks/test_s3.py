"""S3Sink against moto's server: the conformance suite, the key layout, high-water marks from
keys, failures, and exactly-once delivery across SIGKILLs of a real `sfstream run`."""

from __future__ import annotations

import asyncio
import gzip
import random
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sfstream.errors import ConfigError, StorageError, StorageUnavailableError
from sfstream.protocol import (
    GapMessage,
    Message,
    Record,
    SchemaMessage,
    StateMessage,
    encode_lines,
)
from sfstream.runners.wiring import open_state
from sfstream.sinks import Sink
from sfstream.sinks.s3 import BucketMissingError, S3Sink
from sfstream.testing.sinks import SINK_CHECKS, SinkCheck, check_sink, decode_json_lines
from sfstream_emulator import Emulator, EmulatorSettings
from tests.aws import Aws
from tests.conftest import MakeConfig
from tests.runners.process import start_run

EMITTED = "2024-05-01T12:00:00.000Z"


def record(stream: str, replay_id: int, emitted_at: str = EMITTED) -> Record:
    return Record(stream, f"k{replay_id}", replay_id, {"n": replay_id}, {}, emitted_at)


class Bucket:
    """A bucket of the test's moto server, read with boto3 alone (not through the sink)."""

    def __init__(self, aws: Aws, name: str) -> None:
        self.aws = aws
        self.name = name
        self.client = aws.client("s3")
        self._bodies: dict[str, bytes] = {}

    def list_keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(
            Bucket=self.name, Prefix=prefix
        )
        return [entry["Key"] for page in pages for entry in page.get("Contents", ())]

    def body(self, key: str) -> bytes:
        """An object's JSON lines (gunzipped). Cached: a key's content never changes."""
        if key not in self._bodies:
            data = self.client.get_object(Bucket=self.name, Key=key)["Body"].read()
            self._bodies[key] = gzip.decompress(data) if key.endswith(".gz") else data
        return self._bodies[key]

    def streams(self, prefix: str = "sfstream") -> dict[str, list[str]]:
        """Each stream's keys in write order: dates ascending, names descending."""
        found: dict[str, list[str]] = {}
        for key in self.list_keys(f"{prefix}/" if prefix else ""):
            stream, day, _ = key[len(prefix) + 1 if prefix else 0 :].split("/")
            assert day.startswith("dt="), key
            found.setdefault(stream, []).append(key)
        return {
            stream: sorted(sorted(keys, reverse=True), key=lambda k: k.split("/")[-2])
            for stream, keys in found.items()
        }

    def messages(self, prefix: str = "sfstream") -> list[dict[str, Any]]:
        return [
            message
            for keys in self.streams(prefix).values()
            for key in keys
            for message in decode_json_lines(self.body(key))
        ]


@pytest.fixture
def bucket(aws: Aws) -> Bucket:
    name = aws.name("sfstream-sink")
    aws.client("s3").create_bucket(
        Bucket=name, CreateBucketConfiguration={"LocationConstraint": aws.region}
    )
    return Bucket(aws, name)


def sink_of(bucket: Bucket, **options: Any) -> S3Sink:
    return S3Sink(
        bucket.name, region=bucket.aws.region, endpoint_url=bucket.aws.endpoint, **options
    )


class S3Harness:
    """Sinks on one bucket and prefix; read back object by object with boto3."""

    order = "key"  # one object per stream: the streams' interleaving is not kept

    def __init__(self, bucket: Bucket, compression: str) -> None:
        self.bucket = bucket
        self.compression = compression

    async def open(self) -> Sink:
        return sink_of(self.bucket, compression=self.compression)

    async def read_back(self) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.bucket.messages)


@pytest.mark.parametrize("compression", ["gzip", "none"])
@pytest.mark.parametrize(("name", "check"), SINK_CHECKS, ids=[name for name, _ in SINK_CHECKS])
async def test_conformance(name: str, check: SinkCheck, compression: str, bucket: Bucket) -> None:
    await check(S3Harness(bucket, compression))


async def test_whole_suite_in_one_bucket(bucket: Bucket) -> None:
    await check_sink(S3Harness(bucket, "gzip"))


# -- the layout ---------------------------------------------------------------------------


def name(generation: int, position: int, kind: str, span: tuple[int, int] | None) -> str:
    """An object's name without its digest (see `sfstream.sinks.s3`)."""
    inverted = f"{999_999 - generation:06d}-{10**19 - 2 - position:019d}"
    return f"{inverted}-{kind}-" + ("none" if span is None else f"{span[0]:019d}-{span[1]:019d}")


@pytest.mark.parametrize(("compression", "suffix"), [("gzip", ".jsonl.gz"), ("none", ".jsonl")])
async def test_the_key_layout_and_the_exact_bytes(
    bucket: Bucket, compression: str, suffix: str
) -> None:
    a, b = "sf.event.a", "sf.event.b"
    messages: list[Message] = [
        SchemaMessage(stream=a, subject=a, version=1, schema={"type": "object"}),
        record(a, 100),
        record(b, 7, emitted_at="2024-05-02T00:00:00.001Z"),
        record(a, 105),
        StateMessage(a, 105),
        StateMessage(b, 7),
    ]
    async with sink_of(bucket, prefix="/raw/salesforce/", compression=compression) as sink:
        await sink.write(messages)
    keys = sorted(bucket.list_keys())
    assert len(keys) == 2
    expected = [
        f"raw/salesforce/{a}/dt=2024-05-01/{name(0, 105, 'm', (100, 105))}-",
        f"raw/salesforce/{b}/dt=2024-05-02/{name(0, 7, 'm', (7, 7))}-",
    ]
    for key, start in zip(keys, expected, strict=True):
        assert key.startswith(start), (key, start)
        assert key.endswith(suffix)
        assert len(key) == len(start) + 16 + len(suffix)
    raw = bucket.client.get_object(Bucket=bucket.name, Key=keys[0])
    assert raw["ContentType"] == (
        "application/gzip" if compression == "gzip" else "application/x-ndjson"
    )
    # Each object holds exactly the file sink's bytes of its stream's messages, in order.
    assert bucket.body(keys[0]) == encode_lines([m for m in messages if m.stream == a])
    assert bucket.body(keys[1]) == encode_lines([m for m in messages if m.stream == b])


async def test_names_sort_newest_first_and_gaps_start_a_new_generation(bucket: Bucket) -> None:
    s = "sf.event.s"
    # The first records' date is after today: every object, with records or without, is on
    # that date (dates never go backwards).
    today = "2999-01-01"
    now = f"{today}T00:00:00.000Z"

    def record(stream: str, replay_id: int) -> Record:
        return Record(stream, f"k{replay_id}", replay_id, {"n": replay_id}, {}, now)

    batches: list[list[Message]] = [
        [record(s, 10), record(s, 20), StateMessage(s, 20)],
        [SchemaMessage(stream=s, subject=s, version=2, schema={})],
        [record(s, 30), GapMessage(s, "replay_id_rejected", 30, "earliest")],
        [SchemaMessage(stream=s, subject=s, version=3, schema={})],
        [record(s, 2), StateMessage(s, 2)],
        [record(s, 10**12), GapMessage(s, "expired", None, "latest"), record(s, 5)],
    ]
    async with sink_of(bucket) as sink:
        for batch in batches:
            await sink.write(batch)
        assert await sink.high_watermarks([s]) == {s: 5}
    keys = bucket.streams()[s]
    assert [key.rpartition("/")[2][: -(16 + 10)] for key in keys] == [
        name(0, 20, "m", (10, 20)),
        name(0, 20, "c", None),
        name(1, -1, "g", (30, 30)),
        name(1, -1, "c", None),
        name(1, 2, "m", (2, 2)),
        name(2, 5, "m", (10**12, 5)),
    ]
    # Within a date, S3 lists them newest first; read in that order the stream comes back.
    assert bucket.list_keys(f"sfstream/{s}/dt={today}/") == keys[::-1]
    assert bucket.messages() == [
        m for batch in batches for m in decode_json_lines(encode_lines(batch))
    ]


async def test_a_rewritten_batch_lands_on_the_same_key(bucket: Bucket) -> None:
    batch: list[Message] = [
        record("sf.event.a", 1),
        GapMessage("sf.event.a", "expired", 1, "latest"),
        record("sf.event.a", 9),
        record("sf.event.b", 2),
        StateMessage("sf.event.a", 9),
    ]
    async with sink_of(bucket) as sink:
        await sink.write(batch)
        first = sorted(bucket.list_keys())
        await sink.write(list(batch))  # retried after a lost answer
        assert sorted(bucket.list_keys()) == first
    # A new sink (a restart) that writes it again: the same keys, the same generation.
    async with sink_of(bucket) as sink:
        await sink.write(batch)
        assert sorted(bucket.list_keys()) == first
        assert await sink.high_watermarks(["sf.event.a", "sf.event.b"]) == {
            "sf.event.a": 9,
            "sf.event.b": 2,
        }
        # Anything else is a new object, in a new generation after the GAP.
        await sink.write([GapMessage("sf.event.a", "expired", 9, "latest")])
        await sink.write([record("sf.event.a", 3)])
        assert len(bucket.list_keys()) == 4
        assert await sink.high_watermarks(["sf.event.a"]) == {"sf.event.a": 3}


async def test_a_streams_dates_never_go_backwards(bucket: Bucket) -> None:
    s = "sf.event.s"
    async with sink_of(bucket) as sink:
        await sink.write([record(s, 1, emitted_at="2024-05-02T00:00:00.000Z")])
        # Emitted before midnight by a clock that lags, written after: it stays on the 2nd.
        await sink.write([record(s, 2, emitted_at="2024-05-01T23:59:59.999Z")])
    async with sink_of(bucket) as sink:
        await sink.write([record(s, 3, emitted_at="2024-05-01T23:59:59.999Z")])
        assert await sink.high_watermarks([s]) == {s: 3}
    assert {key.split("/")[2] for key in bucket.list_keys()} == {"dt=2024-05-02"}
    # An object without records is dated when it is written.
    async with sink_of(bucket) as sink:
        await sink.write([StateMessage(s, 4)])
    days = sorted({key.split("/")[2] for key in bucket.list_keys()})
    assert len(days) == 2
    assert days[0] == "dt=2024-05-02"
    assert [m["replay_id"] for m in bucket.messages()] == [1, 2, 3, 4]


async def test_a_restart_reads_each_stream_with_two_list_calls(bucket: Bucket) -> None:
    streams = [f"sf.event.s{n}" for n in range(3)]
    async with sink_of(bucket) as sink:
        for day in range(1, 4):
            for replay_id in range(day * 100, day * 100 + 30):  # 30 objects a day and stream
                emitted = f"2024-05-0{day}T10:00:00.000Z"
                await sink.write([record(s, replay_id, emitted) for s in streams])
    async with sink_of(bucket) as sink:
        assert await sink.high_watermarks([*streams, "sf.event.never"]) == dict.fromkeys(
            streams, 329
        )
        assert sink.last_scan_list_calls == 2 * 3 + 1
        # The marks it read are where it writes next: no more LIST calls.
        await sink.write([record(s, 400) for s in streams])
        assert sink.last_scan_list_calls == 7
    async with sink_of(bucket) as sink:
        assert await sink.high_watermarks([]) == {}
        assert sink.last_scan_list_calls == 0


async def test_foreign_objects_are_skipped(bucket: Bucket) -> None:
    s = "sf.event.s"
    async with sink_of(bucket) as sink:
        await sink.write([record(s, 5)])
    for key in (
        f"sfstream/{s}/dt=2024-05-01/",  # a console "folder"
        f"sfstream/{s}/dt=2024-05-01/000000-manifest.json",
        f"sfstream/{s}/dt=2099-01-01/_SUCCESS",
        f"sfstream/{s}/notes/readme.txt",
    ):
        bucket.client.put_object(Bucket=bucket.name, Key=key, Body=b"x")
    async with sink_of(bucket) as sink:
        assert await sink.high_watermarks([s]) == {s: 5}


async def test_marks_of_interleaved_streams_with_gaps_across_restarts(bucket: Bucket) -> None:
    rng = random.Random(7)
    streams = ["sf.event.s0", "sf.event.s1", "sf.event.s2"]
    last = dict.fromkeys(streams, 0)
    marks: dict[str, int] = {}
    for round_ in range(6):
        async with sink_of(bucket, compression=rng.choice(["gzip", "none"])) as sink:
            assert await sink.high_watermarks(streams) == marks, round_
            for _ in range(8):
                batch: list[Message] = []
                for _ in range(rng.randint(1, 12)):
                    stream = rng.choice(streams)
                    roll = rng.random()
                    if roll < 0.1:
                        batch.append(GapMessage(stream, "expired", last[stream], "earliest"))
                        last[stream] = rng.randint(0, 50)
                        marks.pop(stream, None)
                    elif roll < 0.2:
                        batch.append(
                            SchemaMessage(stream=stream, subject=stream, version=1, schema={})
                        )
                    else:
                        last[stream] += rng.randint(1, 9)
                        batch.append(record(stream, last[stream]))
                        marks[stream] = last[stream]
                await sink.write(batch)
            assert await sink.high_watermarks(streams) == marks


# -- failures -----------------------------------------------------------------------------


async def test_a_missing_bucket_is_terminal_and_named(aws: Aws) -> None:
    missing = aws.name("missing")
    async with S3Sink(missing, region=aws.region, endpoint_url=aws.endpoint) as sink:
        for call in (
            lambda: sink.high_watermarks(["sf.event.a"]),
            lambda: sink.write([record("sf.event.a", 1)]),
        ):
            with pytest.raises(BucketMissingError, match="does not exist") as caught:
                await call()
            assert not caught.value.retryable
            assert missing in str(caught.value)
            assert "sink.bucket" in str(caught.value)


async def test_an_unreachable_endpoint_is_retryable(aws: Aws) -> None:
    async with S3Sink("sfstream-sink", endpoint_url="http://127.0.0.1:1") as sink:
        for call in (
            lambda: sink.high_watermarks(["sf.event.a"]),
            lambda: sink.write([record("sf.event.a", 1)]),
        ):
            with pytest.raises(StorageUnavailableError, match="S3 cannot be reached") as caught:
                await call()
            assert caught.value.retryable


_EMPTY_LISTING = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
    "<Name>sfstream-sink</Name><KeyCount>0</KeyCount><MaxKeys>1000</MaxKeys>"
    "<IsTruncated>false</IsTruncated></ListBucketResult>"
)


@pytest.fixture
async def failing_s3() -> AsyncIterator[dict[str, Any]]:
    """An S3 endpoint (the outside world, faked) that lists an empty bucket and answers the
    methods in `answer["fail"]` with the error `answer["status"]`."""
    answer: dict[str, Any] = {"status": 503, "fail": {"PUT"}, "requests": 0}
    codes = {
        503: "SlowDown",
        500: "InternalError",
        403: "AccessDenied",
        400: "AuthorizationHeaderMalformed",
    }

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        answer["requests"] += 1
        if request.method not in answer["fail"]:
            return web.Response(text=_EMPTY_LISTING, content_type="application/xml")
        code = codes[answer["status"]]
        body = f"<Error><Code>{code}</Code><Message>said {code}</Message></Error>"
        return web.Response(status=answer["status"], text=body, content_type="application/xml")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        answer["endpoint"] = f"http://127.0.0.1:{listening.getsockname()[1]}"
        await web.SockSite(runner, listening).start()
        try:
            yield answer
        finally:
            await runner.cleanup()


@pytest.mark.parametrize(
    ("status", "kind", "text"),
    [
        (503, StorageUnavailableError, "for now (SlowDown: said SlowDown)"),
        (500, StorageUnavailableError, "for now (InternalError: said InternalError)"),
        (403, StorageError, "may not store s3://sfstream-sink/sfstream/sf.event.a/dt=2024-05-01/"),
        (400, StorageError, "set sink.region"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "PUT"])
async def test_throttling_and_5xx_are_retryable_refusals_are_not(
    aws: Aws,
    failing_s3: dict[str, Any],
    status: int,
    kind: type[StorageError | StorageUnavailableError],
    text: str,
    method: str,
) -> None:
    failing_s3.update(status=status, fail={method})
    sink = S3Sink("sfstream-sink", region=aws.region, endpoint_url=failing_s3["endpoint"])
    async with sink:
        with pytest.raises((StorageError, StorageUnavailableError)) as caught:
            await sink.write([record("sf.event.a", 1)])
        if method == "GET":
            with pytest.raises(kind):
                await sink.high_watermarks(["sf.event.a"])
    error = caught.value
    assert type(error) is kind
    if method == "PUT":
        assert text in str(error)
    else:
        assert "list s3://sfstream-sink/sfstream/sf.event.a/" in str(error)
    assert error.retryable is (kind is StorageUnavailableError)
    assert isinstance(error.__cause__, Exception)  # botocore's error, chained


async def test_a_failed_put_is_read_again_before_the_next_write(
    aws: Aws, failing_s3: dict[str, Any]
) -> None:
    failing_s3.update(status=503, fail={"PUT"})
    async with S3Sink(
        "sfstream-sink", region=aws.region, endpoint_url=failing_s3["endpoint"]
    ) as sink:
        with pytest.raises(StorageUnavailableError):
            await sink.write([record("sf.event.a", 1)])
        # Stored or not, nobody knows: the next write lists the stream again first.
        failing_s3.update(fail=set())
        before = failing_s3["requests"]
        await sink.write([record("sf.event.a", 1)])
        assert failing_s3["requests"] - before == 2  # a LIST (of no dates), the PUT
        before = failing_s3["requests"]
        await sink.write([record("sf.event.a", 2)])
        assert failing_s3["requests"] - before == 1  # known now: the PUT alone


def test_unusable_arguments_are_config_errors() -> None:
    for bucket in ("", "a/b", "x"):
        with pytest.raises(ConfigError, match="S3 bucket name"):
            S3Sink(bucket)
    with pytest.raises(ConfigError, match="compression"):
        S3Sink("sfstream-sink", compression="zstd")  # type: ignore[arg-type]


async def test_a_stream_id_that_cannot_be_a_key_is_refused_before_any_call(aws: Aws) -> None:
    async with S3Sink("sfstream-sink", endpoint_url="http://127.0.0.1:1") as sink:
        for stream in ("a/b", "", ".."):
            with pytest.raises(StorageError, match="cannot be part of an S3 key"):
                await sink.write([record(stream, 1)])


async def test_nothing_works_after_close(bucket: Bucket) -> None:
    sink = sink_of(bucket)
    await sink.write([record("sf.event.a", 1)])
    await sink.close()
    await sink.close()
    for attempt in (
        sink.write([]),
        sink.write([record("sf.event.a", 2)]),
        sink.high_watermarks(["a"]),
    ):
        with pytest.raises(StorageError, match="the sink is closed"):
            await attempt
    assert len(bucket.list_keys()) == 1


# -- exactly once across SIGKILLs ---------------------------------------------------------

CHANNELS = {
    "/data/AccountChangeEvent": ("Account", "sf.event.account_changes"),
    "/event/Order_Placed__e": ("Order_Placed__e", "sf.event.order_placed"),
}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=11)


async def wait_for(predicate: Any, timeout_s: float = 60.0, every_s: float = 0.05) -> None:
    async with asyncio.timeout(timeout_s):
        while not await predicate():
            await asyncio.sleep(every_s)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("seed", [1, 2])
async def test_sigkills_lose_and_repeat_nothing(
    sfstream_emulator: Emulator, make_config: MakeConfig, bucket: Bucket, tmp_path: Path, seed: int
) -> None:
    """2,000 events on two channels: 1,800 while `sfstream run` is SIGKILLed twice at random
    moments and restarted, 200 more after its state is deleted (the bucket is then ahead of
    every checkpoint); the bucket alone holds every event exactly once."""
    emu = sfstream_emulator
    rng = random.Random(seed)
    config = await make_config(
        emu,
        [{"channel": channel, "initial_replay": "earliest"} for channel in CHANNELS],
        sink={
            "type": "s3",
            "bucket": bucket.name,
            "prefix": "audit",
            "region": bucket.aws.region,
            "endpoint_url": bucket.aws.endpoint,
        },
        batch={"max_records": 20, "max_wait_ms": 0},
    )
    config_path = tmp_path / "sfstream.yaml"
    log = tmp_path / "run.log"

    def held() -> dict[str, list[int]]:
        """Each stream's RECORD replayIds, reading its objects in key order."""
        found: dict[str, list[int]] = {}
        for stream, keys in bucket.streams("audit").items():
            for key in keys:
                for message in decode_json_lines(bucket.body(key)):
                    if message["type"] == "RECORD":
                        found.setdefault(stream, []).append(message["replay_id"])
        return found

    def published() -> dict[str, list[int]]:
        return {
            stream: [m["data"]["event"]["replayId"] for m in emu.published(channel)]
            for channel, (_target, stream) in CHANNELS.items()
        }

    async def publish(rounds: int) -> None:
        for _ in range(rounds):
            for target, _stream in CHANNELS.values():
                emu.generate(target, 25, 300)
            await asyncio.sleep(rng.uniform(0.15, 0.35))

    runs = 0

    async def start() -> asyncio.subprocess.Process:
        nonlocal runs
        process = await start_run(config_path, log)

        async def started() -> bool:
            return log.exists() and log.read_text().count('"run_started"') > runs

        await wait_for(started)
        runs += 1
        return process

    async def stop_when_caught_up(process: asyncio.subprocess.Process) -> None:
        want = published()

        async def caught_up() -> bool:
            have = await asyncio.to_thread(held)
            return all(len(set(have.get(stream, ()))) >= len(ids) for stream, ids in want.items())

        await wait_for(caught_up, timeout_s=120, every_s=0.5)
        process.send_signal(signal.SIGTERM)
        assert await process.wait() == 0, log.read_text()[-3000:]

    # About 9 s of traffic: both kills fall inside it.
    publisher = asyncio.create_task(publish(36))
    for _ in range(2):
        process = await start()
        await asyncio.sleep(rng.uniform(0.3, 2.0))
        assert not publisher.done(), "a kill came after the traffic: it tests nothing"
        process.send_signal(signal.SIGKILL)
        await process.wait()
    await publisher
    await stop_when_caught_up(await start())

    # The state is lost: every stream starts from the bucket's high-water mark.
    assert config.state.path is not None
    for path in config.state.path.parent.glob(f"{config.state.path.name}*"):
        path.unlink()
    process = await start()
    await publish(4)
    await stop_when_caught_up(process)
    assert '"sink_ahead_of_checkpoint"' in log.read_text()

    # The audit, from the bucket alone.
    want = published()
    assert sum(len(ids) for ids in want.values()) == 2000
    have = await asyncio.to_thread(held)
    for stream, ids in want.items():
        mine = have[stream]
        assert len(mine) == len(set(mine)), f"{stream}: {len(mine) - len(set(mine))} duplicates"
        assert sorted(mine) == ids, f"{stream}: {len(set(ids) - set(mine))} lost"
        assert mine == ids, f"{stream}: objects read in key order are not in replay order"
    async with sink_of(bucket, prefix="audit") as sink:
        assert await sink.high_watermarks(want) == {s: ids[-1] for s, ids in want.items()}
    store = open_state(config)
    try:
        checkpoints = {stream: found.replay_id for stream, found in (await store.load()).items()}
    finally:
        await store.close()
    assert checkpoints == {stream: ids[-1] for stream, ids in want.items()}
