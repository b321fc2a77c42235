"""The event bus on its own: replay ids, retention, cursors, batches and compaction."""

from __future__ import annotations

import asyncio
import itertools
import random

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sfstream_emulator.bus import (
    CDC_STREAM,
    HOUR_S,
    Channel,
    ChannelKind,
    Cursor,
    EventBus,
    Stream,
)
from sfstream_emulator.clock import Clock

T0 = 1_700_000_000.0


def _bus(seed: int | None = 1, **retention: float) -> EventBus:
    hours = {ChannelKind(k): v for k, v in retention.items()}
    return EventBus(Clock(frozen_at=T0), seed=seed, retention_hours=hours)


def _publish(bus: EventBus, stream: Stream, channels: list[Channel], tag: str) -> int:
    replay_id = stream.allocate_replay_id()
    data = orjson.dumps({"payload": tag, "event": {"replayId": replay_id}})
    bus.publish(stream, channels, data, replay_id, tag)
    return replay_id


def _single(bus: EventBus, name: str = "/event/X__e") -> tuple[Stream, Channel]:
    stream = bus.stream(name, ChannelKind.PLATFORM_EVENT)
    return stream, bus.channel(name, stream, ChannelKind.PLATFORM_EVENT)


def _tags(bus: EventBus, cursors: list[Cursor], max_events: int = 10_000) -> list[str]:
    batch = bus.take(cursors, max_events, 1 << 30)
    return [event.entity for _channel, event in batch.items]


# -- replay ids -----------------------------------------------------------------------------


def test_replay_ids_increase_and_are_never_contiguous() -> None:
    bus = _bus()
    stream, _ = _single(bus)
    ids = [stream.allocate_replay_id() for _ in range(20_000)]
    steps = [b - a for a, b in itertools.pairwise(ids)]
    assert min(steps) >= 2
    assert max(steps) > 9  # occasional bigger jumps, like 999 -> 1,025
    assert 1_000_000 <= ids[0] <= 40_000_000 + 400


def test_replay_ids_are_per_stream_and_seeded() -> None:
    first = _bus(seed=3)
    second = _bus(seed=3)
    a1, _ = _single(first, "/event/A__e")
    b1, _ = _single(first, "/event/B__e")
    a2, _ = _single(second, "/event/A__e")
    sequence = [a1.allocate_replay_id() for _ in range(50)]
    assert sequence == [a2.allocate_replay_id() for _ in range(50)]
    assert [b1.allocate_replay_id() for _ in range(50)] != sequence
    other = _bus(seed=4)
    a3, _ = _single(other, "/event/A__e")
    assert [a3.allocate_replay_id() for _ in range(50)] != sequence


def test_publish_records_events_on_stream_and_channels() -> None:
    bus = _bus()
    stream = bus.stream(CDC_STREAM, ChannelKind.CHANGE_EVENTS)
    everything = bus.channel("/data/ChangeEvents", stream, ChannelKind.CHANGE_EVENTS)
    accounts = bus.channel("/data/AccountChangeEvent", stream, ChannelKind.CHANGE_EVENTS)
    contacts = bus.channel("/data/ContactChangeEvent", stream, ChannelKind.CHANGE_EVENTS)
    account = _publish(bus, stream, [accounts, everything], "Account")
    contact = _publish(bus, stream, [contacts, everything], "Contact")
    assert [e.replay_id for e in stream.retained()] == [account, contact]
    assert [e.replay_id for e in everything.retained()] == [account, contact]
    assert [e.replay_id for e in accounts.retained()] == [account]
    assert [e.replay_id for e in contacts.retained()] == [contact]
    assert accounts.retained()[0] is everything.retained()[0]
    assert stream.last_replay_id == contact
    assert bus.published_total == 2


def test_stream_and_channel_are_created_once() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    assert bus.stream("/event/X__e", ChannelKind.PLATFORM_EVENT) is stream
    assert bus.channel("/event/X__e", stream, ChannelKind.PLATFORM_EVENT) is channel


async def test_publish_wakes_waiters() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    waiter = asyncio.Event()
    channel.waiters.add(waiter)
    bus.publish(stream, [channel], b"{}", stream.allocate_replay_id(), wake=False)
    assert not waiter.is_set()
    _publish(bus, stream, [channel], "a")
    assert waiter.is_set()


# -- cursors and replay values -------------------------------------------------------------


def test_start_cursor_replay_values() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    ids = [_publish(bus, stream, [channel], tag) for tag in "abcd"]
    assert _tags(bus, [bus.start_cursor(channel, -1)]) == []
    assert _tags(bus, [bus.start_cursor(channel, -2)]) == list("abcd")
    assert _tags(bus, [bus.start_cursor(channel, ids[1])]) == list("cd")
    assert _tags(bus, [bus.start_cursor(channel, ids[3])]) == []
    tip = bus.start_cursor(channel, -1)
    _publish(bus, stream, [channel], "e")
    assert _tags(bus, [tip]) == ["e"]


def test_replay_is_valid_only_for_retained_ids_of_the_stream() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    other_stream, _ = _single(bus, "/event/Y__e")
    ids = [_publish(bus, stream, [channel], tag) for tag in "ab"]
    foreign = other_stream.allocate_replay_id()
    assert bus.replay_is_valid(channel, ids[0])
    assert bus.replay_is_valid(channel, ids[1])
    assert not bus.replay_is_valid(channel, ids[0] + 1)  # ids are never contiguous
    assert not bus.replay_is_valid(channel, ids[0] - 1)
    assert not bus.replay_is_valid(channel, ids[1] + 1)
    assert not bus.replay_is_valid(channel, foreign)
    assert not bus.replay_is_valid(channel, 0)


def test_replay_id_of_an_event_on_another_view_of_the_stream_is_valid() -> None:
    bus = _bus()
    stream = bus.stream(CDC_STREAM, ChannelKind.CHANGE_EVENTS)
    accounts = bus.channel("/data/AccountChangeEvent", stream, ChannelKind.CHANGE_EVENTS)
    contacts = bus.channel("/data/ContactChangeEvent", stream, ChannelKind.CHANGE_EVENTS)
    first = _publish(bus, stream, [accounts], "a1")
    contact = _publish(bus, stream, [contacts], "c1")
    _publish(bus, stream, [accounts], "a2")
    assert bus.replay_is_valid(accounts, contact)
    assert _tags(bus, [bus.start_cursor(accounts, contact)]) == ["a2"]
    assert _tags(bus, [bus.start_cursor(accounts, first)]) == ["a2"]


def test_pending_counts_retained_events() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    cursor = bus.start_cursor(channel, -1)
    assert bus.pending([cursor]) == 0
    for tag in "abc":
        _publish(bus, stream, [channel], tag)
    assert bus.pending([cursor]) == 3
    bus.take([cursor], 2, 1 << 30)
    assert bus.pending([cursor]) == 1


# -- take ------------------------------------------------------------------------------------


def test_take_respects_max_events() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    for index in range(7):
        _publish(bus, stream, [channel], str(index))
    cursor = bus.start_cursor(channel, -2)
    assert _tags(bus, [cursor], 3) == ["0", "1", "2"]
    assert _tags(bus, [cursor], 3) == ["3", "4", "5"]
    assert _tags(bus, [cursor], 3) == ["6"]
    assert _tags(bus, [cursor], 3) == []


def test_take_respects_max_bytes_but_takes_at_least_one() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    for tag in ("big", "small", "tiny"):
        replay_id = stream.allocate_replay_id()
        size = 5000 if tag == "big" else 10
        bus.publish(stream, [channel], b"x" * size, replay_id, tag)
    cursor = bus.start_cursor(channel, -2)
    batch = bus.take([cursor], 100, 1000)
    assert [e.entity for _, e in batch.items] == ["big"]
    assert batch.size_bytes >= 5000
    batch = bus.take([cursor], 100, 1000)
    assert [e.entity for _, e in batch.items] == ["small", "tiny"]


def test_take_merges_channels_in_publish_order() -> None:
    bus = _bus()
    a_stream, a = _single(bus, "/event/A__e")
    b_stream, b = _single(bus, "/event/B__e")
    cdc = bus.stream(CDC_STREAM, ChannelKind.CHANGE_EVENTS)
    c = bus.channel("/data/AccountChangeEvent", cdc, ChannelKind.CHANGE_EVENTS)
    cursors = [bus.start_cursor(ch, -1) for ch in (a, b, c)]
    order = ["a1", "c1", "b1", "b2", "a2", "c2", "a3", "b3"]
    for tag in order:
        stream, channel = {"a": (a_stream, a), "b": (b_stream, b), "c": (cdc, c)}[tag[0]]
        _publish(bus, stream, [channel], tag)
    assert _tags(bus, cursors, 5) == order[:5]
    assert _tags(bus, cursors, 5) == order[5:]


def test_take_delivers_an_event_once_per_subscribed_view() -> None:
    bus = _bus()
    stream = bus.stream(CDC_STREAM, ChannelKind.CHANGE_EVENTS)
    everything = bus.channel("/data/ChangeEvents", stream, ChannelKind.CHANGE_EVENTS)
    accounts = bus.channel("/data/AccountChangeEvent", stream, ChannelKind.CHANGE_EVENTS)
    cursors = [bus.start_cursor(everything, -1), bus.start_cursor(accounts, -1)]
    _publish(bus, stream, [accounts, everything], "a")
    batch = bus.take(cursors, 10, 1 << 30)
    assert sorted(ch.name for ch, _ in batch.items) == [
        "/data/AccountChangeEvent",
        "/data/ChangeEvents",
    ]
    parts: list[bytes] = []
    batch.serialize_into(parts)
    messages = orjson.loads(b"[" + b"".join(parts).rstrip(b",") + b"]")
    assert {m["channel"] for m in messages} == {"/data/AccountChangeEvent", "/data/ChangeEvents"}
    assert messages[0]["data"] == messages[1]["data"]


def test_cursors_are_independent() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    slow = bus.start_cursor(channel, -1)
    fast = bus.start_cursor(channel, -1)
    for tag in "abc":
        _publish(bus, stream, [channel], tag)
    assert _tags(bus, [fast]) == list("abc")
    assert _tags(bus, [slow], 1) == ["a"]
    _publish(bus, stream, [channel], "d")
    assert _tags(bus, [slow]) == list("bcd")
    assert _tags(bus, [fast]) == ["d"]


# -- retention -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "hours"),
    [
        (ChannelKind.CHANGE_EVENTS, 72),
        (ChannelKind.PLATFORM_EVENT, 72),
        (ChannelKind.PUSH_TOPIC, 24),
        (ChannelKind.GENERIC, 24),
    ],
)
def test_default_retention(kind: ChannelKind, hours: int) -> None:
    bus = _bus()
    stream = bus.stream("s", kind)
    channel = bus.channel("/s", stream, kind)
    old = _publish(bus, stream, [channel], "old")
    bus.clock.advance(hours * HOUR_S - 1)
    assert bus.replay_is_valid(channel, old)
    assert _tags(bus, [bus.start_cursor(channel, -2)]) == ["old"]
    bus.clock.advance(1)
    assert not bus.replay_is_valid(channel, old)
    assert _tags(bus, [bus.start_cursor(channel, -2)]) == []


def test_retention_is_configurable() -> None:
    bus = _bus(platform_event=1.0)
    stream, channel = _single(bus)
    old = _publish(bus, stream, [channel], "old")
    bus.clock.advance(HOUR_S)
    assert not bus.replay_is_valid(channel, old)


def test_cursor_skips_events_that_expired_while_away() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    cursor = bus.start_cursor(channel, -1)
    _publish(bus, stream, [channel], "expires")
    bus.clock.advance(50 * HOUR_S)
    _publish(bus, stream, [channel], "stays")
    bus.clock.advance(23 * HOUR_S)
    assert bus.pending([cursor]) == 1
    assert _tags(bus, [cursor]) == ["stays"]


def test_replay_after_an_expired_neighbour_resumes_correctly() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    _publish(bus, stream, [channel], "a")
    bus.clock.advance(HOUR_S)
    b = _publish(bus, stream, [channel], "b")
    _publish(bus, stream, [channel], "c")
    bus.clock.advance(72 * HOUR_S - HOUR_S)  # "a" expired, "b" and "c" retained
    assert bus.replay_is_valid(channel, b)
    assert _tags(bus, [bus.start_cursor(channel, b)]) == ["c"]


def test_compaction_keeps_offsets_right() -> None:
    bus = _bus()
    stream, channel = _single(bus)
    old_cursor = bus.start_cursor(channel, -1)
    for index in range(5000):
        _publish(bus, stream, [channel], f"old{index}")
    mid_cursor = bus.start_cursor(channel, -1)
    bus.clock.advance(HOUR_S)
    new_ids = [_publish(bus, stream, [channel], f"new{index}") for index in range(3000)]
    bus.clock.advance(72 * HOUR_S - HOUR_S)  # the 5000 old events expire
    bus.purge(channel)
    # The expired prefix was dropped from memory, and absolute offsets moved with it.
    assert channel.base_offset == 5000
    assert stream.base_offset == 5000
    assert channel.head == 0
    assert len(channel.events) == 3000
    assert channel.first_offset == 5000
    assert channel.end_offset == 8000
    assert bus.pending([old_cursor]) == 3000
    assert bus.pending([mid_cursor]) == 3000
    assert _tags(bus, [old_cursor], 2) == ["new0", "new1"]
    assert _tags(bus, [mid_cursor], 1) == ["new0"]
    assert bus.replay_is_valid(channel, new_ids[0])
    assert _tags(bus, [bus.start_cursor(channel, new_ids[2999 - 1])]) == ["new2999"]
    assert _tags(bus, [bus.start_cursor(channel, new_ids[10])], 1) == ["new11"]
    after = _publish(bus, stream, [channel], "after")
    assert _tags(bus, [bus.start_cursor(channel, -1)]) == []
    assert _tags(bus, [bus.start_cursor(channel, new_ids[-1])]) == ["after"]
    assert bus.replay_is_valid(channel, after)


# -- property: one cursor never sees an event twice, out of order, or skips one ------------

_ACTIONS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(0, 2), st.integers(1, 30)),
        st.tuples(st.just("advance"), st.floats(0.0, 30.0), st.just(0)),
        st.tuples(st.just("take"), st.integers(1, 40), st.integers(0, 3)),
        st.tuples(st.just("purge"), st.just(0), st.just(0)),
    ),
    max_size=120,
)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(actions=_ACTIONS, seed=st.integers(0, 2**32 - 1))
def test_interleavings_deliver_in_order_once_and_never_skip(
    actions: list[tuple[str, float, int]], seed: int
) -> None:
    # Retention of 24 h on generic streams; each "advance" moves up to 30 h.
    bus = _bus(seed=seed)
    streams: list[tuple[Stream, Channel]] = []
    for name in ("/u/A", "/u/B", "/u/C"):
        stream = bus.stream(name, ChannelKind.GENERIC)
        streams.append((stream, bus.channel(name, stream, ChannelKind.GENERIC)))
    cursors = [bus.start_cursor(channel, -1) for _, channel in streams]
    seq_seen: list[int] = []
    last_replay: dict[str, int] = {}
    delivered: set[int] = set()
    rng = random.Random(seed)
    published_seqs: list[tuple[int, float, str]] = []

    for action, a, b in actions:
        if action == "publish":
            stream, channel = streams[int(a)]
            for _ in range(b):
                replay_id = stream.allocate_replay_id()
                event = bus.publish(stream, [channel], b"{}", replay_id, channel.name)
                published_seqs.append((event.seq, event.published_at, channel.name))
        elif action == "advance":
            bus.clock.advance(float(a) * HOUR_S)
        elif action == "purge":
            for _stream, channel in streams:
                bus.purge(channel)
        else:
            subset = [c for i, c in enumerate(cursors) if i != b] if b < 3 else cursors
            rng.shuffle(subset)
            now = bus.clock.now()
            horizon = now - 24 * HOUR_S
            names = {c.channel.name for c in subset}
            must_see = [
                seq
                for seq, published_at, name in published_seqs
                if name in names and published_at > horizon and seq not in delivered
            ]
            batch = bus.take(subset, int(a), 1 << 30)
            got = [event.seq for _, event in batch.items]
            # In publish order, never twice, and nothing retained is skipped.
            assert got == sorted(got)
            assert not delivered & set(got)
            assert got == must_see[: len(got)]
            assert len(got) == min(int(a), len(must_see))
            for channel, event in batch.items:
                previous = last_replay.get(channel.name)
                assert previous is None or event.replay_id > previous
                last_replay[channel.name] = event.replay_id
            delivered.update(got)
            seq_seen.extend(got)
    assert len(seq_seen) == len(set(seq_seen))


@settings(max_examples=12, deadline=None)
@given(
    batches=st.lists(st.integers(1, 5000), min_size=1, max_size=4),
    takes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
)
def test_compaction_under_load_never_loses_a_retained_event(
    batches: list[int], takes: list[int]
) -> None:
    bus = _bus()
    stream, channel = _single(bus)
    cursor = bus.start_cursor(channel, -1)
    expected: list[int] = []
    compacted = False
    for count in [5000, *batches]:
        for _ in range(count):
            event = bus.publish(stream, [channel], b"{}", stream.allocate_replay_id())
            expected.append(event.seq)
        bus.clock.advance(40 * HOUR_S)  # every batch expires after two advances
        horizon = bus.clock.now() - 72 * HOUR_S
        first = _first_retained(stream, horizon)
        expected = [seq for seq in expected if seq >= first]
        for size in takes:
            got = [e.seq for _, e in bus.take([cursor], size, 1 << 30).items]
            assert got == expected[: len(got)]
            assert len(got) == min(size, len(expected))
            expected = expected[len(got) :]
            compacted = compacted or channel.base_offset > 0
    assert compacted or len(batches) < 2


def _first_retained(stream: Stream, horizon: float) -> int:
    for event in stream.events:
        if event.published_at > horizon:
            return event.seq
    return 1 << 62
