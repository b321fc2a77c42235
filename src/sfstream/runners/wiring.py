"""Wiring: the one place that builds what a configuration names.

Every command and both runners get their state store, sink, schema registry, secrets store,
OAuth credentials and REST session from here, so a backend is chosen in one place. Optional
backends (psycopg for PostgreSQL, boto3 for DynamoDB and Secrets Manager) are imported only
when configured. The schema registry lives with the state (`open_registry`).

The token provider of `org_session` writes a rotated refresh token back to the secret the
configuration read `salesforce.refresh_token` from (`RefreshTokenWriter`), so that the next
start logs in with it: Salesforce invalidates the old one when it rotates. Later sessions of
the same configuration in this process (a startup retry, a second command) log in with the
newest one too, whether or not the store could keep it. When Salesforce refuses the refresh
token (`invalid_grant`), the provider reads that secret once more from the store, bypassing
what the store keeps in memory: another process (an earlier Lambda invocation's container, the
task this one replaced) may have rotated the token and stored the new one meanwhile. If the
store holds a different token, the login is tried once more with it.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import AsyncIterator
from typing import Final

import aiohttp
import msgspec
import structlog
from pydantic import SecretStr

from sfstream.auth import AccessToken, OAuthCredentials, TokenProvider
from sfstream.engine.config import Config
from sfstream.errors import AuthenticationError, SfStreamError
from sfstream.observability.logging import RedactSecrets
from sfstream.salesforce.rest import RestClient
from sfstream.schema.registry import SchemaRegistry, SqliteSchemaRegistry
from sfstream.secrets import RereadableSecretsStore, SecretsReadOnlyError, SecretsStore
from sfstream.sinks.base import Sink
from sfstream.state.base import StateStore

log = structlog.get_logger("sfstream.wiring")

REFRESH_TOKEN_FIELD: Final = "salesforce.refresh_token"  # noqa: S105 - a field path
_LOST_ON_RESTART: Final = (
    "Salesforce rotated the refresh token and invalidated the old one; the new one is kept "
    "in this process only, and a restart will log in with the old one and be refused "
    "(invalid_grant)"
)


_ROTATED: Final[weakref.WeakKeyDictionary[Config, SecretStr]] = weakref.WeakKeyDictionary()
"""The newest refresh token of a configuration in use, once Salesforce has rotated the one it
holds (which is then invalid)."""
_WARNED: Final[weakref.WeakSet[Config]] = weakref.WeakSet()
"""Configurations whose rotated refresh token could not be kept, already warned about."""


def credentials_of(config: Config) -> OAuthCredentials:
    """The OAuth credentials of the configured org, with the newest refresh token this
    process has received for it."""
    sf = config.salesforce
    return OAuthCredentials(
        login_url=sf.login_url,
        client_id=sf.client_id,
        client_secret=sf.client_secret,
        grant_type=sf.grant_type,
        refresh_token=_ROTATED.get(config, sf.refresh_token),
        username=sf.username,
        password=sf.password,
        private_key=sf.private_key,
    )


def open_secrets(config: Config) -> SecretsStore:
    """The configured secrets store (`secrets.file` is already anchored by `load_config`)."""
    return config.secrets.open_store()


class RefreshTokenWriter:
    """Keeps a rotated refresh token: the `on_refresh_token_rotated` callback of `org_session`.

    Writes the new token to `store` under `name`, the secret `salesforce.refresh_token` was
    read from. When that cannot last (a read-only store such as environment variables, or a
    refresh token written inline in the configuration) it logs one warning per configuration
    and process, naming the secret and never the value; a failed write is logged each time.
    The new value is added to the log redaction first, wherever it may turn up, and
    remembered for `config`, so that `credentials_of(config)` returns it from then on.

    Attributes:
        saved: rotated tokens written to the store.
        failures: rotated tokens the store failed to write (read-only excluded).
    """

    def __init__(self, config: Config, store: SecretsStore, name: str | None) -> None:
        self._config = config
        self.store = store
        self.name = name
        self.saved = 0
        self.failures = 0

    async def __call__(self, token: SecretStr) -> None:
        _redact_from_logs(token.get_secret_value())
        _ROTATED[self._config] = token
        if self.name is None:
            self._in_memory_only(
                f"{REFRESH_TOKEN_FIELD} is written inline in the configuration, not as a "
                "${secret:NAME} reference",
                "write it as ${secret:NAME} with the file or aws secrets backend",
            )
            return
        try:
            await self.store.put(self.name, token)
        except SecretsReadOnlyError as exc:
            self._in_memory_only(
                str(exc),
                "use a secrets store sfstream can write (secrets.backend: file or aws), or turn "
                "refresh token rotation off for the connected app",
            )
            return
        except SfStreamError as exc:
            self.failures += 1
            log.warning(
                "refresh_token_not_saved",
                name=self.name,
                store=repr(self.store),
                error=str(exc),
                failures=self.failures,
                note=_LOST_ON_RESTART,
            )
            return
        self.saved += 1
        log.info("refresh_token_saved", name=self.name, store=repr(self.store))

    def _in_memory_only(self, reason: str, advice: str) -> None:
        if self._config in _WARNED:
            return
        _WARNED.add(self._config)
        log.warning(
            "refresh_token_in_memory_only",
            name=self.name,
            store=repr(self.store),
            reason=reason,
            note=_LOST_ON_RESTART,
            advice=advice,
        )

    def __repr__(self) -> str:
        return f"RefreshTokenWriter({self.store!r}, name={self.name!r})"


def refresh_token_writer(config: Config) -> RefreshTokenWriter | None:
    """The callback that keeps rotated refresh tokens of `config`'s org; None unless the
    refresh_token grant is configured."""
    if config.salesforce.grant_type != "refresh_token":
        return None
    return RefreshTokenWriter(
        config, open_secrets(config), config.secret_reference(REFRESH_TOKEN_FIELD)
    )


def _redact_from_logs(value: str) -> None:
    """Add `value` to the redaction of the configured logging, if any."""
    for processor in structlog.get_config().get("processors", ()):
        if isinstance(processor, RedactSecrets):
            processor.add(value)


def open_state(config: Config, *, read_only: bool = False) -> StateStore:
    """The configured state store (it connects on first use).

    `read_only` opens it for reading only: it creates, migrates and writes nothing (for
    commands that only look, such as `state show` and `check`).
    """
    state = config.state
    if state.backend == "postgres":
        from sfstream.state.postgres import PostgresStateStore

        assert state.dsn is not None  # checked by the configuration
        if state.table is not None:
            return PostgresStateStore(
                state.dsn.get_secret_value(), state.table, read_only=read_only
            )
        return PostgresStateStore(state.dsn.get_secret_value(), read_only=read_only)
    if state.backend == "dynamodb":
        from sfstream.state.dynamodb import DynamoDbStateStore

        assert state.table is not None  # checked by the configuration
        return DynamoDbStateStore(
            state.table, region=state.region, endpoint_url=state.endpoint_url, read_only=read_only
        )
    from sfstream.state.sqlite import SqliteStateStore

    if read_only:
        return SqliteStateStore(config.state.path, read_only=True)
    return SqliteStateStore(config.state.path, inline_commits=config.runtime.disk_io == "inline")


def open_sink(config: Config) -> Sink:
    """The configured sink (it opens its destination on first use); a sink's library is
    imported only when it is configured."""
    sink = config.sink
    if sink.type == "file":
        from sfstream.sinks.file import FileSink

        assert sink.path is not None  # checked by the configuration
        return FileSink(sink.path, inline_writes=config.runtime.disk_io == "inline")
    if sink.type == "kafka":
        from sfstream.sinks.kafka import KafkaSink

        assert sink.bootstrap_servers is not None  # checked by the configuration
        return KafkaSink(
            sink.bootstrap_servers,
            topic=sink.topic,
            control_topic=sink.control_topic,
            producer={
                name: value.get_secret_value() if isinstance(value, SecretStr) else value
                for name, value in sink.producer
            },
        )
    if sink.type == "postgres":
        from sfstream.sinks.postgres import PostgresSink

        dsn = config.sink_dsn
        assert dsn is not None  # checked by the configuration
        state = config.state
        shared = state.backend == "postgres" and (sink.dsn is None or sink.dsn == state.dsn)
        return PostgresSink(
            dsn,
            sink.table,
            # The same database: records and checkpoints in one transaction.
            state_table=(state.table or "sfstream_checkpoints") if shared else None,
        )
    if sink.type == "s3":
        from sfstream.sinks.s3 import S3Sink

        assert sink.bucket is not None  # checked by the configuration
        return S3Sink(
            sink.bucket,
            prefix=sink.prefix,
            region=sink.region,
            endpoint_url=sink.endpoint_url,
            compression=sink.compression,
        )
    from sfstream.sinks.stdout import StdoutSink

    return StdoutSink()


def registry_backend(config: Config) -> str:
    """Where the schema registry of `config` lives: `sqlite`, `postgres` or `dynamodb`."""
    backend = config.schema_registry.backend
    return config.state.backend if backend == "state" else backend


def open_registry(config: Config, *, read_only: bool = False) -> SchemaRegistry:
    """The configured schema registry, with the state: an SQLite file beside the SQLite
    state (or at `schema_registry.path`), a table in the state's PostgreSQL database
    (`sfstream_schemas`, in the schema of the state's table), or items in the state's
    DynamoDB table. `read_only` opens it for reading only: it creates and writes nothing."""
    state = config.state
    backend = registry_backend(config)
    if backend == "postgres":
        from sfstream.schema.postgres import DEFAULT_TABLE, PostgresSchemaRegistry, table_beside

        assert state.dsn is not None  # checked by the configuration
        table = table_beside(state.table) if state.table is not None else DEFAULT_TABLE
        return PostgresSchemaRegistry(state.dsn.get_secret_value(), table, read_only=read_only)
    if backend == "dynamodb":
        from sfstream.schema.dynamodb import DynamoDbSchemaRegistry

        assert state.table is not None  # checked by the configuration
        return DynamoDbSchemaRegistry(
            state.table, region=state.region, endpoint_url=state.endpoint_url, read_only=read_only
        )
    path = config.schema_registry.path
    assert path is not None  # set by load_config
    return SqliteSchemaRegistry(path, read_only=read_only)


def describe_registry(config: Config) -> str:
    """Where the schema registry of `config` lives, for messages."""
    backend = registry_backend(config)
    state = config.state
    if backend == "dynamodb":
        region = f" ({state.region})" if state.region else ""
        return f"DynamoDB table {state.table}{region}"
    if backend == "postgres":
        from sfstream.schema.postgres import DEFAULT_TABLE, table_beside
        from sfstream.state.pg import redact_dsn

        assert state.dsn is not None  # checked by the configuration
        table = table_beside(state.table) if state.table is not None else DEFAULT_TABLE
        return f"table {table} in {redact_dsn(state.dsn.get_secret_value())}"
    return str(config.schema_registry.path)


class OrgSession(msgspec.Struct):
    """An authenticated connection to the org for REST calls."""

    http: aiohttp.ClientSession
    tokens: TokenProvider
    rest: RestClient


@contextlib.asynccontextmanager
async def org_session(config: Config) -> AsyncIterator[OrgSession]:
    """An HTTP session with a token provider and a REST client (token fetched lazily).

    The token provider writes a rotated refresh token back to the secrets store
    (`RefreshTokenWriter`); share it (`StreamingClient(..., tokens=session.tokens)`) so that
    one provider sees every refresh.
    """
    async with aiohttp.ClientSession(trust_env=True) as http:
        writer = refresh_token_writer(config)
        tokens: TokenProvider
        if writer is not None and writer.name is not None:
            tokens = _RereadingTokenProvider(config, writer.store, writer.name, http, writer)
        else:
            tokens = TokenProvider(credentials_of(config), http, on_refresh_token_rotated=writer)
        yield OrgSession(http, tokens, RestClient(http, tokens, config.salesforce.api_version))


class _RereadingTokenProvider(TokenProvider):
    """A token provider whose refresh token comes from a secret: when Salesforce refuses it
    (`invalid_grant`), the secret is read once more from its store (see the module), and the
    refresh tried again if the store holds another token."""

    def __init__(
        self,
        config: Config,
        store: SecretsStore,
        name: str,
        http: aiohttp.ClientSession,
        writer: RefreshTokenWriter,
    ) -> None:
        super().__init__(credentials_of(config), http, on_refresh_token_rotated=writer)
        self._config = config
        self._store = store
        self._name = name
        self.rereads = 0
        """Times the secret was read again after an `invalid_grant`."""

    async def refresh(self, stale: AccessToken | None) -> AccessToken:
        try:
            return await super().refresh(stale)
        except AuthenticationError as exc:
            if not isinstance(self._store, RereadableSecretsStore) or "invalid_grant" not in str(
                exc
            ):
                raise
            refused = self.credentials.refresh_token
            self.rereads += 1
            try:
                stored = await self._store.reread(self._name)
            except SfStreamError as error:
                log.warning("refresh_token_not_reread", name=self._name, error=str(error))
                raise exc from None
            if refused is not None and stored.get_secret_value() == refused.get_secret_value():
                raise
            log.info("refresh_token_reread", name=self._name, store=repr(self._store))
            _redact_from_logs(stored.get_secret_value())
            _ROTATED[self._config] = stored
            self.credentials = msgspec.structs.replace(self.credentials, refresh_token=stored)
            return await super().refresh(stale)
