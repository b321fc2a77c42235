"""Configuration: one YAML file, validated at the edge into frozen values.

Load order: the YAML file, then `SFSTREAM_<SECTION>__<FIELD>` environment variables over it
(`SFSTREAM_SINK__PATH=/data/out.jsonl`), then `${secret:NAME}` references resolved through the
configured secrets store, then validation. Every problem is reported at once, each with the
path the user wrote (`streams.2.channel: ...`) or the environment variable that set it
(`SFSTREAM_BATCH__MAX_RECORDS: ...`), in the user's words, as a `ConfigError`.

The YAML is read with a bounded loader: a duplicate key is an error (naming both lines), and a
document whose aliases expand it past `MAX_DOCUMENT_VALUES` values (a "billion laughs") or
that refers to itself is refused before anything walks it.

The loaded `Config` remembers which secret each resolved field came from
(`config.secret_reference("salesforce.refresh_token") == "SF_REFRESH_TOKEN"`), so that a value
that changes while running (a rotated refresh token) can be written back under its name. It
also carries the warnings found while loading (`config.warnings`: a secret written inline),
which the caller logs once logging is set up (`log_warnings`).
"""

from __future__ import annotations

import asyncio
import os
import re
import types
import urllib.parse
from collections.abc import Callable, Mapping, Set
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal, Union, get_args, get_origin

import annotated_types
import msgspec
import structlog
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from sfstream.auth.grants import GrantType, grant_needs_message, missing_for_grant
from sfstream.errors import ConfigError, SecretError
from sfstream.secrets import EnvSecretsStore, FileSecretsStore, SecretsStore
from sfstream.streams import check_stream_id, parse_channel

ENV_PREFIX: Final = "SFSTREAM_"
MAX_DOCUMENT_VALUES: Final = 100_000
"""The most values (scalars, lists and mappings, keys included) a configuration document may
hold once its aliases are expanded; a real configuration holds a few hundred."""

_SECRET_REF: Final = re.compile(r"^\$\{secret:([A-Za-z0-9_.\-/]+)\}$")
_LOOKS_LIKE_REF: Final = re.compile(r"(?i)\$?\s*\{+\s*secrets?\s*(?::|\}|$)")
"""A value that was meant as `${secret:NAME}` (`${secrets:X}`, `${secret:}`, `{secret:X}`,
`${secret:X` unclosed, or with text around it)."""
_log = structlog.get_logger("sfstream.config")

Replay = Literal["latest", "earliest"] | Annotated[int, Field(ge=0)]
InvalidReplay = Literal["fail", "earliest", "latest"]
BreakingChange = Literal["warn", "fail"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_booleans(cls, value: Any) -> Any:
        # No field is a boolean; YAML reads `yes`, `on` and `true` as one, which pydantic
        # would take as the integer 1 (a replayId, a batch size).
        if isinstance(value, bool):
            raise PydanticCustomError("bool_not_allowed", "a boolean is not allowed here")
        return value


class SalesforceConfig(_Frozen):
    """How to reach and log in to the org."""

    login_url: str = "https://login.salesforce.com"
    client_id: str
    client_secret: SecretStr | None = None
    grant_type: GrantType = "refresh_token"
    refresh_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    private_key: SecretStr | None = None
    """jwt_bearer: the PEM private key (RSA) whose certificate the connected app holds."""
    api_version: str = Field(default="62.0", pattern=r"^\d{2,3}\.\d$")

    @field_validator("login_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise PydanticCustomError("url_scheme", "not an https:// or http:// URL")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _grant(self, info: ValidationInfo) -> SalesforceConfig:
        # Loaded offline, a field whose secret was left unresolved counts as given.
        unresolved: frozenset[str] = (info.context or {}).get("unresolved", frozenset())
        if "grant_type" in unresolved:
            return self
        missing = missing_for_grant(
            self.grant_type,
            {
                "client_secret": self.client_secret,
                "refresh_token": self.refresh_token,
                "username": self.username,
                "password": self.password,
                "private_key": self.private_key,
            },
        )
        missing = tuple(name for name in missing if name not in unresolved)
        if missing:
            raise ValueError(grant_needs_message(self.grant_type, missing))
        return self


class SecretsConfig(_Frozen):
    """Where `${secret:NAME}` references are looked up."""

    backend: Literal["env", "file", "aws"] = "env"
    file: Path | None = None
    aws_secret_id: str | None = None
    aws_region: str | None = None
    aws_endpoint_url: str | None = None
    """Another Secrets Manager endpoint (a VPC endpoint, LocalStack); unset: boto3's, which
    honours `AWS_ENDPOINT_URL`."""
    aws_cache_ttl_s: float = Field(default=300.0, ge=0)
    """How long the secret read is kept in memory before it is read again."""

    @field_validator("aws_endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _endpoint_url(value)

    @model_validator(mode="after")
    def _complete(self) -> SecretsConfig:
        if self.backend == "file" and self.file is None:
            raise ValueError("the file backend needs `file`")
        if self.backend == "aws" and self.aws_secret_id is None:
            raise ValueError("the aws backend needs `aws_secret_id`")
        return self

    def open_store(self, base_dir: Path | None = None) -> SecretsStore:
        """The configured store; a relative `file` is taken from `base_dir` (the config
        file's directory; `load_config` has already anchored it in a loaded `Config`)."""
        if self.backend == "file":
            assert self.file is not None  # checked above
            path = self.file
            if base_dir is not None and not path.is_absolute():
                path = base_dir / path
            return FileSecretsStore(path)
        if self.backend == "aws":
            from sfstream.secrets.aws import AwsSecretsManagerStore

            assert self.aws_secret_id is not None  # checked above
            return AwsSecretsManagerStore.shared(
                self.aws_secret_id,
                region=self.aws_region,
                endpoint_url=self.aws_endpoint_url,
                cache_ttl_s=self.aws_cache_ttl_s,
            )
        return EnvSecretsStore()


def _endpoint_url(value: str | None) -> str | None:
    if value is not None and not value.startswith(("https://", "http://")):
        raise PydanticCustomError("url_scheme", "not an https:// or http:// URL")
    return value


class StreamConfig(_Frozen):
    """One channel to stream."""

    channel: str
    id: str | None = None
    """Overrides the derived stream id (`sf.event.account_changes`)."""
    key_field: str | None = None
    """Platform events: the payload field that keys records (default: EventUuid). Ignored,
    with a warning, on change-event, PushTopic and generic streams (their key is fixed)."""
    initial_replay: Replay = "latest"
    """Where to start when the stream has no checkpoint."""
    on_invalid_replay: InvalidReplay = "fail"
    """When Salesforce rejects the checkpoint as invalid or expired."""
    on_breaking_change: BreakingChange = "warn"
    """When the stream's schema changes in a way that breaks readers: log it, or stop."""
    on_gap_event: Literal["heal", "flag"] = "heal"
    """Change events: when Salesforce sends a gap event (`GAP_UPDATE`, `GAP_OVERFLOW`, ...)
    instead of a change, read the named records (or the window's) back through REST and emit
    them flagged `meta.healed` (heal), or only pass the gap event on, flagged `meta.gap`
    (flag)."""
    max_silence_s: float | None = Field(default=None, gt=0)
    """For a stream known to be busy: when it receives nothing for this long, it is
    resubscribed from its checkpoint and reported (`stream_silent`, and
    `sfstream_reconnects_total{reason="silence"}`). Unset: a quiet stream is normal."""

    @field_validator("channel")
    @classmethod
    def _channel(cls, value: str) -> str:
        try:
            parse_channel(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("id")
    @classmethod
    def _id(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            return check_stream_id(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from exc


class DiscoveryConfig(_Frozen):
    """Where streams come from: the `streams` list, or the org's metadata."""

    mode: Literal["config", "metadata"] = "config"
    include: tuple[str, ...] = ("*",)
    """Glob patterns over channel names (`/data/*`, `/event/Order_*`)."""
    exclude: tuple[str, ...] = ()
    initial_replay: Replay = "latest"
    on_invalid_replay: InvalidReplay = "fail"
    on_breaking_change: BreakingChange = "warn"


class StateConfig(_Frozen):
    """Where checkpoints are kept: an SQLite file, a PostgreSQL table or a DynamoDB table."""

    backend: Literal["sqlite", "postgres", "dynamodb"] = "sqlite"
    path: Path = Path(".sfstream/state.db")
    dsn: SecretStr | None = None
    table: str | None = None
    """The DynamoDB table (required), or the PostgreSQL table (default
    `sfstream_checkpoints`)."""
    region: str | None = None
    """The DynamoDB table's AWS region; unset: the AWS chain's (`AWS_REGION`)."""
    endpoint_url: str | None = None
    """Another DynamoDB endpoint (a VPC endpoint, LocalStack); unset: boto3's, which honours
    `AWS_ENDPOINT_URL`."""
    coordination: Literal["auto", "leases", "lock"] = "auto"
    """How workers sharing this state store divide the streams. `leases`: each stream is
    consumed by one worker at a time, under a lease with a fencing token, and several
    `sfstream run` share the streams (see docs/operations.md). `lock`: one run owns its
    streams for its lifetime and a second one is refused. `auto`: leases for the shared
    stores (postgres, dynamodb), the lock for sqlite (set `leases` to run several processes
    of one host on one file)."""
    lease_ttl_s: float = Field(default=30.0, ge=3.0, le=3600.0)
    """How long a lease lasts without renewal: how soon a stream of a worker that died
    moves to another one."""
    worker_id: str | None = Field(default=None, min_length=1, max_length=200)
    """This worker's name in the leases; unset: the ECS task's ARN on ECS, else
    `<host>:<pid>`. Two live workers must not share one."""

    @property
    def leased(self) -> bool:
        """Whether a run takes leases (see `coordination`)."""
        if self.coordination == "auto":
            return self.backend != "sqlite"
        return self.coordination == "leases"

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _endpoint_url(value)

    @model_validator(mode="after")
    def _complete(self) -> StateConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("the postgres backend needs `dsn`")
        if self.backend == "dynamodb":
            if self.table is None:
                raise ValueError("the dynamodb backend needs `table`")
            if not re.fullmatch(r"[A-Za-z0-9_.\-]{3,255}", self.table):
                raise ValueError(
                    f"the DynamoDB table name {self.table!r} must have 3 to 255 letters, "
                    "digits, '_', '-' or '.'"
                )
        return self


RegistryBackend = Literal["state", "sqlite", "postgres", "dynamodb"]


class SchemaRegistryConfig(_Frozen):
    """Where schema versions are kept: with the state by default (an SQLite file beside the
    state's, its PostgreSQL database or its DynamoDB table), or in an SQLite file of their
    own (`backend: sqlite` with `path`)."""

    backend: RegistryBackend = "state"
    path: Path | None = None


SinkType = Literal["stdout", "file", "kafka", "postgres", "s3"]
_SINK_FIELDS: Final[dict[str, tuple[str, ...]]] = {
    "stdout": (),
    "file": ("path",),
    "kafka": ("bootstrap_servers", "topic", "control_topic", "producer"),
    "postgres": ("dsn", "table"),
    "s3": ("bucket", "prefix", "region", "endpoint_url", "compression"),
}
"""The fields each sink type takes (besides `type`)."""


class SinkConfig(_Frozen):
    """Where records go: stdout, a file, Kafka, a PostgreSQL table or S3 objects (see
    docs/sinks.md)."""

    type: SinkType = "stdout"
    path: Path | None = None
    """file: the JSON lines file."""
    bootstrap_servers: str | None = Field(default=None, min_length=1)
    """kafka: `host:port[,host:port...]`."""
    topic: str = Field(default="{stream}", min_length=1, max_length=249)
    """kafka: the records' topic, a template of `{stream}` (the stream id)."""
    control_topic: str = Field(default="sfstream.control", min_length=1, max_length=249)
    """kafka: the topic of the SCHEMA, STATE and GAP messages."""
    producer: tuple[tuple[str, SecretStr | bool | int | float], ...] = ()
    """kafka: librdkafka properties (`security.protocol`, `sasl.*`, `ssl.*`, ...), on top
    of the sink's own (`enable.idempotence`, `acks`): a mapping in the file, kept as
    (name, value) pairs (the configuration is immutable)."""
    dsn: SecretStr | None = None
    """postgres: the database; unset, the PostgreSQL state store's."""
    table: str = Field(default="sfstream_records", min_length=1)
    """postgres: the records' table, `[schema.]name`."""
    bucket: str | None = Field(default=None, min_length=3, max_length=63)
    """s3: the bucket."""
    prefix: str = "sfstream"
    """s3: the key prefix (`{prefix}/{stream}/dt=YYYY-MM-DD/...`)."""
    region: str | None = None
    """s3: the bucket's region; unset, the AWS chain's."""
    endpoint_url: str | None = None
    """s3: another S3 endpoint; unset, boto3's (which honours `AWS_ENDPOINT_URL`)."""
    compression: Literal["none", "gzip"] = "gzip"
    """s3: the objects' compression (`.jsonl.gz` or `.jsonl`)."""

    @field_validator("endpoint_url")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        return _endpoint_url(value)

    @field_validator("producer", mode="before")
    @classmethod
    def _producer(cls, value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple((str(name), item) for name, item in value.items())
        raise PydanticCustomError("producer_mapping", "a mapping of librdkafka properties")

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        if not re.fullmatch(
            r"(?:[A-Za-z_][A-Za-z0-9_]{0,62}\.)?[A-Za-z_][A-Za-z0-9_]{0,62}", value
        ):
            raise ValueError(
                f"the table name {value!r} must be [schema.]name of letters, digits and _"
            )
        return value

    @field_validator("topic", "control_topic")
    @classmethod
    def _topic(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._\-{}]+", value):
            raise ValueError(
                f"the topic {value!r} may hold letters, digits, '.', '_', '-' and {{stream}}"
            )
        return value

    @model_validator(mode="after")
    def _complete(self) -> SinkConfig:
        if self.type == "file" and self.path is None:
            raise ValueError("the file sink needs `path`")
        if self.type == "kafka" and self.bootstrap_servers is None:
            raise ValueError("the kafka sink needs `bootstrap_servers`")
        if self.type == "s3" and self.bucket is None:
            raise ValueError("the s3 sink needs `bucket`")
        given = self.model_fields_set - {"type"}
        foreign = sorted(given - set(_SINK_FIELDS[self.type]))
        if foreign:
            raise ValueError(
                f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not a setting "
                f"of the {self.type} sink"
            )
        return self


class BatchConfig(_Frozen):
    max_records: int = Field(default=2000, ge=1, le=100_000)
    max_wait_ms: int = Field(default=0, ge=0, le=600_000)
    """How long a record may wait for more to join its batch. 0: write as soon as nothing
    more is waiting (batches still grow under load, while the previous write runs)."""
    max_inflight: int = Field(default=2, ge=1, le=64)
    """Batches waiting for the sink before the receive loop slows down."""


class RuntimeConfig(_Frozen):
    max_pending_events: int = Field(default=10_000, ge=10)
    limits_interval_s: float = Field(default=300.0, ge=10.0, le=86400.0)
    """How often the org's limits (`/limits`: the event delivery allocations) are read."""
    summary_interval_s: float = Field(default=60.0, gt=0)
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    startup_timeout_s: float | None = Field(default=None, gt=0)
    """How long start-up may retry retryable failures (Salesforce, the state store or the
    sink unreachable) before the run gives up with exit 1; no limit when unset."""
    connect_margin_s: float = Field(default=15.0, gt=0)
    """The stall watchdog: a `/meta/connect` with no reply within the advised timeout
    (110 s from Salesforce) plus this long is abandoned, and the session starts over
    (`sfstream_reconnects_total{reason="stall"}`)."""
    on_subscription_lost: Literal["fail", "continue"] = "fail"
    """End the run (exit 1) when a subscription fails for good, or keep the others going."""
    disk_io: Literal["inline", "thread"] = "inline"
    """Where the file sink's write + fsync and the SQLite checkpoint commit run: on the event
    loop (no thread hand-off: the lowest latency) or in a worker thread (the loop goes on
    receiving while the disk works: for slow or network file systems)."""


class ObservabilityConfig(_Frozen):
    """Metrics and health endpoints of `sfstream run`."""

    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Serve `/metrics` (Prometheus), `/healthz` and `/readyz` on this port (0: any free
    port, logged). Unset: no endpoint."""
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a container's endpoint is reached from outside
    connect_grace_s: float = Field(default=30.0, gt=0)
    """`/healthz` fails when no `/meta/connect` round trip completed within the advised
    timeout plus this long."""


class LoggingConfig(_Frozen):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class Config(_Frozen):
    """A whole connector configuration."""

    salesforce: SalesforceConfig
    secrets: SecretsConfig = SecretsConfig()
    streams: tuple[StreamConfig, ...] = ()
    discovery: DiscoveryConfig = DiscoveryConfig()
    state: StateConfig = StateConfig()
    schema_registry: SchemaRegistryConfig = SchemaRegistryConfig()
    sink: SinkConfig = SinkConfig()
    batch: BatchConfig = BatchConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    observability: ObservabilityConfig = ObservabilityConfig()
    logging: LoggingConfig = LoggingConfig()

    _secret_refs: Mapping[str, str] = PrivateAttr(default_factory=lambda: MappingProxyType({}))
    _unresolved: Mapping[str, str] = PrivateAttr(default_factory=lambda: MappingProxyType({}))
    _warnings: tuple[ConfigWarning, ...] = PrivateAttr(default=())
    _file: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _sink_database(self) -> Config:
        if self.sink.type == "postgres" and self.sink.dsn is None and self.state.dsn is None:
            raise ValueError(
                "sink: the postgres sink needs `dsn` (or a postgres state store, whose "
                "database it then shares)"
            )
        return self

    @property
    def sink_dsn(self) -> str | None:
        """The PostgreSQL sink's database: its own `dsn`, else the state store's."""
        dsn = self.sink.dsn or self.state.dsn
        return None if dsn is None else dsn.get_secret_value()

    @model_validator(mode="after")
    def _registry(self) -> Config:
        registry = self.schema_registry.backend
        state = self.state.backend
        path = self.schema_registry.path
        if registry in ("postgres", "dynamodb") and registry != state:
            raise ValueError(
                f"schema_registry.backend: {registry} keeps schema versions with the state, "
                f"which is not in {registry} (state.backend: {state}); set it to state or "
                "sqlite"
            )
        if state == "sqlite":
            return self
        if registry == "sqlite" and path is None:
            raise ValueError(
                f"schema_registry: the sqlite backend under a {state} state needs `path` "
                "(remove both to keep schema versions with the state)"
            )
        if registry != "sqlite" and path is not None:
            raise ValueError(
                f"schema_registry.path: with state.backend: {state} the schema registry lives "
                f"with the state, not in a local file (which a replaced task or a Lambda "
                "function loses); remove `path`, or set schema_registry.backend: sqlite to "
                "keep it in that file"
            )
        return self

    @model_validator(mode="after")
    def _streams(self) -> Config:
        if self.discovery.mode == "config" and not self.streams:
            raise ValueError(
                "list at least one stream under `streams`, or set discovery.mode: metadata"
            )
        channels = [s.channel for s in self.streams]
        duplicated = sorted({c for c in channels if channels.count(c) > 1})
        if duplicated:
            raise ValueError(f"channels listed twice in `streams`: {', '.join(duplicated)}")
        return self

    def secret_values(self) -> list[str]:
        """Every secret in the configuration, for log redaction."""
        found = [
            self.salesforce.client_secret,
            self.salesforce.refresh_token,
            self.salesforce.password,
            self.salesforce.private_key,
            self.state.dsn,
            self.sink.dsn,
            *(value for _, value in self.sink.producer if isinstance(value, SecretStr)),
        ]
        return [s.get_secret_value() for s in found if s is not None]

    @property
    def secret_references(self) -> Mapping[str, str]:
        """Field path -> the secret its value was read from, for every `${secret:NAME}`
        resolved by `load_config` (`{"salesforce.refresh_token": "SF_REFRESH_TOKEN"}`)."""
        return self._secret_refs

    def secret_reference(self, path: str) -> str | None:
        """The secret the field at `path` (`salesforce.refresh_token`) was read from; None
        when its value was written inline or the configuration was not loaded from a file."""
        return self._secret_refs.get(path)

    @property
    def unresolved_secrets(self) -> Mapping[str, str]:
        """Field path -> secret name of each reference `load_config(..., offline=True)` left
        unresolved (those fields are unset); empty when everything was resolved."""
        return self._unresolved

    @property
    def warnings(self) -> tuple[ConfigWarning, ...]:
        """What `load_config` found worth a warning (a secret written inline), for the caller
        to log once logging is set up (`log_warnings`)."""
        return self._warnings


class ConfigWarning(msgspec.Struct, frozen=True):
    """Something in a configuration that works but should change. Names a field, never
    shows its value."""

    field: str
    message: str
    event: str = "inline_secret"

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


_LOGGED: Final[set[tuple[str | None, str, str]]] = set()


def log_warnings(config: Config) -> None:
    """Log `config.warnings` (each once per process and configuration file), after logging
    has been set up: a warning logged before would go to stdout, which is for data."""
    for warning in config.warnings:
        key = (config._file, warning.event, warning.field)
        if key in _LOGGED:
            continue
        _LOGGED.add(key)
        _log.warning(warning.event, field=warning.field, advice=warning.message)


# -- reading YAML ------------------------------------------------------------------------------

# PyYAML raises more than YAMLError on hostile input: ValueError for scalars it cannot convert
# (an unquoted `2024-02-30`, an int past Python's 4,300-digit limit), RecursionError for
# deeply nested collections.
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError)
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"

_Loc = tuple[str | int, ...]
"""A place in the document: mapping keys and list indexes (`("streams", 0, "channel")`)."""


class _UnsafeDocumentError(Exception):
    """A document that must not be walked: too large once its aliases are expanded, or one
    that contains itself."""


class _Duplicate(msgspec.Struct, frozen=True):
    path: _Loc
    lines: tuple[int, ...]

    def __str__(self) -> str:
        if len(set(self.lines)) == 1:
            times = "twice" if len(self.lines) == 2 else f"{len(self.lines)} times"
            where = f"{times} on line {self.lines[0]}"
        else:
            *first, last = (str(line) for line in self.lines)
            where = f"lines {', '.join(first)} and {last}"
        return f"{_dotted(self.path)}: duplicate key ({where})"


def _parse_yaml(text: str) -> tuple[Any, list[_Duplicate]]:
    """The document in `text` and its duplicate keys.

    The node graph is checked before it is built into Python values: an alias shares its
    anchor's node, so a few lines can stand for 10^9 values; they are counted (each shared
    node once) and refused past `MAX_DOCUMENT_VALUES`, as is a node that contains itself.

    Raises:
        _UnsafeDocumentError: as above.
        yaml.YAMLError, ValueError, RecursionError: PyYAML's own failures.
    """
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None, []
        duplicates = _check_nodes(node)
        return loader.construct_document(node), duplicates
    finally:
        loader.dispose()


def _check_nodes(root: yaml.Node) -> list[_Duplicate]:
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    duplicates: list[_Duplicate] = []
    shared = False

    def visit(node: yaml.Node, path: _Loc) -> int:
        nonlocal shared
        key = id(node)
        if key in sizes:
            shared = True
            return sizes[key]
        if key in open_nodes:
            raise _UnsafeDocumentError(
                f"{_dotted(path) or 'the document'}: an alias refers to itself (its anchor "
                f"encloses it, line {node.start_mark.line + 1})"
            )
        open_nodes.add(key)
        total = 1
        if isinstance(node, yaml.SequenceNode):
            for index, child in enumerate(node.value):
                total += visit(child, (*path, index))
                _bound(total, shared)
        elif isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], list[int]] = {}
            for key_node, value_node in node.value:
                total += visit(key_node, path)
                name: str | int = "?"
                if isinstance(key_node, yaml.ScalarNode):
                    name = key_node.value
                    if key_node.tag != _MERGE_TAG:
                        lines.setdefault((key_node.tag, key_node.value), []).append(
                            key_node.start_mark.line + 1
                        )
                total += visit(value_node, (*path, name))
                _bound(total, shared)
            duplicates.extend(
                _Duplicate((*path, value), tuple(found))
                for (_, value), found in lines.items()
                if len(found) > 1
            )
        open_nodes.discard(key)
        sizes[key] = total
        return total

    visit(root, ())
    return duplicates


def _bound(total: int, shared: bool) -> None:
    if total <= MAX_DOCUMENT_VALUES:
        return
    if shared:
        raise _UnsafeDocumentError(
            f"the document expands to more than {MAX_DOCUMENT_VALUES} values through its "
            "aliases (*name); a configuration needs far fewer"
        )
    raise _UnsafeDocumentError(f"the document holds more than {MAX_DOCUMENT_VALUES} values")


# -- environment overrides ---------------------------------------------------------------------


class _Sources(msgspec.Struct):
    """Where each part of the merged document came from: the file, or a variable."""

    variables: dict[tuple[str, ...], str]
    """Field path -> the `SFSTREAM_*` variable that set it."""

    def variable(self, path: _Loc) -> str | None:
        """The variable that set `path` or a place that encloses it."""
        parts = tuple(str(part) for part in path)
        for length in range(len(parts), 0, -1):
            name = self.variables.get(parts[:length])
            if name is not None:
                return name
        return None

    def where(self, path: _Loc) -> str:
        """`path` as the user wrote it: the variable that set it, or its dotted path."""
        return self.variable(path) or _dotted(path) or "config"


def _overlay_env(
    raw: dict[str, Any], environ: Mapping[str, str], problems: list[_Problem]
) -> dict[tuple[str, ...], str]:
    """Apply the `SFSTREAM_<SECTION>__<FIELD>` variables to `raw`; field path -> variable of
    each one applied. A variable that names no field, or one that cannot be set this way,
    is a problem (other `SFSTREAM_*` names without `__`, such as SFSTREAM_CONFIG, belong to
    the commands and are left alone)."""
    applied: dict[tuple[str, ...], str] = {}
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX):
            continue
        target = _env_target(name)
        if target is None:
            continue
        if isinstance(target, str):
            problems.append(_Problem(f"{name}: {target}", from_env=True))
            continue
        try:
            value = _env_value(environ[name])
        except ValueError as exc:
            # The value itself may be a secret: only the variable is named.
            problems.append(_Problem(f"{name}: {exc}", from_env=True))
            continue
        into: Any = raw
        for depth, part in enumerate(target[:-1]):
            existing = into.get(part)
            if existing is None:
                existing = {}
                into[part] = existing
            if not isinstance(existing, dict):
                problems.append(
                    _Problem(
                        f"{name}: cannot be applied: {_dotted(target[: depth + 1])} in the "
                        "file is not a mapping",
                        from_env=True,
                    )
                )
                break
            into = existing
        else:
            into[target[-1]] = value
            applied[target] = name
    return applied


def _env_target(name: str) -> tuple[str, ...] | str | None:
    """The field path `name` sets; a problem (str) when it cannot set one; None when the
    variable is not a configuration override."""
    rest = name[len(ENV_PREFIX) :]
    sections = Config.model_fields
    if "__" not in rest:
        section = rest.lower()
        if section not in sections:
            return None  # SFSTREAM_CONFIG, SFSTREAM_RUN_ID, tail's SFSTREAM_CLIENT_ID, ...
        if _list_item_model(sections[section]) is not None:
            return _NO_LIST_FROM_ENV.format(name=section)
        return (
            f"a whole section cannot be set from one variable; set its fields, as {name}__<FIELD>"
        )
    parts = tuple(rest.lower().split("__"))
    if not all(parts):
        return f"not a setting; name one as {ENV_PREFIX}<SECTION>__<FIELD>"
    model: type[BaseModel] = Config
    for depth, part in enumerate(parts):
        here = parts[: depth + 1]
        if part not in model.model_fields:
            if model is Config:
                return f"unknown section {part}{_suggestion(part, model)}"
            return f"unknown field {_dotted(here)}{_suggestion(part, model)}"
        field = model.model_fields[part]
        if _list_item_model(field) is not None:
            return _NO_LIST_FROM_ENV.format(name=_dotted(here))
        if depth == len(parts) - 1:
            return parts
        inner = _unwrap_optional(field.annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
        elif get_origin(inner) is tuple:
            return (
                f"one item of {_dotted(here)} cannot be set from the environment; set the "
                f"whole list, as {_env_name(here)}='[...]'"
            )
        else:
            return f"{_dotted(here)} is a single value; set it as {_env_name(here)}"
    return parts  # pragma: no cover - the loop returns


_NO_LIST_FROM_ENV: Final = (
    "the {name} list cannot be set from the environment; list the {name} in the configuration file"
)


def _env_name(parts: tuple[str, ...]) -> str:
    return ENV_PREFIX + "__".join(parts).upper()


def _env_value(value: str) -> Any:
    """An `SFSTREAM_*` value, read as YAML (`100`, `true`, `[a, b]`); empty stays empty.

    Raises:
        ValueError: not a YAML value (the message never shows the value).
    """
    if not value:
        return value
    try:
        parsed, duplicates = _parse_yaml(value)
    except _UnsafeDocumentError as exc:
        raise ValueError(f"not a valid YAML value: {exc}") from None
    except _YAML_FAILURES as exc:
        raise ValueError(
            f"not a valid YAML value ({type(exc).__name__}); quote it to pass a string"
        ) from None
    if duplicates:
        raise ValueError("not a valid YAML value: a mapping with a duplicate key")
    return parsed


# -- secret references -------------------------------------------------------------------------

_OMITTED: Final = object()
_SECRET_FIELDS: Final = (
    "salesforce.client_secret",
    "salesforce.refresh_token",
    "salesforce.password",
    "salesforce.private_key",
    "state.dsn",
    "sink.dsn",
)
"""Fields that hold secrets: their values are never shown, and one written inline in the
file is warned about."""
_LIBPQ_PASSWORD: Final = r"(?i)(?:^|\s)password\s*=\s*\S"  # noqa: S105 - a pattern
"""Compiled on first use (by `re`): only a PostgreSQL DSN is searched."""


def _inline_secrets(raw: Mapping[str, Any], sources: _Sources) -> tuple[ConfigWarning, ...]:
    """A warning for each secret written inline in the file (a DSN: only with a password)."""
    found = []
    for dotted in _SECRET_FIELDS:
        section, field = dotted.split(".")
        values = raw.get(section)
        value = values.get(field) if isinstance(values, dict) else None
        if not isinstance(value, str) or not value.strip():
            continue
        if _SECRET_REF.match(value.strip()) or _LOOKS_LIKE_REF.search(value):
            continue
        if sources.variable((section, field)) is not None:
            continue  # the file's value is not used
        if dotted in ("state.dsn", "sink.dsn"):
            if not _dsn_has_password(value):
                continue
            message = (
                "the connection string holds a password written inline in the configuration "
                "file; write the whole DSN as a ${secret:NAME} reference, its value in the "
                "secrets store"
            )
        else:
            message = (
                "a secret written inline in the configuration file; write a ${secret:NAME} "
                "reference instead, its value in the secrets store"
            )
        found.append(ConfigWarning(dotted, message))
    return tuple(found)


def _dsn_has_password(dsn: str) -> bool:
    if "://" in dsn:
        try:
            return bool(urllib.parse.urlsplit(dsn.strip()).password)
        except ValueError:
            return False
    return re.search(_LIBPQ_PASSWORD, dsn) is not None


class _Resolution(msgspec.Struct):
    """What resolving the references of one document found."""

    store: Callable[[], SecretsStore] | None
    """Opens the secrets store (once); None when the `secrets` section is invalid."""
    offline: bool
    sources: _Sources
    problems: list[_Problem]
    refs: dict[str, str]
    """Field path -> secret name, for each reference resolved."""
    unresolved: dict[str, str]
    """Field path -> secret name, for each reference left unresolved (offline)."""
    values: dict[str, str]
    """Secret name -> value, of each resolved secret (to keep them out of messages)."""
    failed: set[str]
    """Field paths whose secret could not be read (already a problem)."""
    reported: set[str]
    """Field paths with a problem already (a malformed reference, a secret that could not
    be read): validation does not report them again."""


_SF_FIELDS = frozenset(SalesforceConfig.model_fields)


async def _resolve(value: Any, path: _Loc, found: _Resolution) -> Any:
    """`value` with every `${secret:NAME}` replaced by its secret (or left out, offline)."""
    if isinstance(value, dict):
        resolved = {}
        for key, item in value.items():
            done = await _resolve(item, (*path, str(key)), found)
            if done is not _OMITTED:
                resolved[key] = done
        return resolved
    if isinstance(value, list):
        return [await _resolve(item, (*path, index), found) for index, item in enumerate(value)]
    if not isinstance(value, str):
        return value
    match = _SECRET_REF.match(value.strip())
    if match is None:
        if _LOOKS_LIKE_REF.search(value):
            shown = value if len(value) <= 80 else value[:77] + "..."
            found.problems.append(
                _Problem(
                    f"{found.sources.where(path)}: `{shown}` looks like a secret reference "
                    "but is not one; write ${secret:NAME}",
                    from_env=found.sources.variable(path) is not None,
                )
            )
            found.reported.add(_dotted(path))
        return value
    name = match.group(1)
    dotted = _dotted(path)
    # Offline, a salesforce field's secret is left out; a key that is no field is kept, for
    # validation to report.
    if found.offline and len(path) == 2 and path[0] == "salesforce" and path[1] in _SF_FIELDS:
        found.unresolved[dotted] = name
        # The client id is required and not secret: its reference stands in for it.
        return value if path == ("salesforce", "client_id") else _OMITTED
    if found.store is None:
        return value
    try:
        secret = (await found.store().get(name)).get_secret_value()
    except SecretError as exc:
        found.problems.append(
            _Problem(
                f"{found.sources.where(path)}: {exc}",
                from_env=found.sources.variable(path) is not None,
            )
        )
        found.failed.add(dotted)
        found.reported.add(dotted)
        return None
    found.refs[dotted] = name
    found.values[name] = secret
    return secret


def _store_opener(
    raw: dict[str, Any], base_dir: Path, problems: list[_Problem], sources: _Sources
) -> Callable[[], SecretsStore] | None:
    """Opens the configured store on first use; None (with problems) when `secrets` is
    invalid."""
    section = raw.get("secrets")
    try:
        secrets = SecretsConfig.model_validate({} if section is None else section)
    except ValidationError as exc:
        problems.extend(_describe(exc, sources, {}, prefix=("secrets",)))
        return None
    opened: list[SecretsStore] = []

    def store() -> SecretsStore:
        if not opened:
            opened.append(secrets.open_store(base_dir))
        return opened[0]

    return store


# -- messages -------------------------------------------------------------------------------------


class _Problem(msgspec.Struct, frozen=True):
    text: str
    from_env: bool = False


_REPLAY: Final = "latest, earliest or a replayId (an integer from 0)"
_SECONDS: Final = "a number of seconds greater than 0"
_SECRET_TEXT: Final = "text (a ${secret:NAME} reference)"  # noqa: S105 - a description
_ENDPOINT: Final = "a URL starting with https:// (or http:// for a local endpoint)"
_EXPECTED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "salesforce.login_url": "a URL starting with https:// (or http:// for a local emulator)",
        "salesforce.client_id": "the connected app's consumer key (text)",
        "salesforce.client_secret": _SECRET_TEXT,
        "salesforce.refresh_token": _SECRET_TEXT,
        "salesforce.username": "a user name (text)",
        "salesforce.password": _SECRET_TEXT,
        "salesforce.private_key": "a PEM private key (as a ${secret:NAME} reference)",
        "salesforce.api_version": "an API version as text (like '62.0', quoted)",
        "secrets.file": "a file path",
        "secrets.aws_secret_id": "the name or ARN of a secret (text)",
        "secrets.aws_region": "an AWS region (like eu-west-1)",
        "secrets.aws_endpoint_url": _ENDPOINT,
        "secrets.aws_cache_ttl_s": "a number of seconds, 0 or more (0: read it every time)",
        "streams": "a list of streams",
        "streams.*": "a stream (a mapping with `channel`)",
        "streams.*.channel": "a channel name (/data/..., /event/..., /topic/... or /u/...)",
        "streams.*.id": "a stream id (like sf.event.account_changes)",
        "streams.*.key_field": "a field name",
        "streams.*.initial_replay": _REPLAY,
        "streams.*.max_silence_s": f"{_SECONDS} (or no value, for none)",
        "discovery.include": "a list of glob patterns (like ['/data/*'])",
        "discovery.include.*": "a glob pattern (like /data/*)",
        "discovery.exclude": "a list of glob patterns (like ['/data/*'])",
        "discovery.exclude.*": "a glob pattern (like /data/*)",
        "discovery.initial_replay": _REPLAY,
        "state.path": "a file path",
        "state.dsn": "a connection string (postgresql://...)",
        "state.table": "a table name (text)",
        "state.region": "an AWS region (like eu-west-1)",
        "state.endpoint_url": _ENDPOINT,
        "state.lease_ttl_s": "a number of seconds from 3 to 3600",
        "state.worker_id": "a worker name (text, up to 200 characters)",
        "schema_registry.path": "a file path",
        "sink.path": "a file path",
        "sink.bootstrap_servers": "Kafka brokers (host:port[,host:port...])",
        "sink.topic": "a topic name, or a template of {stream}",
        "sink.control_topic": "a topic name",
        "sink.producer": "a mapping of librdkafka properties",
        "sink.producer.*": "a librdkafka property value (text or a number)",
        "sink.dsn": "a connection string (postgresql://...)",
        "sink.table": "a table name ([schema.]name)",
        "sink.bucket": "an S3 bucket name",
        "sink.prefix": "an S3 key prefix (text)",
        "sink.region": "an AWS region (like eu-west-1)",
        "sink.endpoint_url": _ENDPOINT,
        "runtime.summary_interval_s": _SECONDS,
        "runtime.shutdown_timeout_s": _SECONDS,
        "runtime.startup_timeout_s": f"{_SECONDS} (or no value, for no limit)",
        "runtime.connect_margin_s": _SECONDS,
        "runtime.limits_interval_s": "a number of seconds from 10 to 86400",
        "observability.metrics_port": "a port number from 0 to 65535 (0: any free port)",
        "observability.metrics_host": "an address to listen on (like 0.0.0.0 or 127.0.0.1)",
        "observability.connect_grace_s": _SECONDS,
    }
)
"""What a field takes, in the user's words, where its type does not say it well enough."""


def expected_value(path: str) -> str:
    """What the field at `path` takes, as error messages say it (`batch.max_records`: "an
    integer from 1 to 100000"); a list item is `streams.0` or `streams.*`.

    Raises:
        KeyError: `path` names no field, or one whose type has no description.
    """
    parts: _Loc = tuple(int(p) if p.isdigit() else p for p in path.split("."))
    schema, annotation, info, rest = _walk(parts)
    if rest:
        raise KeyError(path)
    return _expected(schema, annotation, info)


def _walk(loc: _Loc) -> tuple[str, Any, FieldInfo | None, _Loc]:
    """Follow `loc` from `Config` through fields and list items as far as it goes: (the
    schema path, `streams.*.channel`; the annotation there; its field; the rest of `loc`)."""
    annotation: Any = Config
    info: FieldInfo | None = None
    schema: list[str] = []
    for index, part in enumerate(loc):
        inner = _unwrap_optional(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel) and part in inner.model_fields:
            info = inner.model_fields[str(part)]
            annotation = info.annotation
            schema.append(str(part))
        elif get_origin(inner) is tuple and (isinstance(part, int) or part == "*"):
            annotation = get_args(inner)[0]
            info = None
            schema.append("*")
        else:
            return ".".join(schema), annotation, info, loc[index:]
    return ".".join(schema), annotation, info, ()


def _expected(schema: str, annotation: Any, info: FieldInfo | None) -> str:
    if schema in _EXPECTED:
        return _EXPECTED[schema]
    inner = _unwrap_optional(annotation)
    if get_origin(inner) is Literal:
        choices = [str(choice) for choice in get_args(inner)]
        return choices[0] if len(choices) == 1 else f"one of {', '.join(choices)}"
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return f"a mapping of {schema.rsplit('.', 1)[-1] or 'sections'} settings"
    if inner is int:
        return _integer(info)
    raise KeyError(schema)


def _integer(info: FieldInfo | None) -> str:
    low = high = None
    for constraint in info.metadata if info is not None else ():
        if isinstance(constraint, annotated_types.Ge):
            low = constraint.ge
        elif isinstance(constraint, annotated_types.Le):
            high = constraint.le
    if low is not None and high is not None:
        return f"an integer from {low} to {high}"
    if low is not None:
        return f"an integer of at least {low}"
    return "an integer"


def _unwrap_optional(annotation: Any) -> Any:
    if get_origin(annotation) in (Union, types.UnionType):
        args = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return annotation


def _list_item_model(info: FieldInfo) -> type[BaseModel] | None:
    """The model of the items of a list-of-mappings field (`streams`), else None."""
    inner = _unwrap_optional(info.annotation)
    if get_origin(inner) is tuple:
        item = get_args(inner)[0]
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item
    return None


def _suggestion(key: str, model: type[BaseModel]) -> str:
    import difflib  # only for an unknown key

    names = list(model.model_fields)
    close = difflib.get_close_matches(key, names, n=1, cutoff=0.6)
    if close:
        return f" (did you mean {close[0]}?)"
    owner = "the configuration" if model is Config else _model_name(model)
    return f" ({owner} has {', '.join(names)})"


def _model_name(model: type[BaseModel]) -> str:
    for name, info in Config.model_fields.items():
        inner = _unwrap_optional(info.annotation)
        if inner is model:
            return name
        if _list_item_model(info) is model:
            return f"a {name.removesuffix('s')}"
    return model.__name__  # pragma: no cover - every model is a section or a list item


def _dotted(path: _Loc) -> str:
    """`path` as written (`streams.0.channel`); a key that would not read as one (empty,
    with spaces around it, control characters, very long) is quoted."""
    return ".".join(_key(part) for part in path)


def _key(part: str | int) -> str:
    text = str(part)
    if text and text.isprintable() and text == text.strip() and len(text) <= 60:
        return text
    return repr(text) if len(text) <= 60 else repr(text[:57]) + "..."


def _kind(value: Any) -> str:
    """What `value` is, without showing it."""
    if value is None:
        return "no value"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "text"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _shown(value: Any) -> str:
    """`value` as a message shows it: text quoted, YAML's words for booleans and nulls."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            text = str(value)
        except ValueError:  # an integer past Python's digit limit for str()
            return "a very large number"
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else repr(value[:57]) + "..."
    return _kind(value)


class _Unknown(msgspec.Struct, frozen=True):
    """A key the mapping at its place does not have."""

    key: str | int
    owner: Any
    """The annotation of the mapping (a model)."""


class _Failure(msgspec.Struct, frozen=True):
    """One validation error of a field, with what the field takes."""

    error: Any
    """pydantic's error details."""
    schema: str
    annotation: Any
    info: FieldInfo | None


def _describe(
    exc: ValidationError,
    sources: _Sources,
    refs: Mapping[str, str],
    prefix: _Loc = (),
    skip: Set[str] = frozenset(),
) -> list[_Problem]:
    """One problem a field, in the user's words. A field whose type is a union (a replay:
    `latest`, `earliest` or an integer) fails once for each member: those are one problem.
    Fields in `skip` (dotted paths) have been reported already."""
    groups: dict[_Loc, list[_Unknown | _Failure]] = {}
    for error in exc.errors():
        loc: _Loc = (*prefix, *error["loc"])
        if error["type"] in ("extra_forbidden", "invalid_key"):
            # The unknown key is the last part of the location.
            _, owner, _, rest = _walk(loc[:-1])
            if not rest:  # else inside a field that is no mapping, which says so itself
                groups.setdefault(loc, []).append(_Unknown(loc[-1], owner))
            continue
        schema, annotation, info, rest = _walk(loc)
        place = loc[: len(loc) - len(rest)]
        if _dotted(place) not in skip:
            groups.setdefault(place, []).append(_Failure(error, schema, annotation, info))
    return [
        _Problem(f"{sources.where(place)}: {text}", sources.variable(place) is not None)
        for place, found in groups.items()
        for text in _group_messages(place, found, refs)
    ]


def _group_messages(
    place: _Loc, found: list[_Unknown | _Failure], refs: Mapping[str, str]
) -> list[str]:
    first = found[0]
    if isinstance(first, _Unknown):
        model = _unwrap_optional(first.owner)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return ["unknown field"]  # pragma: no cover - extra keys only exist in models
        what = "unknown section" if model is Config else "unknown field"
        return [f"{what}{_suggestion(str(first.key), model)}"]
    failures = [f for f in found if isinstance(f, _Failure)]
    if any(f.error["type"] == "missing" for f in failures):
        return ["required"]
    # A value read from a secret is never shown, nor quoted by a validator's message.
    secret_name = refs.get(_dotted(place))
    custom = [
        str(f.error["msg"]).removeprefix("Value error, ")
        for f in failures
        if f.error["type"] in ("value_error", "assertion_error")
    ]
    if custom and secret_name is None:
        return list(dict.fromkeys(custom))
    try:
        expected = _expected(first.schema, first.annotation, first.info)
    except KeyError:  # pragma: no cover - every field is described (tested)
        expected = "a valid value"
    value = first.error.get("input")
    if secret_name is not None:
        got = f"the value of secret {secret_name}"
    elif first.schema in _SECRET_FIELDS:
        got = _kind(value)
    else:
        got = _shown(value)
    return [f"expected {expected}, got {got}"]


# -- loading ------------------------------------------------------------------------------------


async def load_config(
    path: str | Path, environ: Mapping[str, str] | None = None, *, offline: bool = False
) -> Config:
    """Read, overlay, resolve and validate a configuration file.

    Args:
        path: the YAML file.
        environ: the environment to take `SFSTREAM_*` overrides from (`os.environ` when
            None).
        offline: for a command that does not call Salesforce (`state show`, `schema list`,
            config-mode `discover`): `${secret:NAME}` references under `salesforce` are not
            resolved, and the secrets store is not asked for them. Their fields are left
            unset (defaults apply; `client_id` keeps the reference as its text), the grant
            check counts them as given, and `config.unresolved_secrets` lists them. Every
            other reference (a PostgreSQL `state.dsn`) is resolved, and everything else is
            checked, as usual.

    Raises:
        ConfigError: every problem found, one per line, each with its path or the
            environment variable that set it.
    """
    file = Path(path)
    try:
        text = await asyncio.to_thread(file.read_text, encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config file {file}: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file} is not UTF-8 text (byte {exc.start})") from None
    except ValueError as exc:  # a path with a NUL byte
        raise ConfigError(f"cannot read config file {str(file)!r}: {exc}") from None
    try:
        document, duplicates = _parse_yaml(text)
    except _UnsafeDocumentError as exc:
        raise ConfigError(f"{file}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{file} is not valid YAML: nested too deeply") from None
    except ValueError as exc:
        raise ConfigError(f"{file} is not valid YAML: a value cannot be read: {exc}") from None
    raw = {} if document is None else document
    if not isinstance(raw, dict):
        raise ConfigError(
            f"{file}: the configuration must be a mapping at the top level (got {_kind(raw)})"
        )
    problems = [_Problem(str(duplicate)) for duplicate in duplicates]
    sources = _Sources({})
    sources.variables = _overlay_env(raw, os.environ if environ is None else environ, problems)
    warnings = _inline_secrets(raw, sources)
    found = _Resolution(
        store=_store_opener(raw, file.parent, problems, sources),
        offline=offline,
        sources=sources,
        problems=problems,
        refs={},
        unresolved={},
        values={},
        failed=set(),
        reported=set(),
    )
    resolved = await _resolve(raw, (), found)
    # A salesforce secret left unresolved (offline) or unreadable (reported already) does not
    # also fail the grant check.
    unresolved_fields = frozenset(
        dotted.removeprefix("salesforce.")
        for dotted in (*found.unresolved, *found.failed)
        if dotted.startswith("salesforce.") and dotted.count(".") == 1
    )
    try:
        config = Config.model_validate(resolved, context={"unresolved": unresolved_fields})
    except ValidationError as exc:
        problems.extend(_describe(exc, sources, found.refs, skip=found.reported))
        config = None
    if problems or config is None:
        raise ConfigError(_report(file, problems, found.values))
    config._secret_refs = MappingProxyType(found.refs)
    config._unresolved = MappingProxyType(found.unresolved)
    config._warnings = warnings
    config._file = str(file)
    return _anchor_paths(config, file.parent)


def _report(file: Path, problems: list[_Problem], secrets: Mapping[str, str]) -> str:
    """Every problem, once each, under a line naming where they come from. A resolved
    secret's value never shows: a message that would quote it shows its reference."""
    lines = list(dict.fromkeys(problem.text for problem in problems))
    for name, value in sorted(secrets.items(), key=lambda item: -len(item[1])):
        if len(value) >= 4:
            lines = [line.replace(value, f"${{secret:{name}}}") for line in lines]
    from_env = [problem.from_env for problem in problems]
    if all(from_env):
        origin = f"{ENV_PREFIX}* environment variables"
    elif any(from_env):
        origin = f"{file} and {ENV_PREFIX}* environment variables"
    else:
        origin = str(file)
    return f"{origin}: {len(lines)} problem(s)\n" + "\n".join(f"  {line}" for line in lines)


def _anchor_paths(config: Config, base: Path) -> Config:
    """Relative state, sink and secrets file paths are relative to the config file's
    directory; an SQLite state's schema registry is `schemas.db` beside its file, unless
    `schema_registry.path` says otherwise."""
    state = config.state
    sink = config.sink
    registry = config.schema_registry
    secrets = config.secrets
    if secrets.file is not None and not secrets.file.is_absolute():
        secrets = secrets.model_copy(update={"file": base / secrets.file})
    if not state.path.is_absolute():
        state = state.model_copy(update={"path": base / state.path})
    if sink.path is not None and not sink.path.is_absolute():
        sink = sink.model_copy(update={"path": base / sink.path})
    if registry.path is None:
        if state.backend == "sqlite":
            registry = registry.model_copy(update={"path": state.path.parent / "schemas.db"})
    elif not registry.path.is_absolute():
        registry = registry.model_copy(update={"path": base / registry.path})
    return config.model_copy(
        update={"state": state, "sink": sink, "schema_registry": registry, "secrets": secrets}
    )
