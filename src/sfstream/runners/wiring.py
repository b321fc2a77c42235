"""Wiring: the one place that builds what a configuration names.

Every command and both runners get their state store, sink, schema registry, OAuth
credentials and REST session from here, so a backend is chosen in one place. Optional
backends (psycopg for PostgreSQL) are imported only when configured.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp

from sfstream.auth import OAuthCredentials, TokenProvider
from sfstream.engine.config import Config
from sfstream.salesforce.rest import RestClient
from sfstream.schema.registry import SchemaRegistry, SqliteSchemaRegistry
from sfstream.sinks.base import Sink
from sfstream.state.base import StateStore


def credentials_of(config: Config) -> OAuthCredentials:
    """The OAuth credentials of the configured org."""
    sf = config.salesforce
    return OAuthCredentials(
        login_url=sf.login_url,
        client_id=sf.client_id,
        client_secret=sf.client_secret,
        grant_type=sf.grant_type,
        refresh_token=sf.refresh_token,
        username=sf.username,
        password=sf.password,
    )


def open_state(config: Config) -> StateStore:
    """The configured state store (it connects on first use)."""
    if config.state.backend == "postgres":
        from sfstream.state.postgres import PostgresStateStore

        assert config.state.dsn is not None  # checked by the configuration
        return PostgresStateStore(config.state.dsn.get_secret_value())
    from sfstream.state.sqlite import SqliteStateStore

    return SqliteStateStore(config.state.path, inline_commits=config.runtime.disk_io == "inline")


def open_sink(config: Config) -> Sink:
    """The configured sink (it opens its destination on first use)."""
    if config.sink.type == "file":
        from sfstream.sinks.file import FileSink

        assert config.sink.path is not None  # checked by the configuration
        return FileSink(config.sink.path, inline_writes=config.runtime.disk_io == "inline")
    from sfstream.sinks.stdout import StdoutSink

    return StdoutSink()


def open_registry(config: Config) -> SchemaRegistry:
    """The configured schema registry."""
    path = config.schema_registry.path
    assert path is not None  # set by load_config
    return SqliteSchemaRegistry(path)


@dataclass
class OrgSession:
    """An authenticated connection to the org for REST calls."""

    http: aiohttp.ClientSession
    tokens: TokenProvider
    rest: RestClient


@contextlib.asynccontextmanager
async def org_session(config: Config) -> AsyncIterator[OrgSession]:
    """An HTTP session with a token provider and a REST client (token fetched lazily)."""
    async with aiohttp.ClientSession(trust_env=True) as http:
        tokens = TokenProvider(credentials_of(config), http)
        yield OrgSession(http, tokens, RestClient(http, tokens, config.salesforce.api_version))
