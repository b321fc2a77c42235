"""Which streams to run: from the configuration, or from the org's metadata.

Metadata discovery reads describe global (change event entities, `__e` platform events), the
Tooling API's `PlatformEventChannelMember` (which entities actually raise change events, and
custom channels), `PushTopic` and `StreamingChannel`. Include/exclude globs filter channel
names; streams listed in the configuration are always kept and their settings win.

`check_streams` finds what would otherwise be a silent empty stream: an entity whose change
events are not enabled, a channel that does not exist, an inactive topic, a key field that is
not on the event.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Literal

from sfstream.bayeux import EARLIEST, LATEST, ReplayPolicy
from sfstream.engine.config import Config, Replay, StreamConfig
from sfstream.errors import ConfigError, SfStreamError
from sfstream.salesforce.rest import RestClient
from sfstream.streams import ChannelKind, StreamSpec, parse_channel, stream_id


@dataclass(frozen=True, slots=True)
class Problem:
    """Something `sfstream check` reports about a stream."""

    channel: str
    message: str
    severity: Literal["error", "warning"] = "error"


def _replay(value: Replay) -> int:
    if value == "latest":
        return LATEST
    if value == "earliest":
        return EARLIEST
    assert isinstance(value, int)
    return value


def spec_from_config(
    stream: StreamConfig, source: Literal["config", "metadata"] = "config"
) -> StreamSpec:
    info = parse_channel(stream.channel)
    return StreamSpec(
        id=stream.id or stream_id(info),
        channel=stream.channel,
        kind=info.kind,
        entity=info.entity,
        key_field=stream.key_field,
        initial_replay=_replay(stream.initial_replay),
        on_invalid_replay=ReplayPolicy(stream.on_invalid_replay),
        source=source,
        on_breaking_change=stream.on_breaking_change,
    )


def check_unique(specs: Iterable[StreamSpec]) -> list[StreamSpec]:
    """Reject two channels that would share a stream id.

    Raises:
        ConfigError: naming the channels and how to tell them apart (`id:` overrides).
    """
    seen: dict[str, str] = {}
    result = []
    for spec in specs:
        other = seen.get(spec.id)
        if other is not None:
            raise ConfigError(
                f"channels {other} and {spec.channel} both map to stream id {spec.id!r}; give "
                "one of them an explicit `id:` in `streams`"
            )
        seen[spec.id] = spec.channel
        result.append(spec)
    return result


def streams_from_config(config: Config) -> list[StreamSpec]:
    return check_unique(spec_from_config(s) for s in config.streams)


@dataclass(frozen=True, slots=True)
class OrgMetadata:
    """What the org says about its streaming channels."""

    change_event_entities: dict[str, str]
    """`AccountChangeEvent` -> `Account`, for every entity that has change events."""
    selected: dict[str, set[str]]
    """Channel (`ChangeEvents`, `Sales__chn`) -> selected change event names."""
    platform_events: set[str]
    push_topics: dict[str, bool]
    """Topic name -> active."""
    streaming_channels: set[str]
    tooling_error: str | None = None

    @property
    def selected_entities(self) -> set[str]:
        return set().union(*self.selected.values()) if self.selected else set()


async def read_metadata(rest: RestClient) -> OrgMetadata:
    """Describe global, channel members, topics and generic channels."""
    described = await rest.describe_global()
    change_events = {
        str(s["name"]): str(s.get("associateParentEntity") or "")
        for s in described
        if s.get("associateEntityType") == "ChangeEvent"
    }
    platform_events = {str(s["name"]) for s in described if str(s.get("name", "")).endswith("__e")}
    selected: dict[str, set[str]] = {}
    tooling_error = None
    try:
        members = await rest.query(
            "SELECT DeveloperName, EventChannel, SelectedEntity FROM PlatformEventChannelMember",
            tooling=True,
        )
    except SfStreamError as exc:
        if exc.retryable:
            raise
        tooling_error = str(exc)
        members = []
    for member in members:
        channel = str(member.get("EventChannel") or "")
        entity = str(member.get("SelectedEntity") or "")
        if channel and entity:
            selected.setdefault(channel, set()).add(entity)
    topics = await rest.query("SELECT Id, Name, IsActive FROM PushTopic")
    generic = await rest.query("SELECT Id, Name FROM StreamingChannel")
    return OrgMetadata(
        change_event_entities=change_events,
        selected=selected,
        platform_events=platform_events,
        push_topics={str(t["Name"]): bool(t.get("IsActive", True)) for t in topics},
        streaming_channels={str(c["Name"]) for c in generic},
        tooling_error=tooling_error,
    )


def _matches(channel: str, include: Iterable[str], exclude: Iterable[str]) -> bool:
    return any(fnmatchcase(channel, p) for p in include) and not any(
        fnmatchcase(channel, p) for p in exclude
    )


def streams_from_metadata(config: Config, metadata: OrgMetadata) -> list[StreamSpec]:
    """Streams the org offers (filtered by the discovery globs) plus the configured ones."""
    discovery = config.discovery
    candidates: list[str] = []
    selected = metadata.selected_entities
    candidates += [f"/data/{n}" for n in sorted(metadata.change_event_entities) if n in selected]
    candidates += [f"/data/{c}" for c in sorted(metadata.selected) if c.endswith("__chn")]
    candidates += [f"/event/{name}" for name in sorted(metadata.platform_events)]
    candidates += [
        f"/topic/{name}" for name, active in sorted(metadata.push_topics.items()) if active
    ]
    candidates += sorted(metadata.streaming_channels)
    configured = {s.channel: s for s in config.streams}
    specs = []
    for channel in candidates:
        if channel in configured or not _matches(channel, discovery.include, discovery.exclude):
            continue
        stream = StreamConfig(
            channel=channel,
            initial_replay=discovery.initial_replay,
            on_invalid_replay=discovery.on_invalid_replay,
            on_breaking_change=discovery.on_breaking_change,
        )
        specs.append(spec_from_config(stream, "metadata"))
    specs += [spec_from_config(s) for s in config.streams]
    return check_unique(sorted(specs, key=lambda s: s.channel))


async def discover(config: Config, rest: RestClient | None) -> list[StreamSpec]:
    """The streams to run, by the configured discovery mode."""
    if config.discovery.mode == "config":
        return streams_from_config(config)
    if rest is None:
        raise ConfigError("metadata discovery needs a connection to the org")
    return streams_from_metadata(config, await read_metadata(rest))


async def check_streams(
    specs: Iterable[StreamSpec], metadata: OrgMetadata, rest: RestClient
) -> list[Problem]:
    """Everything that would make a stream fail or stay silently empty."""
    problems: list[Problem] = []
    entities = {v: k for k, v in metadata.change_event_entities.items()}
    for spec in specs:
        kind = spec.kind
        if kind is ChannelKind.CHANGE_EVENTS:
            problems += _check_entity(spec, entities, metadata)
        elif kind is ChannelKind.ALL_CHANGE_EVENTS:
            if metadata.tooling_error is None and not metadata.selected.get("ChangeEvents"):
                problems.append(
                    Problem(
                        spec.channel,
                        "no entity is selected for change events "
                        "on the standard channel: the stream would stay empty",
                    )
                )
        elif kind is ChannelKind.CHANGE_EVENT_CHANNEL:
            if metadata.tooling_error is None and spec.entity not in metadata.selected:
                problems.append(
                    Problem(
                        spec.channel,
                        f"custom channel {spec.entity} does not exist or has no members",
                    )
                )
        elif kind is ChannelKind.PLATFORM_EVENT:
            if spec.entity not in metadata.platform_events:
                problems.append(
                    Problem(
                        spec.channel, f"platform event {spec.entity} does not exist in this org"
                    )
                )
            elif spec.key_field:
                problems += await _check_key_field(spec, rest)
        elif kind is ChannelKind.PUSH_TOPIC:
            topic = spec.entity
            if topic not in metadata.push_topics:
                problems.append(Problem(spec.channel, f"PushTopic {topic} does not exist"))
            elif not metadata.push_topics[topic]:
                problems.append(Problem(spec.channel, f"PushTopic {topic} is not active"))
        elif kind is ChannelKind.GENERIC and spec.channel not in metadata.streaming_channels:
            problems.append(Problem(spec.channel, "StreamingChannel does not exist"))
    if metadata.tooling_error is not None:
        problems.append(
            Problem(
                "*",
                "cannot read which entities raise change events (Tooling "
                f"API): {metadata.tooling_error}",
                "warning",
            )
        )
    return problems


def _check_entity(
    spec: StreamSpec, entities: dict[str, str], metadata: OrgMetadata
) -> list[Problem]:
    change_event = spec.channel.removeprefix("/data/")
    if change_event not in metadata.change_event_entities:
        return [
            Problem(
                spec.channel,
                f"{spec.entity} has no change events in this org (no {change_event} in describe)",
            )
        ]
    if metadata.tooling_error is None and change_event not in metadata.selected_entities:
        return [
            Problem(
                spec.channel,
                f"change events are not enabled for {spec.entity}: select it in Setup > Change "
                "Data Capture (or add it to a channel); the subscription would succeed and "
                "deliver nothing",
            )
        ]
    return []


async def _check_key_field(spec: StreamSpec, rest: RestClient) -> list[Problem]:
    described = await rest.describe(spec.entity)
    names = {str(f.get("name")) for f in described.get("fields", []) if isinstance(f, dict)}
    if spec.key_field not in names:
        return [
            Problem(spec.channel, f"key field {spec.key_field} is not a field of {spec.entity}")
        ]
    return []
