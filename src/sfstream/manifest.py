"""The connector manifest (package data) and its consistency check against the code."""

from __future__ import annotations

import importlib
import typing
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from sfstream.bayeux.types import ReplayPolicy
from sfstream.engine.config import (
    DiscoveryConfig,
    SchemaRegistryConfig,
    SinkConfig,
    StateConfig,
    StreamConfig,
)
from sfstream.errors import ConfigError
from sfstream.protocol import GAP, RECORD, SCHEMA, STATE
from sfstream.streams import ChannelKind


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


class Runner(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    platform: str
    entrypoint: str
    command: str | None = None


class Cursor(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: Literal["replay_id"]
    field: str
    initial: list[str]
    on_invalid: list[str]


class Key(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    strategy: Literal["source_declared_or_config"]
    change_events: str
    platform_events: str
    push_topics: str


class Streams(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id_pattern: str
    discovery: Literal["discovery_by_config", "discovery_by_metadata"]
    discovery_modes: list[str]
    cursor: Cursor
    key: Key


class Manifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Literal["sfstream"]
    title: str
    description: str
    source: _Open
    auth: _Open
    streams: Streams
    delivery: _Open
    schemas: _Open
    state: _Open
    sinks: list[str]
    output: _Open
    runners: list[Runner]
    observability: _Open


def manifest_text() -> str:
    return resources.files("sfstream").joinpath("manifest.yaml").read_text(encoding="utf-8")


def _choices(model: type[BaseModel], field: str) -> set[str]:
    annotation = model.model_fields[field].annotation
    return set(typing.get_args(annotation))


def check_manifest(text: str | None = None) -> list[str]:
    """Problems with the manifest: schema errors, then claims the code does not back."""
    try:
        raw: Any = yaml.safe_load(text if text is not None else manifest_text())
        manifest = Manifest.model_validate(raw)
    except (yaml.YAMLError, ValidationError) as exc:
        return [f"manifest is not valid: {exc}"]
    problems = []
    for runner in manifest.runners:
        module_name, _, attribute = runner.entrypoint.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"runner {runner.name}: cannot import {module_name}: {exc}")
            continue
        if not callable(getattr(module, attribute, None)):
            problems.append(f"runner {runner.name}: {runner.entrypoint} is not callable")
    modes = {"discovery_by_config": "config", "discovery_by_metadata": "metadata"}
    supported = _choices(DiscoveryConfig, "mode")
    problems.extend(
        f"discovery mode {mode} is not supported by the configuration"
        for mode in manifest.streams.discovery_modes
        if modes.get(mode) not in supported
    )
    if manifest.streams.discovery not in manifest.streams.discovery_modes:
        problems.append("the default discovery is not among discovery_modes")
    if DiscoveryConfig().mode != modes[manifest.streams.discovery]:
        problems.append("the default discovery differs from the configuration's default")
    if set(manifest.streams.cursor.on_invalid) != {p.value for p in ReplayPolicy}:
        problems.append("cursor.on_invalid differs from the replay policies in the code")
    if set(manifest.sinks) != _choices(SinkConfig, "type"):
        problems.append(
            f"sinks {manifest.sinks} differ from the code's {sorted(_choices(SinkConfig, 'type'))}"
        )
    backends = manifest.state.model_dump().get("backends", [])
    if set(backends) != _choices(StateConfig, "backend"):
        problems.append(f"state backends {backends} differ from the code's")
    messages = manifest.output.model_dump().get("messages", [])
    if set(messages) != {RECORD, STATE, SCHEMA, GAP}:
        problems.append(f"output messages {messages} differ from the code's")
    policies = manifest.schemas.model_dump().get("on_breaking_change", [])
    if set(policies) != _choices(StreamConfig, "on_breaking_change"):
        problems.append("schemas.on_breaking_change differs from the configuration's policies")
    registries = manifest.schemas.model_dump().get("registry", [])
    if set(registries) != _choices(SchemaRegistryConfig, "backend"):
        problems.append("schemas.registry differs from the code's registry backends")
    channels = manifest.source.model_dump().get("channels", [])
    if set(channels) != {k.value for k in ChannelKind}:
        problems.append("source.channels differ from the channel kinds in the code")
    return problems


def require_valid_manifest() -> None:
    problems = check_manifest()
    if problems:
        raise ConfigError("; ".join(problems))
