"""Streams: channel names, what they carry, the stable stream ids they map to, and the
`StreamSpec` every layer shares (a leaf: it imports only errors and Bayeux constants).

| channel | kind | stream id |
|---|---|---|
| `/data/AccountChangeEvent` | change events of one entity | `sf.event.account_changes` |
| `/data/Employee__ChangeEvent` | (custom object) | `sf.event.employee_changes` |
| `/data/ns__Thing__ChangeEvent` | (namespaced) | `sf.event.ns_thing_changes` |
| `/data/ChangeEvents` | every selected entity | `sf.event.all_changes` |
| `/data/Sales__chn` | custom change event channel | `sf.event.sales_channel` |
| `/event/Order_Placed__e` | platform event | `sf.event.order_placed` |
| `/event/BatchApexErrorEvent` | standard platform event | `sf.event.batch_apex_error_event` |
| `/event/Alerts__chn` | custom platform event channel | `sf.event.alerts_channel` |
| `/topic/HighValueDeals` | PushTopic | `sf.topic.high_value_deals` |
| `/u/Notifications` | generic streaming | `sf.channel.notifications` |

Names are case-sensitive, as in Salesforce. Ids are lower snake case and stable: they depend
on the channel name only.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any, Final, Literal

import msgspec

from sfstream.bayeux.types import LATEST, ReplayPolicy
from sfstream.errors import ConfigError

_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")
_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
_STREAM_ID: Final = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z0-9_]+)*$")


class ChannelKind(StrEnum):
    CHANGE_EVENTS = "change_events"
    """One entity's change events (`/data/AccountChangeEvent`)."""
    ALL_CHANGE_EVENTS = "all_change_events"
    """`/data/ChangeEvents`: every selected entity."""
    CHANGE_EVENT_CHANNEL = "change_event_channel"
    """A custom change event channel (`/data/Sales__chn`)."""
    PLATFORM_EVENT = "platform_event"
    PLATFORM_EVENT_CHANNEL = "platform_event_channel"
    PUSH_TOPIC = "push_topic"
    GENERIC = "generic"

    @property
    def is_cdc(self) -> bool:
        return self in (
            ChannelKind.CHANGE_EVENTS,
            ChannelKind.ALL_CHANGE_EVENTS,
            ChannelKind.CHANGE_EVENT_CHANNEL,
        )


class ChannelInfo(msgspec.Struct, frozen=True):
    """A parsed channel name.

    Attributes:
        name: the channel as subscribed (`/topic/X?Field=v` keeps its filter).
        kind: what it carries.
        entity: the object of a single-entity CDC channel (`Account`, `Employee__c`), the
            event of a platform event channel (`Order_Placed__e`), the topic or channel name
            otherwise.
    """

    name: str
    kind: ChannelKind
    entity: str

    @property
    def base(self) -> str:
        """The name without a PushTopic filter."""
        return self.name.partition("?")[0]


def snake(name: str) -> str:
    """`OpportunityLineItem` -> `opportunity_line_item`, `Order_Placed` -> `order_placed`."""
    spaced = _CAMEL.sub("_", name)
    return re.sub(r"_+", "_", spaced).strip("_").lower()


def parse_channel(name: str) -> ChannelInfo:
    """Classify a channel name.

    Raises:
        ConfigError: the name is not a Salesforce streaming channel.
    """
    base, _, query = name.partition("?")
    parts = base.split("/")
    if len(parts) != 3 or parts[0] != "" or not parts[2]:
        raise ConfigError(
            f"{name!r} is not a streaming channel: expected /data/..., /event/..., "
            "/topic/... or /u/..."
        )
    prefix, rest = parts[1], parts[2]
    if query and prefix != "topic":
        raise ConfigError(f"{name!r}: only PushTopic channels take ?Field=value filters")
    if not _NAME.match(rest):
        raise ConfigError(f"{name!r}: {rest!r} is not a valid Salesforce API name")
    if prefix == "data":
        if rest == "ChangeEvents":
            return ChannelInfo(name, ChannelKind.ALL_CHANGE_EVENTS, "")
        if rest.endswith("__chn"):
            return ChannelInfo(name, ChannelKind.CHANGE_EVENT_CHANNEL, rest)
        if rest.endswith("__ChangeEvent"):
            return ChannelInfo(
                name, ChannelKind.CHANGE_EVENTS, rest[: -len("__ChangeEvent")] + "__c"
            )
        if rest.endswith("ChangeEvent") and len(rest) > len("ChangeEvent"):
            return ChannelInfo(name, ChannelKind.CHANGE_EVENTS, rest[: -len("ChangeEvent")])
        raise ConfigError(
            f"{name!r}: a /data/ channel is ChangeEvents, <Entity>ChangeEvent, "
            "<Custom>__ChangeEvent or a custom __chn channel"
        )
    if prefix == "event":
        kind = (
            ChannelKind.PLATFORM_EVENT_CHANNEL
            if rest.endswith("__chn")
            else ChannelKind.PLATFORM_EVENT
        )
        return ChannelInfo(name, kind, rest)
    if prefix == "topic":
        return ChannelInfo(name, ChannelKind.PUSH_TOPIC, rest)
    if prefix == "u":
        return ChannelInfo(name, ChannelKind.GENERIC, rest)
    raise ConfigError(f"{name!r}: unknown channel prefix /{prefix}/")


def stream_id(channel: str | ChannelInfo) -> str:
    """The stable stream id of a channel (see the module table)."""
    info = channel if isinstance(channel, ChannelInfo) else parse_channel(channel)
    base = info.base.split("/")[2]
    kind = info.kind
    if kind is ChannelKind.ALL_CHANGE_EVENTS:
        return "sf.event.all_changes"
    if kind is ChannelKind.CHANGE_EVENTS:
        return f"sf.event.{snake(info.entity.removesuffix('__c'))}_changes"
    if kind in (ChannelKind.CHANGE_EVENT_CHANNEL, ChannelKind.PLATFORM_EVENT_CHANNEL):
        return f"sf.event.{snake(base.removesuffix('__chn'))}_channel"
    if kind is ChannelKind.PLATFORM_EVENT:
        return f"sf.event.{snake(base.removesuffix('__e'))}"
    if kind is ChannelKind.PUSH_TOPIC:
        suffix = ""
        if "?" in info.name:
            query = info.name.partition("?")[2]
            suffix = "_" + snake(re.sub(r"[^A-Za-z0-9]+", "_", query))
        return f"sf.topic.{snake(base)}{suffix}"
    return f"sf.channel.{snake(base)}"


def check_stream_id(value: str) -> str:
    """Validate a stream id given in configuration.

    Raises:
        ConfigError: not lower snake case words separated by dots.
    """
    if not _STREAM_ID.match(value):
        raise ConfigError(
            f"stream id {value!r} must be lower case letters, digits and underscores, in "
            "dot-separated parts (like sf.event.account_changes)"
        )
    return value


class StreamSpec(msgspec.Struct, frozen=True):
    """One stream the connector runs."""

    id: str
    channel: str
    kind: ChannelKind
    entity: str
    key_field: str | None = None
    initial_replay: int = LATEST
    on_invalid_replay: ReplayPolicy = ReplayPolicy.FAIL
    source: Literal["config", "metadata"] = "config"
    on_breaking_change: Literal["warn", "fail"] = "warn"
    max_silence_s: float | None = None
    """A stream known to be busy: resubscribed from its checkpoint when it receives nothing
    for this long (None: never)."""
    on_gap_event: Literal["heal", "flag"] = "heal"
    """Change events: read the records of a gap event back through REST (heal), or only
    flag it."""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "channel": self.channel,
            "kind": self.kind.value,
            "entity": self.entity,
            "key_field": self.key_field,
            "initial_replay": self.initial_replay,
            "on_invalid_replay": self.on_invalid_replay.value,
            "on_breaking_change": self.on_breaking_change,
            "source": self.source,
            "max_silence_s": self.max_silence_s,
            "on_gap_event": self.on_gap_event,
        }
