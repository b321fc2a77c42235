"""The connector manifest (package data) and its consistency check against the code.

The manifest is the seed's manifest (`manifest_version`, `id`, `name`, `taxonomy`, `runtime`,
`streams`, every field and value as the seed writes them) with sfstream's own fields under
the extension key `x-sfstream`. `Manifest` is its schema (`manifest_schema()` gives it as a
JSON Schema); `check_manifest` validates a document against it, then checks each claim
against the code: runners and their entry points, network patterns, discovery strategies,
cursor and key strategies, secrets backends, grant types, state and schema registry
backends, sinks, output messages, and the metric families the endpoint and the Lambda
handler emit.
"""

from __future__ import annotations

import importlib
import json
import types
import typing
from collections.abc import Callable
from importlib import resources
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from sfstream.bayeux.types import ReplayPolicy
from sfstream.engine.config import (
    DiscoveryConfig,
    SchemaRegistryConfig,
    SecretsConfig,
    SinkConfig,
    StateConfig,
    StreamConfig,
)
from sfstream.errors import ConfigError
from sfstream.protocol import GAP, RECORD, SCHEMA, STATE
from sfstream.streams import ChannelKind

MANIFEST_VERSION = 1.0
"""The seed's manifest format this manifest is written in."""
_DISCOVERY_MODES = {"discovery_by_config": "config", "discovery_by_metadata": "metadata"}
"""Manifest discovery strategy -> `discovery.mode` of the configuration."""
_TAXONOMY = ("origin", "source", "provider", "product", "method")
"""The taxonomy fields, in the order the connector id names them."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


# -- the seed's manifest -------------------------------------------------------------------------


class Taxonomy(_Strict):
    origin: str
    source: str
    provider: str
    product: str
    method: str


class Runtime(_Strict):
    supported_runners: list[str]
    network_patterns: list[str]


class StreamDefaults(_Strict):
    key_strategy: Literal["source_declared_or_config"]
    cursor_strategy: Literal["replay_id"]


class Streams(_Strict):
    strategy: Literal["discovery_by_config", "discovery_by_metadata"]
    """The default discovery strategy."""
    defaults: StreamDefaults


# -- sfstream's extension ------------------------------------------------------------------------


class Runner(_Strict):
    name: str
    """As the seed's `runtime.supported_runners` names it."""
    platform: str
    entrypoint: str
    """`module:attribute`, callable."""
    command: str | None = None
    """The `sfstream` command it runs, when it runs one."""


class NetworkPattern(_Strict):
    pattern: str
    """As the seed's `runtime.network_patterns` names it."""
    command: str
    """The `sfstream` command that serves it (`sfstream endpoints` lists the egress)."""


class Cursor(_Strict):
    field: str
    initial: list[str]
    on_invalid: list[str]


class Key(_Strict):
    change_events: str
    platform_events: str
    push_topics: str


class ExtensionStreams(_Strict):
    id_pattern: str
    discovery_modes: list[str]
    cursor: Cursor
    key: Key


class MetricsClaims(_Strict):
    endpoint: Literal["prometheus"]
    families: list[str]
    """Prometheus families of `/metrics`, as exposed (`..._total` for counters)."""
    lambda_: Literal["cloudwatch-emf"] = Field(alias="lambda")
    lambda_namespace: str
    lambda_metrics: list[str]
    """The metrics of the Lambda handler's EMF documents."""


class Observability(_Strict):
    logs: str
    metrics: MetricsClaims
    health: list[str]
    tracing: str


class Extension(_Strict):
    package: Literal["sfstream"]
    title: str
    description: str
    source: _Open
    auth: _Open
    streams: ExtensionStreams
    delivery: _Open
    schemas: _Open
    state: _Open
    sinks: list[str]
    output: _Open
    runners: list[Runner]
    network: list[NetworkPattern]
    observability: Observability


class Manifest(_Strict):
    manifest_version: float
    id: str
    name: str
    taxonomy: Taxonomy
    runtime: Runtime
    streams: Streams
    x_sfstream: Extension = Field(alias="x-sfstream")


def manifest_text() -> str:
    return resources.files("sfstream").joinpath("manifest.yaml").read_text(encoding="utf-8")


def manifest_schema() -> dict[str, Any]:
    """The manifest's JSON Schema (draft 2020-12), as `check_manifest` validates it."""
    schema = Manifest.model_json_schema(by_alias=True)
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def schema_text() -> str:
    """The JSON Schema shipped beside the manifest (`manifest.schema.json`), for tools that
    validate the manifest without sfstream; `check_manifest` keeps it equal to
    `manifest_schema()`."""
    return resources.files("sfstream").joinpath("manifest.schema.json").read_text("utf-8")


def _check_schema_file(manifest: Manifest) -> list[str]:
    try:
        shipped = json.loads(schema_text())
    except (OSError, ValueError) as exc:
        return [f"manifest.schema.json cannot be read: {exc}"]
    if shipped != manifest_schema():
        return ["manifest.schema.json differs from the manifest's model: regenerate it"]
    return []


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
    checks: list[Callable[[Manifest], list[str]]] = [
        _check_schema_file,
        _check_identity,
        _check_runners,
        _check_network,
        _check_streams,
        _check_configuration,
        _check_metrics,
    ]
    return [problem for check in checks for problem in check(manifest)]


def require_valid_manifest() -> None:
    problems = check_manifest()
    if problems:
        raise ConfigError("; ".join(problems))


# -- the checks ----------------------------------------------------------------------------------


def _check_identity(manifest: Manifest) -> list[str]:
    problems = []
    if manifest.manifest_version != MANIFEST_VERSION:
        problems.append(
            f"manifest_version {manifest.manifest_version} is not {MANIFEST_VERSION}, the "
            "format this sfstream writes"
        )
    taxonomy = manifest.taxonomy.model_dump()
    expected = "::".join(["conn", *(str(taxonomy[name]) for name in _TAXONOMY)])
    if manifest.id != expected:
        problems.append(f"id {manifest.id} differs from its taxonomy ({expected})")
    system = manifest.x_sfstream.source.model_dump().get("system")
    if manifest.taxonomy.provider != system:
        problems.append(f"taxonomy.provider differs from the source system {system}")
    return problems


def _check_runners(manifest: Manifest) -> list[str]:
    from sfstream.cli.main import COMMANDS

    runners = manifest.x_sfstream.runners
    problems = []
    names = [runner.name for runner in runners]
    if sorted(names) != sorted(set(manifest.runtime.supported_runners)):
        problems.append(
            f"runtime.supported_runners {manifest.runtime.supported_runners} differ from the "
            f"runners described under x-sfstream {names}"
        )
    for runner in runners:
        problem = _callable(runner.entrypoint)
        if problem is not None:
            problems.append(f"runner {runner.name}: {problem}")
        if runner.command is not None and _subcommand(runner.command) not in COMMANDS:
            problems.append(f"runner {runner.name}: `{runner.command}` is not a command")
    return problems


def _check_network(manifest: Manifest) -> list[str]:
    from sfstream.cli.main import COMMANDS

    network = manifest.x_sfstream.network
    problems = []
    patterns = [entry.pattern for entry in network]
    if sorted(patterns) != sorted(set(manifest.runtime.network_patterns)):
        problems.append(
            f"runtime.network_patterns {manifest.runtime.network_patterns} differ from the "
            f"patterns described under x-sfstream {patterns}"
        )
    for entry in network:
        name = _subcommand(entry.command)
        if name not in COMMANDS:
            problems.append(f"network pattern {entry.pattern}: `{entry.command}` is not a command")
            continue
        problem = _callable(COMMANDS[name][0])
        if problem is not None:
            problems.append(f"network pattern {entry.pattern}: {problem}")
    return problems


def _check_streams(manifest: Manifest) -> list[str]:
    streams = manifest.x_sfstream.streams
    problems = [
        f"discovery mode {mode} is not supported by the configuration"
        for mode in streams.discovery_modes
        if _DISCOVERY_MODES.get(mode) not in _choices(DiscoveryConfig, "mode")
    ]
    if manifest.streams.strategy not in streams.discovery_modes:
        problems.append("streams.strategy is not among x-sfstream.streams.discovery_modes")
    if DiscoveryConfig().mode != _DISCOVERY_MODES[manifest.streams.strategy]:
        problems.append("streams.strategy differs from the configuration's default discovery")
    if set(streams.cursor.on_invalid) != {p.value for p in ReplayPolicy}:
        problems.append("cursor.on_invalid differs from the replay policies in the code")
    return problems


def _check_configuration(manifest: Manifest) -> list[str]:
    """The claims about what a configuration may name."""
    from sfstream.auth.grants import GRANT_TYPES

    extension = manifest.x_sfstream
    problems = []
    if set(extension.sinks) != _choices(SinkConfig, "type"):
        problems.append(
            f"sinks {extension.sinks} differ from the code's {sorted(_choices(SinkConfig, 'type'))}"
        )
    backends = extension.state.model_dump().get("backends", [])
    if set(backends) != _choices(StateConfig, "backend"):
        problems.append(
            f"state backends {backends} differ from the code's "
            f"{sorted(_choices(StateConfig, 'backend'))}"
        )
    if extension.state.model_dump().get("default") != StateConfig().backend:
        problems.append("state.default differs from the configuration's default backend")
    secrets = extension.auth.model_dump().get("secrets", [])
    if set(secrets) != _choices(SecretsConfig, "backend"):
        problems.append(f"auth.secrets {secrets} differ from the code's secrets backends")
    grants = extension.auth.model_dump().get("grant_types", [])
    if set(grants) != set(GRANT_TYPES):
        problems.append(f"auth.grant_types {grants} differ from the code's grant types")
    messages = extension.output.model_dump().get("messages", [])
    if set(messages) != {RECORD, STATE, SCHEMA, GAP}:
        problems.append(f"output messages {messages} differ from the code's")
    policies = extension.schemas.model_dump().get("on_breaking_change", [])
    if set(policies) != _choices(StreamConfig, "on_breaking_change"):
        problems.append("schemas.on_breaking_change differs from the configuration's policies")
    registries = extension.schemas.model_dump().get("registry", [])
    if set(registries) != _choices(SchemaRegistryConfig, "backend"):
        problems.append("schemas.registry differs from the code's registry backends")
    channels = extension.source.model_dump().get("channels", [])
    if set(channels) != {k.value for k in ChannelKind}:
        problems.append("source.channels differ from the channel kinds in the code")
    return problems


def _check_metrics(manifest: Manifest) -> list[str]:
    """The Prometheus families (with the `metrics` extra installed: the endpoint's
    collectors are what is compared) and the Lambda handler's EMF metrics."""
    from sfstream.observability import emf
    from sfstream.observability.telemetry import Telemetry

    claims = manifest.x_sfstream.observability.metrics
    problems = []
    exported = _prometheus_families()
    if exported is not None and set(claims.families) != exported:
        problems.append(
            f"metric families {sorted(set(claims.families) ^ exported)} are claimed but not "
            "exported, or exported but not claimed"
        )
    # A stream that has committed a checkpoint and written a record: every metric appears.
    stream: Any = types.SimpleNamespace(
        received=1, written=1, deduplicated=0, checkpoint=1, last_written_time=0.0
    )
    written = {
        name
        for _, figures in emf.documents(Telemetry(), {"stream": stream}, wall_clock=lambda: 1.0)
        for name, _, _ in figures
    }
    if set(claims.lambda_metrics) != written:
        problems.append(
            f"lambda metrics {sorted(set(claims.lambda_metrics) ^ written)} are claimed but "
            "not written, or written but not claimed"
        )
    if claims.lambda_namespace != emf.NAMESPACE:
        problems.append(f"lambda_namespace differs from the code's {emf.NAMESPACE}")
    return problems


def _prometheus_families() -> set[str] | None:
    """The sfstream families `/metrics` exposes; None without the `metrics` extra."""
    try:
        from sfstream.observability.metrics import Metrics
    except ImportError:
        return None
    from sfstream.observability.telemetry import Telemetry

    telemetry = Telemetry()
    telemetry.leased = True  # a run with leases: their families too
    found = set()
    for family in Metrics(telemetry, lambda: None).registry.collect():
        if family.name.startswith("sfstream_"):
            suffix = "_total" if family.type == "counter" else ""
            found.add(family.name + suffix)
    return found


def _callable(entrypoint: str) -> str | None:
    """Why `module:attribute` is not a callable of the code, or None."""
    module_name, _, attribute = entrypoint.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        return f"cannot import {module_name}: {exc}"
    if not callable(getattr(module, attribute, None)):
        return f"{entrypoint} is not callable"
    return None


def _subcommand(command: str) -> str:
    """`run` of `sfstream run --config <file>`."""
    words = command.split()
    return words[1] if len(words) > 1 and words[0] == "sfstream" else ""
