"""The sink conformance suite: every `Sink` backend runs it unchanged.

A backend provides a `SinkHarness`: it opens sinks at one fixed location and reads back,
independently of the sink, what is durably there. Then either run everything at once::

    await check_sink(MyHarness(tmp_path))

or make each check its own test::

    @pytest.mark.parametrize(("name", "check"), SINK_CHECKS, ids=[n for n, _ in SINK_CHECKS])
    async def test_conformance(name, check, tmp_path):
        await check(MyHarness(tmp_path))

Checks compare what a write appended after whatever the location already held, and each
uses its own stream ids, so they also pass one after another on one location. A check
closes every sink it opens (a second sink on the same location may be refused while one
is open), and reads back while the sink is still open: `write` must be durable on return,
not on `close`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final, Protocol

import msgspec

from sfstream.errors import StorageError
from sfstream.protocol import (
    GapMessage,
    Message,
    Record,
    SchemaMessage,
    StateMessage,
    decode,
)
from sfstream.sinks.base import Sink

__all__ = ["SINK_CHECKS", "SinkCheck", "SinkHarness", "check_sink", "decode_json_lines"]

_EMITTED_AT: Final = "2024-05-01T12:00:00.000000Z"


class SinkHarness(Protocol):
    """A fixed location for sinks of one backend, and a way to read it back.

    A harness may also have an `order` attribute: `"total"` (the default) when its location
    keeps one sequence of everything written; `"key"` when it keeps the messages of one
    (type, stream, key) in order but not one sequence of all (a Kafka topic's partitions,
    one S3 object per stream): then `read_back` may return them in any interleaving, and
    the checks compare, for every (type, stream, key), the messages in order.
    """

    async def open(self) -> Sink:
        """A new sink writing to the location (any earlier sink of it is closed by then)."""
        ...

    async def read_back(self) -> list[dict[str, Any]]:
        """Every message durably held at the location, decoded, oldest first.

        It reads without going through the sink: a file's bytes, a table's rows, the bytes
        a stream's reader has received.
        """
        ...


SinkCheck = Callable[[SinkHarness], Awaitable[None]]


def decode_json_lines(data: bytes) -> list[dict[str, Any]]:
    """The messages of JSON-lines output; for harnesses of line-oriented sinks.

    Raises:
        AssertionError: the data does not end at a line boundary.
        ValueError: a line is not an sfstream message.
    """
    assert not data or data.endswith(b"\n"), f"output ends in a partial line: {data[-80:]!r}"
    return [decode(line) for line in data.split(b"\n")[:-1]]


def _record(stream: str, replay_id: int, data: Any = None, key: str | None = "") -> Record:
    return Record(
        stream=stream,
        key=f"001000000000{replay_id:06d}" if key == "" else key,
        replay_id=replay_id,
        data={"Id": f"001000000000{replay_id:06d}", "n": replay_id} if data is None else data,
        meta={"channel": "/data/AccountChangeEvent", "change_type": "UPDATE"},
        emitted_at=_EMITTED_AT,
    )


def _streams(check: str, *names: str) -> list[str]:
    return [f"sf.conformance.{check}.{name}" for name in names]


def _expected(messages: Sequence[Message]) -> list[dict[str, Any]]:
    # Every field by name, values as given (they are JSON values already); shallow, so that
    # multi-megabyte payloads are not copied.
    return [msgspec.structs.asdict(message) for message in messages]


@asynccontextmanager
async def _opened(harness: SinkHarness) -> AsyncIterator[Sink]:
    sink = await harness.open()
    assert isinstance(sink, Sink), f"{type(sink).__name__} does not satisfy the Sink port"
    try:
        yield sink
    finally:
        await sink.close()


async def _assert_appended(
    harness: SinkHarness, before: list[dict[str, Any]], messages: Sequence[Message]
) -> list[dict[str, Any]]:
    """Assert that the location holds `before` followed by exactly `messages`."""
    after = await harness.read_back()
    expected = _expected(messages)
    if getattr(harness, "order", "total") == "key":
        _assert_same_per_key(after, before + expected)
        return after
    # Compared piecewise: pytest's diff of multi-megabyte lists is slow and unreadable.
    assert len(after) == len(before) + len(expected), (
        f"expected {len(before)} earlier + {len(expected)} new messages, found {len(after)}"
    )
    for index, (found, wanted) in enumerate(zip(after, before + expected, strict=True)):
        assert found == wanted, f"message {index} differs: {str(found)[:300]} != {wanted!r:.300}"
    return after


def _order_key(message: dict[str, Any]) -> tuple[str, str, str]:
    return (str(message.get("type")), str(message.get("stream")), str(message.get("key")))


def _assert_same_per_key(found: list[dict[str, Any]], wanted: list[dict[str, Any]]) -> None:
    """The same messages, in the same order for each (type, stream, key)."""
    assert len(found) == len(wanted), f"expected {len(wanted)} messages in all, found {len(found)}"
    by_key: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for message in wanted:
        by_key.setdefault(_order_key(message), []).append(message)
    seen: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for message in found:
        seen.setdefault(_order_key(message), []).append(message)
    assert seen.keys() == by_key.keys(), f"keys differ: {sorted(seen.keys() ^ by_key.keys())}"
    for key, messages in by_key.items():
        for index, (got, want) in enumerate(zip(seen[key], messages, strict=True)):
            assert got == want, f"{key} message {index}: {str(got)[:300]} != {want!r:.300}"


async def check_order_within_a_write(harness: SinkHarness) -> None:
    """One batch comes back in the order given, durable before `close`."""
    streams = _streams("order_within", "a", "b", "c")
    messages = [_record(streams[i % 3], 1000 + i) for i in range(60)]
    before = await harness.read_back()
    async with _opened(harness) as sink:
        await sink.write(messages)
        await _assert_appended(harness, before, messages)


async def check_order_across_writes(harness: SinkHarness) -> None:
    """Successive batches (lists or tuples, of any size) come back in write order."""
    streams = _streams("order_across", "a", "b")
    batches: list[Sequence[Message]] = []
    replay_id = 1
    for size in (1, 5, 2, 17, 1, 40):
        made = [_record(streams[(replay_id + i) % 2], replay_id + i) for i in range(size)]
        batches.append(tuple(made) if size % 2 else made)
        replay_id += size
    before = await harness.read_back()
    async with _opened(harness) as sink:
        written: list[Message] = []
        for batch in batches:
            await sink.write(batch)
            written.extend(batch)
            await _assert_appended(harness, before, written)


async def check_every_message_type_round_trips(harness: SinkHarness) -> None:
    """RECORD, STATE, GAP and SCHEMA come back with every field, optional ones included."""
    (stream,) = _streams("round_trip", "s")
    messages: list[Message] = [
        _record(stream, 1, data={"Name": "Acme", "Amount": 1.5, "Tags": ["a", None], "Ok": True}),
        Record(stream, None, 2, None, {}, _EMITTED_AT),
        Record(stream, None, 3, [1, 2, 3], {"nested": {"deep": [{}]}}, _EMITTED_AT),
        StateMessage(stream=stream, replay_id=3),
        # Beyond 2**53: a sink storing JSON numbers as floats would corrupt it.
        StateMessage(stream=stream, replay_id=2**53 + 1),
        GapMessage(stream=stream, reason="replay_id_expired", from_replay_id=None, to="latest"),
        GapMessage(stream, "invalid_replay_id", 3, "earliest", detail="400::The replayId {3}"),
        SchemaMessage(
            stream=stream, subject=stream, version=1, schema={"type": "object", "properties": {}}
        ),
        SchemaMessage(
            stream=stream,
            subject=f"{stream}.account",
            version=2,
            schema={"type": "object", "required": ["Id"]},
            diff=[{"op": "add", "path": "/properties/Name"}],
            schema_id="a1b2c3",
        ),
    ]
    before = await harness.read_back()
    async with _opened(harness) as sink:
        await sink.write(messages)
        after = await _assert_appended(harness, before, messages)
    # Of this check's stream only: a harness without one order may interleave the rest.
    types = [message["type"] for message in after if message.get("stream") == stream]
    assert set(types) == {"RECORD", "STATE", "GAP", "SCHEMA"}, types


async def check_empty_write_is_a_no_op(harness: SinkHarness) -> None:
    """Opening writes nothing; an empty batch changes neither the data nor the marks."""
    streams = _streams("empty_write", "a")
    before = await harness.read_back()
    async with _opened(harness) as sink:
        await sink.write([])
        assert await harness.read_back() == before, "an empty write (or opening) wrote data"
        first = [_record(streams[0], 5)]
        await sink.write(first)
        marks = await sink.high_watermarks(streams)
        await sink.write(())
        await sink.write([])
        await _assert_appended(harness, before, first)
        assert await sink.high_watermarks(streams) == marks


async def check_large_batch(harness: SinkHarness) -> None:
    """A batch of 20,000 messages is written whole and in order."""
    streams = _streams("large_batch", "a", "b", "c", "d")
    messages = [_record(streams[i % 4], 10_000 + i) for i in range(20_000)]
    tail = [StateMessage(stream=stream, replay_id=29_999) for stream in streams]
    before = await harness.read_back()
    async with _opened(harness) as sink:
        await sink.write(messages)
        await sink.write(tail)
        await _assert_appended(harness, before, [*messages, *tail])


async def check_unicode_and_big_payloads(harness: SinkHarness) -> None:
    """Any text survives (line separators and newlines inside strings too), and so do
    multi-megabyte values."""
    (stream,) = _streams("unicode", "s")
    text = (
        "Zoë Ångström — 東京 — مرحبا — 🚀👩‍👩‍👧 — e\u0301 — \U0010ffff"
        ' — line\nbreak\r\n — \u2028\u2029 — tab\t — nul\x00 — quote" back\\slash'
    )
    messages: list[Message] = [
        _record(stream, 1, data={"Name": text, text: text}, key="clé-🔑"),
        _record(stream, 2, data={"Blob": "x" * (4 * 1024 * 1024)}),
        _record(stream, 3, data={"Numbers": list(range(200_000))}),
        _record(stream, 4, data=_nested(40)),
        SchemaMessage(stream=stream, subject=stream, version=1, schema={"description": text}),
    ]
    before = await harness.read_back()
    async with _opened(harness) as sink:
        await sink.write(messages)
        await _assert_appended(harness, before, messages)


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": "🍃"}
    for level in range(depth):
        value = {f"level{level}": value, "list": [level]}
    return value


async def check_high_watermarks_are_empty_or_exact(harness: SinkHarness) -> None:
    """`high_watermarks` is `{}`, or exactly each asked-for stream's position: the replayId
    of its latest RECORD or STATE message. A GAP restarts the stream (positions before it no
    longer count, even higher ones); SCHEMA numbers, other streams and streams without such
    messages do not count."""
    a, b, gaps_only, state_only, never, other = _streams(
        "marks", "a", "b", "gaps_only", "state_only", "never", "other"
    )
    messages: list[Message] = [
        _record(a, 10),
        _record(b, 11),
        _record(a, 12),
        StateMessage(stream=a, replay_id=12),
        _record(other, 10**9),
        _record(b, 20),
        GapMessage(stream=gaps_only, reason="expired", from_replay_id=500, to="latest"),
        SchemaMessage(stream=gaps_only, subject=gaps_only, version=600, schema={}),
        StateMessage(stream=state_only, replay_id=7),
        _record(a, 30),
        StateMessage(stream=a, replay_id=31),
        GapMessage(stream=a, reason="expired", from_replay_id=10**6, to="earliest"),
        SchemaMessage(stream=a, subject=a, version=10**6, schema={}),
        _record(a, 5),
        _record(b, 21),
        StateMessage(stream=b, replay_id=21),
        _record(other, 10**9 + 1),
    ]
    expected = {a: 5, b: 21, state_only: 7}
    async with _opened(harness) as sink:
        assert await sink.high_watermarks([a, b]) == {}, "marks before anything was written"
        await sink.write(messages)
        asked = [a, b, gaps_only, state_only, never, a]
        marks = await sink.high_watermarks(stream for stream in asked)
        assert marks in ({}, expected), marks
        exact = marks == expected
        assert await sink.high_watermarks([b]) == ({b: 21} if exact else {})
        assert await sink.high_watermarks([gaps_only, never]) == {}
        await sink.write([_record(b, 22)])
        assert await sink.high_watermarks([a, b]) == ({a: 5, b: 22} if exact else {})
        await sink.write([GapMessage(stream=b, reason="expired", from_replay_id=22, to="latest")])
        assert await sink.high_watermarks([a, b]) == ({a: 5} if exact else {})


async def check_high_watermarks_survive_reopen(harness: SinkHarness) -> None:
    """A new sink at the same location reports the same marks and appends after the data."""
    a, b = _streams("reopen", "a", "b")
    first: list[Message] = [_record(a, 1), _record(b, 2), StateMessage(stream=a, replay_id=3)]
    second: list[Message] = [_record(b, 4), _record(a, 5)]
    before = await harness.read_back()
    async with _opened(harness) as sink:
        await sink.write(first)
        marks = await sink.high_watermarks([a, b])
    assert marks in ({}, {a: 3, b: 2}), marks
    async with _opened(harness) as sink:
        assert await sink.high_watermarks([a, b]) == marks
        await sink.write(second)
        await _assert_appended(harness, before, [*first, *second])
    async with _opened(harness) as sink:
        assert await sink.high_watermarks([b, a]) == ({a: 5, b: 4} if marks else {})


async def check_high_watermarks_of_no_streams(harness: SinkHarness) -> None:
    """Asking about no streams gives `{}`, before and after writing."""
    (stream,) = _streams("no_streams", "s")
    async with _opened(harness) as sink:
        assert await sink.high_watermarks([]) == {}
        await sink.write([_record(stream, 1)])
        assert await sink.high_watermarks([]) == {}
        assert await sink.high_watermarks(iter(())) == {}


async def check_close_is_idempotent(harness: SinkHarness) -> None:
    """`close` may be called again; data stays; writing afterwards is a `StorageError`."""
    (stream,) = _streams("close", "s")
    messages = [_record(stream, 1)]
    before = await harness.read_back()
    sink = await harness.open()
    try:
        await sink.write(messages)
    finally:
        await sink.close()
    await sink.close()
    await _assert_appended(harness, before, messages)
    try:
        await sink.write(messages)
    except StorageError:
        pass
    else:
        raise AssertionError("write after close did not raise StorageError")
    await sink.close()
    await _assert_appended(harness, before, messages)


SINK_CHECKS: Final[list[tuple[str, SinkCheck]]] = [
    ("order_within_a_write", check_order_within_a_write),
    ("order_across_writes", check_order_across_writes),
    ("every_message_type_round_trips", check_every_message_type_round_trips),
    ("empty_write_is_a_no_op", check_empty_write_is_a_no_op),
    ("large_batch", check_large_batch),
    ("unicode_and_big_payloads", check_unicode_and_big_payloads),
    ("high_watermarks_are_empty_or_exact", check_high_watermarks_are_empty_or_exact),
    ("high_watermarks_survive_reopen", check_high_watermarks_survive_reopen),
    ("high_watermarks_of_no_streams", check_high_watermarks_of_no_streams),
    ("close_is_idempotent", check_close_is_idempotent),
]


async def check_sink(harness: SinkHarness) -> None:
    """Run every check of `SINK_CHECKS` against `harness`, in order.

    Raises:
        AssertionError: a check failed; its note names the check.
    """
    for name, check in SINK_CHECKS:
        try:
            await check(harness)
        except Exception as exc:
            exc.add_note(f"sink conformance check {name!r} failed")
            raise
