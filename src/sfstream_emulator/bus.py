"""The event bus: replay ids, retention, and channels that subscribers read.

Terms, as in Salesforce:

- A **stream** is where events are stored. It hands out replay ids (strictly increasing and
  never contiguous, so that no client can assume `+1`) and enforces the retention window.
- A **channel** is what a client subscribes to. Most channels are their stream. Change Data
  Capture is the exception: one stream holds every change event of the org, and
  `/data/ChangeEvents`, `/data/AccountChangeEvent` and custom `__chn` channels are filtered
  views of it. The same event therefore carries the same replay id on every CDC channel it
  appears on.

Each event's `data` member is serialized once, when it is published; a delivery only copies
bytes. Subscribers keep a cursor (an absolute offset into a channel) instead of a queue, so
delivering to many clients costs no memory per client and per event.
"""

from __future__ import annotations

import asyncio
import heapq
import random
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from operator import attrgetter
from typing import Final

from sfstream_emulator.clock import Clock

HOUR_S: Final = 3600.0
CDC_STREAM: Final = "ChangeEvents"
"""Name of the one stream behind every Change Data Capture channel."""

_COMPACT_AFTER: Final = 4096
_replay_of = attrgetter("replay_id")


class ChannelKind(StrEnum):
    """What a channel carries; decides retention and payload shape."""

    CHANGE_EVENTS = "change_events"
    PLATFORM_EVENT = "platform_event"
    PUSH_TOPIC = "push_topic"
    GENERIC = "generic"


@dataclass(slots=True, frozen=True)
class BusEvent:
    """One stored event.

    Attributes:
        replay_id: the id Salesforce puts in `data.event.replayId`.
        seq: position in the bus's global publish order (merges channels in one response).
        published_at: emulated time of publication, for retention.
        data: the serialized `data` member of the Bayeux message.
        entity: the entity whose change or event this is (`Account`, `Order_Placed__e`).
    """

    replay_id: int
    seq: int
    published_at: float
    data: bytes
    entity: str = ""


class _Log:
    """An append-only list of events with a retention horizon and lazy compaction."""

    __slots__ = ("base_offset", "events", "head", "retention_s")

    def __init__(self, retention_s: float) -> None:
        self.retention_s = retention_s
        self.events: list[BusEvent] = []
        self.head = 0
        """Index of the first retained event in `events`."""
        self.base_offset = 0
        """Absolute offset of `events[0]`; grows when expired events are dropped."""

    def purge(self, now: float) -> None:
        """Forget events older than the retention window (they are a prefix)."""
        horizon = now - self.retention_s
        events = self.events
        head = self.head
        while head < len(events) and events[head].published_at <= horizon:
            head += 1
        if head >= _COMPACT_AFTER and head * 2 >= len(events):
            del events[:head]
            self.base_offset += head
            head = 0
        self.head = head

    @property
    def first_offset(self) -> int:
        return self.base_offset + self.head

    @property
    def end_offset(self) -> int:
        return self.base_offset + len(self.events)

    def retained(self) -> list[BusEvent]:
        return self.events[self.head :]

    def contains_replay_id(self, replay_id: int) -> bool:
        index = bisect_left(self.events, replay_id, lo=self.head, key=_replay_of)
        return index < len(self.events) and self.events[index].replay_id == replay_id

    def offset_after(self, replay_id: int) -> int:
        """Absolute offset of the first retained event whose replay id exceeds `replay_id`."""
        index = bisect_right(self.events, replay_id, lo=self.head, key=_replay_of)
        return self.base_offset + index


class Stream(_Log):
    """Where events are stored; owns replay-id allocation."""

    __slots__ = ("_next_replay_id", "_rng", "name")

    def __init__(self, name: str, retention_s: float, rng: random.Random) -> None:
        super().__init__(retention_s)
        self.name = name
        self._rng = rng
        # Real replay ids run to tens of millions; start somewhere in that range.
        self._next_replay_id = rng.randint(1_000_000, 40_000_000)

    def allocate_replay_id(self) -> int:
        """The next replay id: strictly greater than the last, never by exactly one."""
        rng = self._rng
        step = rng.randint(10, 400) if rng.random() < 0.02 else rng.randint(2, 9)
        self._next_replay_id += step
        return self._next_replay_id

    @property
    def last_replay_id(self) -> int | None:
        return self.events[-1].replay_id if len(self.events) > self.head else None

    @property
    def last_allocated_replay_id(self) -> int:
        """The replay id allocated last (before any: where allocation starts)."""
        return self._next_replay_id


class Channel(_Log):
    """A subscribable channel: its stream's events, or a filtered view of them."""

    __slots__ = ("carries_client_id", "kind", "name", "stream", "suffix", "waiters")

    def __init__(self, name: str, stream: Stream, kind: ChannelKind) -> None:
        super().__init__(stream.retention_s)
        self.name = name
        self.stream = stream
        self.kind = kind
        self.carries_client_id = kind in (ChannelKind.PUSH_TOPIC, ChannelKind.GENERIC)
        """PushTopic and generic messages name the receiving client; CDC and events do not."""
        self.suffix: bytes = b',"channel":"' + name.encode() + b'"}'
        """Closes a message whose `data` member was written just before."""
        self.waiters: set[asyncio.Event] = set()

    def wake(self) -> None:
        for waiter in self.waiters:
            waiter.set()


@dataclass(slots=True)
class Cursor:
    """A subscriber's position in one channel: the absolute offset of its next event."""

    channel: Channel
    offset: int


@dataclass(slots=True)
class Batch:
    """Events taken for one delivery, in publish order, with their channels."""

    items: list[tuple[Channel, BusEvent]] = field(default_factory=list)
    size_bytes: int = 0

    def __len__(self) -> int:
        return len(self.items)

    def serialize_into(self, parts: list[bytes], client_id: str | None = None) -> None:
        """Append each event as a complete Bayeux message, comma-terminated.

        With `client_id`, PushTopic and generic messages start with it, as Salesforce sends
        them (`{"clientId": ..., "data": ..., "channel": ...}`).
        """
        plain = b'{"data":'
        named = (
            plain
            if client_id is None
            else b'{"clientId":"' + client_id.encode() + b'",' + plain[1:]
        )
        for channel, event in self.items:
            parts.append(named if channel.carries_client_id else plain)
            parts.append(event.data)
            parts.append(channel.suffix)
            parts.append(b",")


class EventBus:
    """All streams and channels of one emulated org.

    Args:
        clock: emulated time, for retention.
        seed: makes replay-id sequences reproducible.
        retention_hours: per channel kind; Salesforce keeps CDC and high-volume platform
            events 72 h, PushTopic and generic events 24 h.
    """

    def __init__(
        self,
        clock: Clock,
        seed: int | None = None,
        retention_hours: dict[ChannelKind, float] | None = None,
    ) -> None:
        self.clock = clock
        self._rng = random.Random(seed)
        self.retention_hours = {
            ChannelKind.CHANGE_EVENTS: 72.0,
            ChannelKind.PLATFORM_EVENT: 72.0,
            ChannelKind.PUSH_TOPIC: 24.0,
            ChannelKind.GENERIC: 24.0,
        } | (retention_hours or {})
        self.streams: dict[str, Stream] = {}
        self.channels: dict[str, Channel] = {}
        self._seq = 0
        self.published_total = 0

    def stream(self, name: str, kind: ChannelKind) -> Stream:
        """The stream called `name`, created on first use."""
        stream = self.streams.get(name)
        if stream is None:
            retention = self.retention_hours[kind] * HOUR_S
            stream = Stream(name, retention, random.Random(self._rng.random()))
            self.streams[name] = stream
        return stream

    def channel(self, name: str, stream: Stream, kind: ChannelKind) -> Channel:
        """The channel called `name` over `stream`, created on first use."""
        channel = self.channels.get(name)
        if channel is None:
            channel = Channel(name, stream, kind)
            self.channels[name] = channel
        return channel

    def publish(
        self,
        stream: Stream,
        channels: Iterable[Channel],
        data: bytes,
        replay_id: int,
        entity: str = "",
        *,
        wake: bool = True,
    ) -> BusEvent:
        """Store one event whose `data` (already holding `replay_id`) was serialized.

        Use `stream.allocate_replay_id()` to get `replay_id` before serializing `data`.
        """
        self._seq += 1
        event = BusEvent(replay_id, self._seq, self.clock.now(), data, entity)
        stream.events.append(event)
        self.published_total += 1
        for channel in channels:
            channel.events.append(event)
            if wake:
                channel.wake()
        return event

    def purge(self, channel: Channel) -> None:
        """Apply retention to a channel and its stream."""
        now = self.clock.now()
        channel.purge(now)
        channel.stream.purge(now)

    def replay_is_valid(self, channel: Channel, replay_id: int) -> bool:
        """Whether `replay_id` names an event still retained in the channel's stream."""
        self.purge(channel)
        return channel.stream.contains_replay_id(replay_id)

    def start_cursor(self, channel: Channel, replay: int) -> Cursor:
        """Where a subscription with replay value `replay` starts.

        -1 starts at the tip, -2 at the oldest retained event, and a valid replay id just
        after that event. Call `replay_is_valid` first for an explicit id.
        """
        self.purge(channel)
        if replay == -1:
            return Cursor(channel, channel.end_offset)
        if replay == -2:
            return Cursor(channel, channel.first_offset)
        return Cursor(channel, channel.offset_after(replay))

    def pending(self, cursors: Iterable[Cursor]) -> int:
        """How many events wait for these cursors (retention applied)."""
        total = 0
        for cursor in cursors:
            self.purge(cursor.channel)
            total += cursor.channel.end_offset - max(cursor.offset, cursor.channel.first_offset)
        return total

    def take(self, cursors: list[Cursor], max_events: int, max_bytes: int) -> Batch:
        """Take up to `max_events` / `max_bytes` pending events and advance the cursors.

        Events from several channels are merged in publish order. At least one event is
        taken when any is pending, whatever its size.
        """
        batch = Batch()
        sources: list[Iterator[tuple[int, int, BusEvent]]] = []
        for index, cursor in enumerate(cursors):
            channel = cursor.channel
            self.purge(channel)
            # Events that expired while the client was away are skipped.
            cursor.offset = max(cursor.offset, channel.first_offset)
            start = cursor.offset - channel.base_offset
            if start < len(channel.events):
                sources.append(_tagged(channel.events, start, index))
        if not sources:
            return batch
        merged = sources[0] if len(sources) == 1 else heapq.merge(*sources)
        taken = [0] * len(cursors)
        items = batch.items
        size = 0
        for _seq, index, event in merged:
            cost = len(event.data) + 48
            if items and (len(items) >= max_events or size + cost > max_bytes):
                break
            items.append((cursors[index].channel, event))
            taken[index] += 1
            size += cost
        for index, count in enumerate(taken):
            cursors[index].offset += count
        batch.size_bytes = size
        return batch


def _tagged(events: list[BusEvent], start: int, index: int) -> Iterator[tuple[int, int, BusEvent]]:
    for position in range(start, len(events)):
        event = events[position]
        yield event.seq, index, event
