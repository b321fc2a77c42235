"""Bayeux messages as Salesforce sends them, parsed once at the boundary.

A server response is a JSON array mixing meta replies (`/meta/...`) and events. `parse`
turns the decoded array into typed `Reply` and `Event` values; only an event's Salesforce
`data` stays an opaque mapping. Anything that is not a Bayeux message raises
`ProtocolError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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


def parse(decoded: object) -> tuple[list[Reply], list[Event]]:
    """Split a decoded response into meta replies and events, in order.

    Raises:
        ProtocolError: the response is not an array of Bayeux messages.
    """
    if isinstance(decoded, dict):
        decoded = [decoded]
    if not isinstance(decoded, list):
        raise ProtocolError(f"a Bayeux response is a JSON array, got {type(decoded).__name__}")
    replies: list[Reply] = []
    events: list[Event] = []
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
        # The hot path: inlined `data.event.replayId` (an int, never a bool).
        info = data.get("event")
        replay_id = info.get("replayId") if isinstance(info, dict) else None
        if not isinstance(replay_id, int) or isinstance(replay_id, bool):
            replay_id = None
        append(Event(channel, replay_id, data))
    return replies, events


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
