"""Bayeux messages as Salesforce sends them, parsed once at the boundary.

A server response is a JSON array mixing meta replies (`/meta/...`) and events. `parse`
turns the decoded array into typed `Reply` and `Event` values; only an event's Salesforce
`data` stays an opaque mapping. Anything that is not a Bayeux message raises
`ProtocolError`.

The event envelope is checked here, once: `data.event.replayId` must be an integer in
0..2**63-1 (Salesforce's replay ids are Java longs: fact sheet §3; the checkpoint store keeps
them as int64). An event that breaks that rule comes out as a `MalformedEvent` in its place
in the response, never as an `Event`, so nothing downstream can turn a bad id into a record:
the session drops it and recovers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal, TypeGuard

from sfstream.errors import ProtocolError


class MetaChannel(StrEnum):
    """The Bayeux meta channels Salesforce implements."""

    HANDSHAKE = "/meta/handshake"
    CONNECT = "/meta/connect"
    SUBSCRIBE = "/meta/subscribe"
    UNSUBSCRIBE = "/meta/unsubscribe"
    DISCONNECT = "/meta/disconnect"


Reconnect = Literal["retry", "handshake", "none"]
LONG_POLLING: Final = "long-polling"
_META: Final = frozenset(m.value for m in MetaChannel)
MAX_REPLAY_ID: Final = 2**63 - 1
"""The largest replayId (a signed 64-bit integer, like Salesforce's Java long)."""
REPLAY_CHANNEL_PREFIXES: Final = ("/data/", "/event/", "/topic/")
"""Channels whose events always carry `data.event.replayId` (fact sheet §5): change events,
platform events and PushTopics, all durable since API 37.0. Generic `/u/` channels are
durable from 37.0 too and carry one as well, but an event without it (a non-durable generic
stream) is accepted there, with `replay_id` None."""


@dataclass(frozen=True, slots=True)
class Advice:
    """Server advice: how and when to reconnect (Bayeux §advice)."""

    reconnect: Reconnect | None = None
    interval_ms: int | None = None
    timeout_ms: int | None = None

    @classmethod
    def parse(cls, raw: object) -> Advice | None:
        if not isinstance(raw, dict):
            return None
        reconnect = raw.get("reconnect")
        interval = raw.get("interval")
        timeout = raw.get("timeout")
        return cls(
            reconnect=reconnect if reconnect in ("retry", "handshake", "none") else None,
            interval_ms=int(interval) if _is_number(interval) else None,
            timeout_ms=int(timeout) if _is_number(timeout) else None,
        )


def _is_number(value: object) -> TypeGuard[int | float]:
    """A non-negative JSON number that converts to an int (not a bool, NaN or infinity)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return value >= 0 and (isinstance(value, int) or math.isfinite(value))


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply on a meta channel."""

    channel: MetaChannel
    successful: bool
    id: str | None = None
    client_id: str | None = None
    subscription: str | None = None
    error: str | None = None
    advice: Advice | None = None
    failure_reason: str | None = None
    """`ext.sfdc.failureReason`: why Salesforce denied a handshake."""
    replay_supported: bool = False
    """Whether a handshake reply says `ext.replay: true`."""


@dataclass(slots=True)
class Event:
    """A message delivered on a subscribed channel (treat it as read-only).

    Not frozen: a frozen dataclass's `__init__` costs several times more, and one of these is
    built for every event.

    Attributes:
        channel: the channel it was delivered on.
        replay_id: `data.event.replayId`, when the message has one.
        data: the message's `data` member, as Salesforce sent it.
    """

    channel: str
    replay_id: int | None
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class MalformedEvent:
    """An event whose envelope breaks the protocol; what it carried is not kept.

    Attributes:
        channel: the channel it came on.
        problem: what is wrong (`"replayId is a str"`, `"replayId missing"`, ...).
        value_type: the JSON type of the offending value (`"missing"` when absent).
    """

    channel: str
    problem: str
    value_type: str


_MISSING: Final = object()


def _json_type(value: object) -> str:
    if value is _MISSING:
        return "missing"
    if value is None:
        return "null"
    return type(value).__name__


def _malformed(channel: str, value: object) -> MalformedEvent:
    kind = _json_type(value)
    if value is _MISSING or value is None:
        problem = "replayId missing"
    elif type(value) is int:
        problem = "replayId out of range"
    else:
        problem = f"replayId is a {kind}, not an integer"
    return MalformedEvent(channel, problem, kind)


def parse(decoded: object) -> tuple[list[Reply], list[Event | MalformedEvent]]:
    """Split a decoded response into meta replies and events, in order.

    An event with a bad envelope (see the module docstring) becomes a `MalformedEvent` at
    its place among the events.

    Raises:
        ProtocolError: the response is not an array of Bayeux messages.
    """
    if isinstance(decoded, dict):
        decoded = [decoded]
    if not isinstance(decoded, list):
        raise ProtocolError(f"a Bayeux response is a JSON array, got {type(decoded).__name__}")
    replies: list[Reply] = []
    events: list[Event | MalformedEvent] = []
    append = events.append
    for message in decoded:
        if not isinstance(message, dict):
            raise ProtocolError("a Bayeux message is a JSON object")
        channel = message.get("channel")
        if not isinstance(channel, str):
            raise ProtocolError("a Bayeux message without a channel")
        if channel in _META:
            replies.append(_reply(MetaChannel(channel), message))
            continue
        data = message.get("data")
        if channel.startswith("/meta/"):
            raise ProtocolError(f"unknown meta channel {channel}")
        if not isinstance(data, dict):
            # Bayeux allows any JSON data; Salesforce always sends an object.
            data = {"payload": data}
        # The hot path: inlined `data.event.replayId`, an int (never a bool: `type() is`).
        info = data.get("event")
        if type(info) is dict:
            replay_id = info.get("replayId", _MISSING)
        elif info is None:
            replay_id = _MISSING
        else:
            append(MalformedEvent(channel, f"data.event is a {_json_type(info)}", "missing"))
            continue
        if type(replay_id) is int and 0 <= replay_id <= MAX_REPLAY_ID:
            append(Event(channel, replay_id, data))
        elif (replay_id is _MISSING or replay_id is None) and not channel.startswith(
            REPLAY_CHANNEL_PREFIXES
        ):
            append(Event(channel, None, data))
        else:
            append(_malformed(channel, replay_id))
    return replies, events


def event_time_s(data: dict[str, Any]) -> float | None:
    """When Salesforce says the event happened, in seconds since the epoch, if it says.

    By kind (fact sheet §5): a change event's `payload.ChangeEventHeader.commitTimestamp`
    (epoch milliseconds: "the date and time when the change occurred, represented as the
    number of milliseconds since January 1, 1970 00:00:00 GMT", Apex `EventBus.ChangeEventHeader`
    reference), a platform event's `payload.CreatedDate`, a PushTopic or generic event's
    `event.createdDate` (ISO 8601, `Z` or `+0000`). Used only while a `-1` stream is resumed
    from `-2` (see `Session`), so it may cost a little.
    """
    payload = data.get("payload")
    if isinstance(payload, dict):
        header = payload.get("ChangeEventHeader")
        if isinstance(header, dict):
            stamp = header.get("commitTimestamp")
            if _is_number(stamp) and stamp < 1e15:
                return float(stamp) / 1000
        created = _iso_seconds(payload.get("CreatedDate"))
        if created is not None:
            return created
    info = data.get("event")
    if isinstance(info, dict):
        return _iso_seconds(info.get("createdDate"))
    return None


def _iso_seconds(value: object) -> float | None:
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    try:
        moment = datetime.fromisoformat(value)
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)  # Salesforce's times are UTC
        return moment.timestamp()
    except (ValueError, OverflowError, OSError):
        return None


def _reply(channel: MetaChannel, message: dict[str, Any]) -> Reply:
    ext = message.get("ext")
    failure_reason = None
    replay = False
    if isinstance(ext, dict):
        sfdc = ext.get("sfdc")
        if isinstance(sfdc, dict) and isinstance(sfdc.get("failureReason"), str):
            failure_reason = sfdc["failureReason"]
        replay = ext.get("replay") is True
    message_id = message.get("id")
    client_id = message.get("clientId")
    subscription = message.get("subscription")
    error = message.get("error")
    return Reply(
        channel=channel,
        successful=message.get("successful") is True,
        id=str(message_id) if message_id is not None else None,
        client_id=client_id if isinstance(client_id, str) else None,
        subscription=subscription if isinstance(subscription, str) else None,
        error=error if isinstance(error, str) else None,
        advice=Advice.parse(message.get("advice")),
        failure_reason=failure_reason,
        replay_supported=replay,
    )
