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
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, Literal, TypeGuard

import msgspec
import orjson

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


class Advice(msgspec.Struct, frozen=True):
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


class Reply(msgspec.Struct, frozen=True):
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


_UNSET: Final = msgspec.UNSET


class EventInfo(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """`data.event`: the envelope fields Salesforce puts on every event."""

    replayId: Any = _UNSET  # noqa: N815 - Salesforce's names
    EventUuid: Any = _UNSET
    createdDate: Any = _UNSET  # noqa: N815
    type: Any = _UNSET


class EventBody(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """An event's `data`, decoded only as far as the connector reads it.

    `payload` (change, platform and generic events) and `sobject` (PushTopic) stay the JSON
    text they arrived as (`msgspec.Raw`, a view of the response): they are written out
    unchanged and never decoded on the hot path. A member Salesforce does not send (any
    other than these four) sends the whole response down the slow path, so that nothing of
    an event is ever dropped.
    """

    schema: Any = _UNSET
    payload: msgspec.Raw | msgspec.UnsetType = _UNSET
    event: EventInfo | msgspec.UnsetType = _UNSET
    sobject: msgspec.Raw | msgspec.UnsetType = _UNSET


class ChangeHeader(msgspec.Struct, frozen=True, gc=False):
    """The `ChangeEventHeader` fields that key a change event's records and fill their `meta`."""

    entityName: Any = None  # noqa: N815 - Salesforce's names
    changeType: Any = None  # noqa: N815
    commitTimestamp: Any = None  # noqa: N815
    transactionKey: Any = None  # noqa: N815
    sequenceNumber: Any = None  # noqa: N815
    recordIds: Any = None  # noqa: N815


class _ChangePayload(msgspec.Struct, gc=False):
    ChangeEventHeader: ChangeHeader | None = None


_EMPTY_HEADER: Final = ChangeHeader()
_CHANGE_PAYLOAD: Final = msgspec.json.Decoder(_ChangePayload)


def change_header_of(payload: msgspec.Raw) -> ChangeHeader | None:
    """The `ChangeEventHeader` of a change event payload (JSON text), its other members
    skipped, not decoded; None when the payload is not an object."""
    try:
        header = _CHANGE_PAYLOAD.decode(payload).ChangeEventHeader
    except (msgspec.ValidationError, msgspec.DecodeError):
        return None
    return header if header is not None else _EMPTY_HEADER


_FIELD_DECODERS: dict[str, msgspec.json.Decoder[Any]] = {}
_EMPTY_OBJECT: Final = msgspec.Raw(b"{}")
_OPEN_BRACE: Final = ord("{")


class Event(msgspec.Struct, gc=False):
    """A message delivered on a subscribed channel (treat it as read-only).

    Events of a response are decoded straight into this type: `body` holds `data` decoded
    only as far as the connector reads it, the payload kept as the JSON text it arrived as;
    `data` decodes the rest on first use. An event built by hand from a decoded mapping
    (`Event(channel, replay_id, data)`) answers the same questions from the mapping.

    Attributes:
        channel: the channel it was delivered on.
        replay_id: `data.event.replayId`, when the message has one (checked: an integer in
            0..2**63-1).
        mapping: `data` as a mapping, for events built by hand (and once `data` is read).
        body: `data` as decoded from a response (None for events built by hand).
    """

    channel: str
    replay_id: int | None = None
    mapping: dict[str, Any] | None = None
    body: EventBody | None = msgspec.field(default=None, name="data")
    # The other members of a Bayeux message: a meta reply's (None on events).
    id: Any = None
    successful: Any = None
    clientId: Any = None  # noqa: N815 - the Bayeux name
    subscription: Any = None
    error: Any = None
    advice: Any = None
    ext: Any = None

    @property
    def data(self) -> dict[str, Any]:
        """The message's `data` member, decoded (on first use for a decoded event)."""
        if self.mapping is None:
            self.mapping = _mapping(self.body)
        return self.mapping

    @property
    def schema_id(self) -> str | None:
        """`data.schema`: the id of the event's schema (change and platform events)."""
        body = self.body
        schema = self.data.get("schema") if body is None else body.schema
        return schema if isinstance(schema, str) else None

    def info(self, name: str) -> Any:
        """A member of `data.event` (`EventUuid`, `createdDate`, `type`), or None."""
        body = self.body
        if body is None:
            found = self.data.get("event")
            return found.get(name) if isinstance(found, dict) else None
        info = body.event
        value = _UNSET if info is _UNSET else getattr(info, name, _UNSET)
        return None if value is _UNSET else value

    def payload_json(self, *, object_only: bool = True) -> msgspec.Raw | Any:
        """`data.payload` for a record: its JSON text (`msgspec.Raw`) when decoded from a
        response, else the decoded value; `{}` when it is not an object and `object_only`."""
        body = self.body
        if body is None:
            payload = self.data.get("payload")
            return {} if object_only and not isinstance(payload, dict) else payload
        payload = body.payload
        if payload is _UNSET:
            return _EMPTY_OBJECT if object_only else msgspec.Raw(b"null")
        if object_only and memoryview(payload)[0] != _OPEN_BRACE:
            return _EMPTY_OBJECT
        return payload

    def sobject_json(self) -> msgspec.Raw | Any:
        """`data.sobject` (PushTopic events) for a record, as `payload_json` gives it."""
        body = self.body
        if body is None:
            sobject = self.data.get("sobject")
            return sobject if isinstance(sobject, dict) else {}
        sobject = body.sobject
        if sobject is _UNSET or memoryview(sobject)[0] != _OPEN_BRACE:
            return _EMPTY_OBJECT
        return sobject

    def change_header(self) -> ChangeHeader:
        """`data.payload.ChangeEventHeader`: the fields that key and describe the change."""
        body = self.body
        if body is not None and body.payload is not _UNSET:
            header = change_header_of(body.payload)
            if header is not None:
                return header
        payload = self.data.get("payload")
        found = payload.get("ChangeEventHeader") if isinstance(payload, dict) else None
        if not isinstance(found, dict):
            return _EMPTY_HEADER
        return ChangeHeader(**{k: found.get(k) for k in ChangeHeader.__struct_fields__})

    def payload_field(self, name: str) -> tuple[bool, Any]:
        """(present, value) of one member of `data.payload`, decoding nothing else."""
        return self.member_field("payload", name)

    def member_field(self, member: Literal["payload", "sobject"], name: str) -> tuple[bool, Any]:
        """(present, value) of one member of `data.payload` or `data.sobject`, decoding
        nothing else of it."""
        body = self.body
        raw = _UNSET if body is None else getattr(body, member)
        if body is None or raw is _UNSET:
            found = self.data.get(member)
            if not isinstance(found, dict) or name not in found:
                return (False, None)
            return (True, found[name])
        decoder = _FIELD_DECODERS.get(name)
        if decoder is None:
            decoder = msgspec.json.Decoder(msgspec.defstruct("_Field", [(name, Any, _UNSET)]))
            _FIELD_DECODERS[name] = decoder
        try:
            value = getattr(decoder.decode(raw), name)
        except (msgspec.ValidationError, msgspec.DecodeError):
            return (False, None)  # not an object
        return (False, None) if value is _UNSET else (True, value)


def _mapping(body: EventBody | None) -> dict[str, Any]:
    """`data` as a mapping, from what was decoded of it."""
    if body is None:
        return {}
    data: dict[str, Any] = {}
    if body.schema is not _UNSET:
        data["schema"] = body.schema
    if body.payload is not _UNSET:
        data["payload"] = msgspec.json.decode(body.payload)
    if body.event is not _UNSET:
        info = body.event
        data["event"] = {
            name: getattr(info, name)
            for name in EventInfo.__struct_fields__
            if getattr(info, name) is not _UNSET
        }
    if body.sobject is not _UNSET:
        data["sobject"] = msgspec.json.decode(body.sobject)
    return data


class MalformedEvent(msgspec.Struct, frozen=True):
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
        if channel.startswith("/meta/"):
            raise ProtocolError(f"unknown meta channel {channel}")
        append(_event_from_data(channel, message.get("data")))
    return replies, events


def _event_from_data(channel: str, data: object) -> Event | MalformedEvent:
    """The event (or the broken envelope) a decoded `data` member makes."""
    if not isinstance(data, dict):
        # Bayeux allows any JSON data; Salesforce always sends an object.
        data = {"payload": data}
    info = data.get("event")
    if type(info) is dict:
        replay_id = info.get("replayId", _MISSING)
    elif info is None:
        replay_id = _MISSING
    else:
        return MalformedEvent(channel, f"data.event is a {_json_type(info)}", "missing")
    if type(replay_id) is int and 0 <= replay_id <= MAX_REPLAY_ID:
        return Event(channel, replay_id, data)
    if (replay_id is _MISSING or replay_id is None) and not channel.startswith(
        REPLAY_CHANNEL_PREFIXES
    ):
        return Event(channel, None, data)
    return _malformed(channel, replay_id)


_RESPONSE: Final = msgspec.json.Decoder(list[Event])
_REPLY_FIELDS: Final = ("id", "successful", "clientId", "subscription", "error", "advice", "ext")


def decode(raw: bytes) -> tuple[list[Reply], list[Event | MalformedEvent]]:
    """Decode a response body into meta replies and events, in order (see `parse`).

    One pass decodes the envelope straight into `Event` values, each event's `data` only as
    far as `EventBody` goes: payloads stay the bytes they arrived as. A response off this
    fast path (not an array of messages of the usual shape, invalid UTF-8, JSON spread over
    several lines) goes through `orjson` and `parse`, which classify every case alike.

    Raises:
        ProtocolError: the response is not an array of Bayeux messages.
        orjson.JSONDecodeError: the body is not JSON (or not UTF-8).
    """
    # Payload bytes are copied into output lines as they are, so they must be valid UTF-8
    # and hold no line break (JSON allows one between tokens; a compact body has none).
    fast = b"\n" not in raw and b"\r" not in raw and (raw.isascii() or _is_utf8(raw))
    if fast:
        try:
            messages = _RESPONSE.decode(raw)
        except (msgspec.ValidationError, msgspec.DecodeError):
            fast = False
    if not fast:
        return parse(orjson.loads(raw))
    replies: list[Reply] = []
    events: list[Event | MalformedEvent] = []
    append = events.append
    for message in messages:
        channel = message.channel
        if channel in _META:
            fields = {name: getattr(message, name) for name in _REPLY_FIELDS}
            replies.append(_reply(MetaChannel(channel), fields))
            continue
        if channel.startswith("/meta/"):
            raise ProtocolError(f"unknown meta channel {channel}")
        body = message.body
        if message.mapping is not None:
            message.mapping = None  # a member named so in the JSON: not ours
        if body is None:
            append(_event_from_data(channel, None))
            continue
        info = body.event
        replay_id = _UNSET if info is _UNSET else info.replayId
        if type(replay_id) is int and 0 <= replay_id <= MAX_REPLAY_ID:
            message.replay_id = replay_id
            append(message)
        elif (replay_id is _UNSET or replay_id is None) and not channel.startswith(
            REPLAY_CHANNEL_PREFIXES
        ):
            message.replay_id = None
            append(message)
        else:
            append(_malformed(channel, _MISSING if replay_id is _UNSET else replay_id))
    return replies, events


def _is_utf8(raw: bytes) -> bool:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


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
