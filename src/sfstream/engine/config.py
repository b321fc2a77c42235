"""Configuration: one YAML file, validated at the edge into frozen values.

Load order: the YAML file, then `SFSTREAM_<SECTION>__<FIELD>` environment variables over it
(`SFSTREAM_SINK__PATH=/data/out.jsonl`), then `${secret:NAME}` references resolved through the
configured secrets store, then validation. Every problem is reported at once, each with its
path (`streams.2.channel: ...`), as a `ConfigError`.

The loaded `Config` remembers which secret each resolved field came from
(`config.secret_reference("salesforce.refresh_token") == "SF_REFRESH_TOKEN"`), so that a value
that changes while running (a rotated refresh token) can be written back under its name.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from sfstream.auth.grants import GrantType, grant_needs_message, missing_for_grant
from sfstream.errors import ConfigError, SecretError
from sfstream.secrets import EnvSecretsStore, FileSecretsStore, SecretsStore
from sfstream.streams import check_stream_id, parse_channel

ENV_PREFIX: Final = "SFSTREAM_"
_SECRET_REF: Final = re.compile(r"^\$\{secret:([A-Za-z0-9_.\-/]+)\}$")

Replay = Literal["latest", "earliest"] | Annotated[int, Field(ge=0)]
InvalidReplay = Literal["fail", "earliest", "latest"]
BreakingChange = Literal["warn", "fail"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class SalesforceConfig(_Frozen):
    """How to reach and log in to the org."""

    login_url: str = "https://login.salesforce.com"
    client_id: str
    client_secret: SecretStr | None = None
    grant_type: GrantType = "refresh_token"
    refresh_token: SecretStr | None = None
    username: str | None = None
    password: SecretStr | None = None
    api_version: str = Field(default="62.0", pattern=r"^\d{2,3}\.\d$")

    @field_validator("login_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("https://", "http://")):
            raise ValueError("must start with https:// (or http:// for a local emulator)")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _grant(self) -> SalesforceConfig:
        missing = missing_for_grant(
            self.grant_type,
            {
                "client_secret": self.client_secret,
                "refresh_token": self.refresh_token,
                "username": self.username,
                "password": self.password,
            },
        )
        if missing:
            raise ValueError(grant_needs_message(self.grant_type, missing))
        return self


class SecretsConfig(_Frozen):
    """Where `${secret:NAME}` references are looked up."""

    backend: Literal["env", "file", "aws"] = "env"
    file: Path | None = None
    aws_secret_id: str | None = None
    aws_region: str | None = None

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
            return AwsSecretsManagerStore(self.aws_secret_id, region=self.aws_region)
        return EnvSecretsStore()


class StreamConfig(_Frozen):
    """One channel to stream."""

    channel: str
    id: str | None = None
    """Overrides the derived stream id (`sf.event.account_changes`)."""
    key_field: str | None = None
    """Platform events: the payload field that keys records (default: EventUuid)."""
    initial_replay: Replay = "latest"
    """Where to start when the stream has no checkpoint."""
    on_invalid_replay: InvalidReplay = "fail"
    """When Salesforce rejects the checkpoint as invalid or expired."""
    on_breaking_change: BreakingChange = "warn"
    """When the stream's schema changes in a way that breaks readers: log it, or stop."""

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
    backend: Literal["sqlite", "postgres"] = "sqlite"
    path: Path = Path(".sfstream/state.db")
    dsn: SecretStr | None = None

    @model_validator(mode="after")
    def _dsn(self) -> StateConfig:
        if self.backend == "postgres" and self.dsn is None:
            raise ValueError("the postgres backend needs `dsn`")
        return self


class SchemaRegistryConfig(_Frozen):
    """Where schema versions are kept (an SQLite file; beside the state store by default)."""

    backend: Literal["sqlite"] = "sqlite"
    path: Path | None = None


class SinkConfig(_Frozen):
    type: Literal["stdout", "file"] = "stdout"
    path: Path | None = None

    @model_validator(mode="after")
    def _path(self) -> SinkConfig:
        if self.type == "file" and self.path is None:
            raise ValueError("the file sink needs `path`")
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
    summary_interval_s: float = Field(default=60.0, gt=0)
    shutdown_timeout_s: float = Field(default=20.0, gt=0)
    startup_timeout_s: float | None = Field(default=None, gt=0)
    """How long start-up may retry retryable failures (Salesforce, the state store or the
    sink unreachable) before the run gives up with exit 1; no limit when unset."""
    on_subscription_lost: Literal["fail", "continue"] = "fail"
    """End the run (exit 1) when a subscription fails for good, or keep the others going."""
    disk_io: Literal["inline", "thread"] = "inline"
    """Where the file sink's write + fsync and the SQLite checkpoint commit run: on the event
    loop (no thread hand-off: the lowest latency) or in a worker thread (the loop goes on
    receiving while the disk works: for slow or network file systems)."""


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
    logging: LoggingConfig = LoggingConfig()

    _secret_refs: Mapping[str, str] = PrivateAttr(default_factory=lambda: MappingProxyType({}))

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
            self.state.dsn,
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


def _overlay_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        if not all(path):
            continue
        target: Any = raw
        for part in path[:-1]:
            existing = target.get(part)
            if not isinstance(existing, dict):
                existing = {}
                target[part] = existing
            target = existing
        target[path[-1]] = _env_value(name, value)


# PyYAML raises more than YAMLError on hostile input: ValueError for scalars it cannot convert
# (an unquoted `2024-02-30`, an int past Python's 4,300-digit limit), RecursionError for
# deeply nested collections.
_YAML_FAILURES = (yaml.YAMLError, ValueError, RecursionError)


def _env_value(name: str, value: str) -> Any:
    """An `SFSTREAM_*` value, read as YAML (`100`, `true`, `[a, b]`); empty stays empty."""
    if not value:
        return value
    try:
        return yaml.safe_load(value)
    except _YAML_FAILURES as exc:
        # The value itself may be a secret: only the variable is named.
        raise ConfigError(
            f"environment variable {name} is not a valid YAML value "
            f"({type(exc).__name__}); quote it to pass a string"
        ) from None


def _secrets_store(raw: dict[str, Any], base_dir: Path) -> SecretsStore:
    section = raw.get("secrets") or {}
    try:
        secrets = SecretsConfig.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(_format(exc, prefix="secrets")) from exc
    return secrets.open_store(base_dir)


async def _resolve(
    value: Any, store: SecretsStore, path: str, problems: list[str], refs: dict[str, str]
) -> Any:
    """`value` with every `${secret:NAME}` replaced; `refs` gets path -> NAME of each."""
    if isinstance(value, dict):
        return {
            k: await _resolve(v, store, f"{path}.{k}" if path else str(k), problems, refs)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [
            await _resolve(v, store, f"{path}.{i}", problems, refs) for i, v in enumerate(value)
        ]
    if isinstance(value, str):
        match = _SECRET_REF.match(value.strip())
        if match:
            try:
                secret = (await store.get(match.group(1))).get_secret_value()
            except SecretError as exc:
                problems.append(f"{path}: {exc}")
                return None
            refs[path] = match.group(1)
            return secret
    return value


def _format(exc: ValidationError, prefix: str = "") -> str:
    lines = []
    for error in exc.errors():
        location = ".".join(str(part) for part in error["loc"])
        location = f"{prefix}.{location}" if prefix and location else prefix or location
        message = error["msg"].removeprefix("Value error, ")
        lines.append(f"{location or 'config'}: {message}")
    return "\n".join(lines)


async def load_config(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, overlay, resolve and validate a configuration file.

    Raises:
        ConfigError: every problem found, one per line, each with its path.
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
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file} is not valid YAML: {exc}") from exc
    except RecursionError:
        raise ConfigError(f"{file} is not valid YAML: nested too deeply") from None
    except ValueError as exc:
        raise ConfigError(f"{file} is not valid YAML: a value cannot be read: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: the configuration is a mapping at the top level")
    _overlay_env(raw, os.environ if environ is None else environ)
    store = _secrets_store(raw, file.parent)
    problems: list[str] = []
    refs: dict[str, str] = {}
    resolved = await _resolve(raw, store, "", problems, refs)
    try:
        config = Config.model_validate(resolved)
    except ValidationError as exc:
        problems.extend(_format(exc).splitlines())
        config = None
    if problems or config is None:
        raise ConfigError(
            f"{file}: {len(problems)} problem(s)\n" + "\n".join(f"  {p}" for p in problems)
        )
    config._secret_refs = MappingProxyType(refs)
    return _anchor_paths(config, file.parent)


def _anchor_paths(config: Config, base: Path) -> Config:
    """Relative state, sink and secrets file paths are relative to the config file's
    directory."""
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
        registry = registry.model_copy(update={"path": state.path.parent / "schemas.db"})
    elif not registry.path.is_absolute():
        registry = registry.model_copy(update={"path": base / registry.path})
    return config.model_copy(
        update={"state": state, "sink": sink, "schema_registry": registry, "secrets": secrets}
    )
