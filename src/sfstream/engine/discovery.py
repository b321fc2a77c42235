"""Which streams to run: from the configuration, or from the org's metadata.

Metadata discovery reads describe global (change event entities, `__e` platform events), the
Tooling API's `PlatformEventChannelMember` (which entities actually raise change events, and
on which channel) and `PlatformEventChannel` (which custom channels exist), `PushTopic` and
`StreamingChannel`. Include/exclude globs filter channel names; streams listed in the
configuration are always kept and their settings win.

`check_streams` finds what would otherwise be a silent empty stream: an entity whose change
events are not enabled, a channel that does not exist, an inactive topic, a key field that is
not on the event. `validate_streams` is discovery plus those checks, as `sfstream check`
prints them and as `sfstream run` applies them at every start: an error ends the run (exit 1,
the words `check` prints), a warning is logged and the run goes on.

| problem | severity |
|---|---|
| two streams with one stream id | `ConfigError` (exit 2): nothing starts |
| a configured stream that would run with null keys or stay empty for good: an inactive | error |
| topic, a key field the event lacks | |
| a configured stream nothing is selected for (Change Data Capture): an entity | error, |
| not selected on any channel, nothing selected on `/data/ChangeEvents`, a custom | `unselected` |
| channel without members | |
| a configured stream whose channel, event or topic does not exist (Salesforce refuses | error, |
| the subscription itself) | `refused` |
| the same, for a stream discovery found in the org's metadata itself | warning |
| `key_field` on change events, PushTopic or generic streams (keyed otherwise) | warning |
| the Tooling API cannot be read (which entities raise change events is unknown) | warning |

At start, `sfstream run` ends with the errors unless `runtime.on_subscription_lost` is
`continue`; an error that is `refused` is logged and left to the subscription, whose refusal
ends the run (or not) by that same policy; an error that is `unselected` is logged as a
warning (`stream_not_selected`) and the stream runs: selecting entities is an admin's step in
Setup that may come after the connector is deployed, and the subscription, which Salesforce
accepts meanwhile, delivers from then on.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable, Mapping
from fnmatch import fnmatchcase
from typing import Any, Final, Literal, TypeVar

import msgspec

from sfstream.bayeux import EARLIEST, LATEST, ReplayPolicy
from sfstream.engine.config import Config, Replay, StreamConfig
from sfstream.errors import ConfigError, SfStreamError, TerminalError
from sfstream.salesforce.rest import RestClient
from sfstream.streams import ChannelKind, StreamSpec, parse_channel, stream_id

T = TypeVar("T")

CDC_KINDS: Final = frozenset(
    {ChannelKind.CHANGE_EVENTS, ChannelKind.ALL_CHANGE_EVENTS, ChannelKind.CHANGE_EVENT_CHANNEL}
)
_BY_RECORD_ID: Final = (
    "change event records are keyed by the id of the changed record (ChangeEventHeader.recordIds)"
)
_KEYED_OTHERWISE: Final = {
    ChannelKind.CHANGE_EVENTS: _BY_RECORD_ID,
    ChannelKind.ALL_CHANGE_EVENTS: _BY_RECORD_ID,
    ChannelKind.CHANGE_EVENT_CHANNEL: _BY_RECORD_ID,
    ChannelKind.PUSH_TOPIC: "PushTopic records are keyed by sobject.Id",
    ChannelKind.GENERIC: "generic streaming records have no key",
}
"""Kinds whose records ignore `key_field`, and how they are keyed instead."""


class Problem(msgspec.Struct, frozen=True):
    """Something `sfstream check` reports about a stream, and `sfstream run` at start.

    Attributes:
        refused: Salesforce itself refuses the stream's subscription (its channel, event or
            topic does not exist), so a run does not have to stop for it at start: the
            subscription fails with Salesforce's own words (which also tell a permission
            problem from a missing channel) and `runtime.on_subscription_lost` applies.
            False for what would go unnoticed: a stream that would run and stay empty, or
            run with null keys.
        unselected: nothing the stream carries is selected for Change Data Capture (an
            entity not selected on any channel, a channel without selected entities), so it
            runs and stays empty until an admin selects it. `check` fails it like any error;
            `run` logs it as a warning (`stream_not_selected`) and runs the stream, which
            delivers once the selection is made.
        entity: the entity to select (`Case`), when one is known.
    """

    channel: str
    message: str
    severity: Literal["error", "warning"] = "error"
    refused: bool = False
    unselected: bool = False
    entity: str | None = None

    @property
    def action(self) -> str | None:
        """What makes an `unselected` stream deliver, in words for the log; else None."""
        if not self.unselected:
            return None
        if self.channel.endswith("__chn"):
            return (
                f"add members to {self.channel.removeprefix('/data/')} "
                "(PlatformEventChannelMember, Tooling or Metadata API)"
            )
        what = self.entity or "the entities to stream"
        return f"select {what} in Setup > Change Data Capture; the stream delivers once it is"


class StreamCheckError(TerminalError):
    """A stream would stay silently empty or run with null keys: found at start, before
    subscribing.

    Its message is the `FAIL` lines `sfstream check` prints for the same streams, without
    the mark, joined by `; `.
    """


def stream_label(spec: StreamSpec) -> str:
    """How `check` and `run` name a stream: `stream sf.event.x_changes (/data/XChangeEvent)`."""
    return f"stream {spec.id} ({spec.channel})"


class Failure(msgspec.Struct, frozen=True):
    """A stream with errors, in the words `check` prints after its `FAIL` mark."""

    spec: StreamSpec
    text: str
    """`stream ID (CHANNEL): what is wrong[; what else]`."""
    refused: bool
    """Every error of it is one Salesforce refuses the subscription for (see `Problem`)."""


def failures(specs: Iterable[StreamSpec], problems: Iterable[Problem]) -> list[Failure]:
    """The streams of `specs` with errors among `problems`, in `specs` order."""
    by_channel: dict[str, list[Problem]] = {}
    for problem in problems:
        if problem.severity == "error":
            by_channel.setdefault(problem.channel, []).append(problem)
    found = []
    for spec in specs:
        errors = by_channel.get(spec.channel)
        if errors:
            text = f"{stream_label(spec)}: {'; '.join(p.message for p in errors)}"
            found.append(Failure(spec, text, all(p.refused for p in errors)))
    return found


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
        max_silence_s=stream.max_silence_s,
        on_gap_event=stream.on_gap_event,
    )


def check_unique(
    specs: Iterable[StreamSpec], explicit: Mapping[str, str] | None = None
) -> list[StreamSpec]:
    """Reject two channels that would share a stream id.

    Args:
        explicit: channel -> the `id:` the configuration gives it, to word the hint.

    Raises:
        ConfigError: naming the channels, the id, and what to change.
    """
    ids = explicit or {}
    seen: dict[str, StreamSpec] = {}
    result = []
    for spec in specs:
        other = seen.get(spec.id)
        if other is not None:
            raise ConfigError(_collision(other, spec, ids))
        seen[spec.id] = spec
        result.append(spec)
    return result


def _collision(first: StreamSpec, second: StreamSpec, explicit: Mapping[str, str]) -> str:
    """The message for two streams that map to one id, with a hint that fits the config."""
    head = f"channels {first.channel} and {second.channel} both map to stream id {first.id!r}"
    given = [spec for spec in (first, second) if spec.channel in explicit]
    if len(given) == 2:
        return f"{head}: both have the explicit `id: {first.id}`; change one of them"
    if given:
        (chosen,) = given
        derived = second if chosen is first else first
        found = " (found by discovery)" if derived.source == "metadata" else ""
        exclude = (
            f" (or exclude {derived.channel} from discovery)"
            if derived.source == "metadata"
            else ""
        )
        return (
            f"{head}: {chosen.channel} has the explicit `id: {chosen.id}`, which is the id "
            f"derived from {derived.channel}{found}; change that `id:`{exclude}"
        )
    discovered = [spec for spec in (first, second) if spec.source == "metadata"]
    if not discovered:
        return f"{head}; give one of them an explicit `id:` in `streams`"
    if len(discovered) == 2:
        return (
            f"{head}; list one of them under `streams` with an explicit `id:`, or exclude one "
            "from discovery"
        )
    (offered,) = discovered
    configured = second if offered is first else first
    return (
        f"{head}; give {configured.channel} an explicit `id:` in `streams` (or exclude "
        f"{offered.channel} from discovery)"
    )


def _explicit_ids(config: Config) -> dict[str, str]:
    return {s.channel: s.id for s in config.streams if s.id is not None}


def streams_from_config(config: Config) -> list[StreamSpec]:
    return check_unique((spec_from_config(s) for s in config.streams), _explicit_ids(config))


class OrgMetadata(msgspec.Struct, frozen=True):
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
    custom_channels: set[str] | None = None
    """Custom channels that exist (`SalesEvents__chn`), with or without members; None when
    not read (no custom channel stream to check)."""

    @property
    def selected_entities(self) -> set[str]:
        return set().union(*self.selected.values()) if self.selected else set()


async def read_metadata(
    rest: RestClient, kinds: Iterable[ChannelKind] | None = None
) -> OrgMetadata:
    """Describe global, channel members, topics and generic channels, read concurrently.

    Args:
        kinds: read only what checking streams of these kinds needs (describe global for
            change events and platform events, the Tooling API's channel members for change
            events, PushTopic, StreamingChannel); None reads everything, for discovery.
            What is not read stays empty: check only streams of `kinds` against it.
    """
    wanted = set(ChannelKind) if kinds is None else set(kinds)
    described: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    topics: list[dict[str, Any]] = []
    generic: list[dict[str, Any]] = []
    channels: list[dict[str, Any]] | None = None
    tooling_error = None

    async def describe_global() -> None:
        described[:] = await rest.describe_global()

    async def channel_members() -> None:
        nonlocal tooling_error
        try:
            members[:] = await rest.query(
                "SELECT DeveloperName, EventChannel, SelectedEntity "
                "FROM PlatformEventChannelMember",
                tooling=True,
            )
        except SfStreamError as exc:
            if exc.retryable:
                raise
            tooling_error = str(exc)

    async def custom_channels() -> None:
        # DeveloperName, not FullName: the Tooling API returns FullName only for a query of
        # one record (LIMIT 1).
        nonlocal channels, tooling_error
        try:
            channels = await rest.query(
                "SELECT DeveloperName, ChannelType FROM PlatformEventChannel", tooling=True
            )
        except SfStreamError as exc:
            if exc.retryable:
                raise
            tooling_error = str(exc)

    async def push_topics() -> None:
        topics[:] = await rest.query("SELECT Id, Name, IsActive FROM PushTopic")

    async def streaming_channels() -> None:
        generic[:] = await rest.query("SELECT Id, Name FROM StreamingChannel")

    reads: list[Awaitable[None]] = []
    if wanted & {ChannelKind.CHANGE_EVENTS, ChannelKind.PLATFORM_EVENT}:
        reads.append(describe_global())
    if wanted & CDC_KINDS:
        reads.append(channel_members())
    if ChannelKind.CHANGE_EVENT_CHANNEL in wanted:
        reads.append(custom_channels())
    if ChannelKind.PUSH_TOPIC in wanted:
        reads.append(push_topics())
    if ChannelKind.GENERIC in wanted:
        reads.append(streaming_channels())
    await _together(reads)
    change_events = {
        str(s["name"]): str(s.get("associateParentEntity") or "")
        for s in described
        if s.get("associateEntityType") == "ChangeEvent"
    }
    platform_events = {str(s["name"]) for s in described if str(s.get("name", "")).endswith("__e")}
    selected: dict[str, set[str]] = {}
    for member in members:
        channel = str(member.get("EventChannel") or "")
        entity = str(member.get("SelectedEntity") or "")
        if channel and entity:
            selected.setdefault(channel, set()).add(entity)
    return OrgMetadata(
        change_event_entities=change_events,
        selected=selected,
        platform_events=platform_events,
        push_topics={str(t["Name"]): bool(t.get("IsActive", True)) for t in topics},
        streaming_channels={str(c["Name"]) for c in generic},
        tooling_error=tooling_error,
        custom_channels=None
        if channels is None
        else {f"{c.get('DeveloperName')}__chn" for c in channels if c.get("DeveloperName")},
    )


async def _together(awaitables: Iterable[Awaitable[T]]) -> list[T]:
    """Await all of them concurrently; the first failure cancels the others and is raised."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


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
    return check_unique(sorted(specs, key=lambda s: s.channel), _explicit_ids(config))


async def discover(config: Config, rest: RestClient | None) -> list[StreamSpec]:
    """The streams to run, by the configured discovery mode."""
    if config.discovery.mode == "config":
        return streams_from_config(config)
    if rest is None:
        raise ConfigError("metadata discovery needs a connection to the org")
    return streams_from_metadata(config, await read_metadata(rest))


async def validate_streams(
    config: Config, rest: RestClient
) -> tuple[list[StreamSpec], list[Problem]]:
    """The streams to run and their problems: what `sfstream check` prints, and what
    `sfstream run` checks at every start.

    The configured streams are checked for colliding ids first, before any request. The
    org's metadata is read once (by metadata discovery, or only as much as the streams'
    kinds need), the key fields of platform events are described concurrently.

    Raises:
        ConfigError: two streams map to one stream id.
        SfStreamError: the org cannot be read (retryable while it is unreachable).
    """
    configured = streams_from_config(config)
    if config.discovery.mode == "metadata":
        metadata = await read_metadata(rest)
        specs = streams_from_metadata(config, metadata)
    else:
        specs = configured
        metadata = await read_metadata(rest, {spec.kind for spec in specs})
    return specs, await check_streams(specs, metadata, rest)


async def check_streams(
    specs: Iterable[StreamSpec], metadata: OrgMetadata, rest: RestClient
) -> list[Problem]:
    """Everything that would make a stream fail or stay silently empty, as errors, and
    settings that have no effect, as warnings.

    A problem of a stream that discovery found in the org itself is a warning: the org
    offers it, so it is not the configuration's mistake.
    """
    problems: list[Problem] = []
    entities = {v: k for k, v in metadata.change_event_entities.items()}
    key_checks: list[Awaitable[list[Problem]]] = []
    for spec in specs:
        found = _problems(spec, entities, metadata, key_checks, rest)
        if spec.source == "metadata":
            found = [msgspec.structs.replace(p, severity="warning") for p in found]
        problems += found
        ignored = _KEYED_OTHERWISE.get(spec.kind)
        if spec.key_field and ignored is not None:
            problems.append(
                Problem(
                    spec.channel,
                    f"key_field {spec.key_field} is ignored: {ignored}; remove key_field",
                    "warning",
                )
            )
    for found in await _together(key_checks):
        problems += found
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


def _problems(
    spec: StreamSpec,
    entities: dict[str, str],
    metadata: OrgMetadata,
    key_checks: list[Awaitable[list[Problem]]],
    rest: RestClient,
) -> list[Problem]:
    """The problems of one stream; a key field to describe is added to `key_checks`."""
    problems: list[Problem] = []
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
                    unselected=True,
                )
            )
    elif kind is ChannelKind.CHANGE_EVENT_CHANNEL:
        problems += _check_channel(spec, metadata)
    elif kind is ChannelKind.PLATFORM_EVENT:
        if spec.entity not in metadata.platform_events:
            problems.append(
                Problem(
                    spec.channel,
                    f"platform event {spec.entity} does not exist in this org",
                    refused=True,
                )
            )
        elif spec.key_field:
            key_checks.append(_check_key_field(spec, rest))
    elif kind is ChannelKind.PUSH_TOPIC:
        topic = spec.entity
        if topic not in metadata.push_topics:
            problems.append(
                Problem(spec.channel, f"PushTopic {topic} does not exist", refused=True)
            )
        elif not metadata.push_topics[topic]:
            problems.append(Problem(spec.channel, f"PushTopic {topic} is not active"))
    elif kind is ChannelKind.GENERIC and spec.channel not in metadata.streaming_channels:
        problems.append(Problem(spec.channel, "StreamingChannel does not exist", refused=True))
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
                refused=True,
            )
        ]
    if metadata.tooling_error is None and change_event not in metadata.selected_entities:
        return [
            Problem(
                spec.channel,
                f"change events are not enabled for {spec.entity}: select it in Setup > Change "
                "Data Capture (or add it to a channel); the subscription would succeed and "
                "deliver nothing",
                unselected=True,
                entity=spec.entity,
            )
        ]
    return []


def cdc_selected(spec: StreamSpec, metadata: OrgMetadata) -> bool | None:
    """Whether anything is selected for the change events a stream carries, as `discover`
    marks it.

    None for streams of other kinds, and when the Tooling API could not be read. `metadata`
    must have been read for the stream's kind (see `read_metadata`).
    """
    if spec.kind not in CDC_KINDS or metadata.tooling_error is not None:
        return None
    if spec.kind is ChannelKind.CHANGE_EVENTS:
        return spec.channel.removeprefix("/data/") in metadata.selected_entities
    if spec.kind is ChannelKind.ALL_CHANGE_EVENTS:
        return bool(metadata.selected.get("ChangeEvents"))
    return bool(metadata.selected.get(spec.entity))


def _check_channel(spec: StreamSpec, metadata: OrgMetadata) -> list[Problem]:
    """A custom channel is checked through its members: the entities selected on it.

    A channel carries the change events of its own members only (an entity selected on the
    standard channel or another custom channel is not on it), so a channel whose members
    were all removed subscribes and stays empty. One that does not exist is refused.
    """
    if metadata.tooling_error is not None or spec.entity in metadata.selected:
        return []
    if metadata.custom_channels is not None and spec.entity not in metadata.custom_channels:
        return [Problem(spec.channel, f"custom channel {spec.entity} does not exist", refused=True)]
    if metadata.custom_channels is None:
        return [
            Problem(spec.channel, f"custom channel {spec.entity} does not exist or has no members")
        ]
    return [
        Problem(
            spec.channel,
            f"no entity is selected on custom channel {spec.entity} (it has no members): the "
            "subscription would succeed and deliver nothing",
            unselected=True,
        )
    ]


async def _check_key_field(spec: StreamSpec, rest: RestClient) -> list[Problem]:
    described = await rest.describe(spec.entity)
    names = {str(f.get("name")) for f in described.get("fields", []) if isinstance(f, dict)}
    if spec.key_field not in names:
        return [
            Problem(
                spec.channel,
                f"key field {spec.key_field} is not a field of {spec.entity}",
                "warning" if spec.source == "metadata" else "error",
            )
        ]
    return []
