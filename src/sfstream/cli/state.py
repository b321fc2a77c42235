"""`sfstream state init|show|set|reset`: the checkpoints.

`init` creates where the state and the schema registry live (the DynamoDB table, which a run
never creates; the PostgreSQL tables and SQLite files, which a run would create on first use)
and says what it did; run again, it changes nothing. `set` and `reset` record an operator's
position (`StateStore.override`): the next run starts there whatever the sink already holds,
and writes a GAP note into the sink. They refuse a stream that a running `sfstream run` owns
(`StateStore.owner`), because the run would overwrite the change with its next checkpoint,
and `set` refuses a stream this configuration does not stream; `--force` does both anyway.
`show` opens the store read-only.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import click

from sfstream.cli.common import CONFIG_OPTION, Failure, call, load, print_json, table
from sfstream.engine.config import Config
from sfstream.errors import ConfigError, SfStreamError
from sfstream.state.base import Override, StateStore, StreamOwnedError

_POSITIONS = {"earliest": -2, "latest": -1, "-2": -2, "-1": -1}
_FORCE = click.option(
    "--force",
    is_flag=True,
    help="Change it even for a stream this configuration does not stream, or while a "
    "running `sfstream run` owns it (which then overwrites it with its next checkpoint).",
)


class _Position(click.ParamType[int]):
    """A replayId (0 or more), or `earliest` / `latest` (also written -2 / -1)."""

    name = "replay_id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int) and not isinstance(value, bool):
            text = str(value)
        else:
            text = str(value).strip().lower()
        if text in _POSITIONS:
            return _POSITIONS[text]
        try:
            number = int(text)
        except ValueError:
            number = None
        if number is None or number < 0:
            self.fail(
                f"{value!r} is not a valid integer: give a replayId (0 or more), "
                f"earliest (or -2) or latest (or -1)",
                param,
                ctx,
            )
        return number


@click.group()
def state() -> None:
    """Show and change stream checkpoints (operators only: a wrong replayId skips or repeats
    events)."""


@state.command("init")
@CONFIG_OPTION
def state_init(config_path: Path) -> None:
    """Create the state store's tables and the schema registry's, where missing.

    DynamoDB: the table `state.table` (on-demand capacity, string keys pk and sk), which
    holds the checkpoints, the run locks and the schema registry; a run never creates it.
    PostgreSQL: the checkpoint table, its overrides table and `sfstream_schemas`. SQLite: the
    state database and the schema registry files. Existing tables and files are left as they
    are: running it again changes nothing. Needs no Salesforce login.
    """
    config = load(config_path, log_level="warning", offline=True)
    for line in call(lambda: _initialize(config)):
        click.echo(line)


@state.command("show")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def state_show(config_path: Path, as_json: bool) -> None:
    """Print every stream's checkpoint, and operators' changes the next run takes over.

    The state store is only read: this works on a read-only copy too, and without the
    Salesforce secrets.
    """
    from sfstream.runners.wiring import open_state

    config = load(config_path, log_level="warning", offline=True)

    async def read() -> list[dict[str, Any]]:
        store = open_state(config, read_only=True)
        try:
            found = await store.load(None)
            pending = await store.overrides(None)
        finally:
            await store.close()
        rows = []
        for stream in sorted(set(found) | set(pending)):
            checkpoint = found.get(stream)
            override = pending.get(stream)
            rows.append(
                {
                    "stream": stream,
                    "replay_id": checkpoint.replay_id if checkpoint is not None else None,
                    "updated_at": checkpoint.updated_at if checkpoint is not None else None,
                    "pending": _pending_json(override) if override is not None else None,
                }
            )
        return rows

    rows = call(read)
    if as_json:
        print_json({"checkpoints": rows})
        return
    if not rows:
        click.echo("no checkpoints yet")
        return
    header = ["STREAM", "REPLAY ID", "UPDATED AT"]
    cells = [[r["stream"], _text(r["replay_id"]), _text(r["updated_at"])] for r in rows]
    if any(r["pending"] for r in rows):
        header.append("PENDING (taken over by the next run)")
        for cell, r in zip(cells, rows, strict=True):
            cell.append(_pending_text(r["pending"]))
    table(header, cells)


@state.command("set", context_settings={"ignore_unknown_options": True})
@CONFIG_OPTION
@_FORCE
@click.argument("stream")
@click.argument("replay_id", type=_Position(), metavar="REPLAY_ID|earliest|latest")
def state_set(config_path: Path, force: bool, stream: str, replay_id: int) -> None:
    """Set STREAM's checkpoint to REPLAY_ID: the next run resumes after that event.

    `earliest` (or -2) and `latest` (or -1) forget the checkpoint: the next run starts from
    the oldest event Salesforce retains, or from new events only. The next run takes this
    position whatever the sink already holds, and writes a GAP note (`operator_set`) into
    the sink, so that readers see the rewind or the skip.
    """
    from sfstream.runners.wiring import open_state
    from sfstream.streams import check_stream_id

    config = load(config_path, log_level="warning")
    try:
        check_stream_id(stream)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="STREAM") from exc
    if not force:
        known, note = call(lambda: _known_streams(config, stream))
        if stream not in known:
            raise click.BadParameter(_unknown(stream, known, note), param_hint="STREAM")

    async def write() -> int | None:
        store = open_state(config)
        try:
            async with _owning(store, stream, force, config.state.leased):
                current = (await store.load([stream])).get(stream)
                await store.override(stream, replay_id)
        finally:
            await store.close()
        return current.replay_id if current is not None else None

    was = call(write)
    before = f"was {was}" if was is not None else "it had none"
    if replay_id >= 0:
        click.echo(
            f"{stream}: checkpoint set to {replay_id} ({before}); the next run resumes after "
            f"{replay_id}, whatever the sink holds, and writes a GAP note (operator_set) into "
            f"the sink"
        )
    else:
        where = "earliest" if replay_id == -2 else "latest"
        click.echo(
            f"{stream}: checkpoint removed ({before}); the next run starts from {where}, "
            f"whatever the sink holds, and writes a GAP note (operator_set) into the sink"
        )


@state.command("reset")
@CONFIG_OPTION
@_FORCE
@click.argument("stream")
def state_reset(config_path: Path, force: bool, stream: str) -> None:
    """Forget STREAM's checkpoint: the next run starts from its initial replay.

    The next run does so whatever the sink already holds, and writes a GAP note
    (`operator_reset`) into the sink. A stream without a checkpoint is left alone (exit 1).
    """
    from sfstream.runners.wiring import open_state

    config = load(config_path, log_level="warning")

    async def forget() -> tuple[int | None, Override | None]:
        store = open_state(config)
        try:
            async with _owning(store, stream, force, config.state.leased):
                current = (await store.load([stream])).get(stream)
                pending = (await store.overrides([stream])).get(stream)
                if current is None and (pending is None or pending.start is None):
                    return None, pending
                await store.override(stream, None)
        finally:
            await store.close()
        return (current.replay_id if current is not None else None), pending

    was, pending = call(forget)
    initial = _initial_replay(config, stream)
    if was is None and (pending is None or pending.start is None):
        already = (
            f" (a reset is already pending: the next run starts from {initial})"
            if pending is not None
            else ""
        )
        raise Failure(f"{stream} has no checkpoint: nothing to reset{already}")
    before = f"was {was}" if was is not None else "a pending `state set` is replaced"
    click.echo(
        f"{stream}: checkpoint removed ({before}); the next run starts from {initial}, "
        f"whatever the sink holds, and writes a GAP note (operator_reset) into the sink"
    )


# -- helpers -------------------------------------------------------------------------------


async def _initialize(config: Config) -> list[str]:
    """Create the state's and the schema registry's storage; a line for each thing done."""
    from sfstream.runners.wiring import describe_registry, open_registry, registry_backend

    lines: list[str] = []
    backend = config.state.backend
    if backend == "dynamodb":
        lines.append(await _init_dynamodb(config))
    elif backend == "postgres":
        lines.extend(await _init_postgres(config))
    else:
        lines.append(await _init_sqlite(config))
    where = describe_registry(config)
    if registry_backend(config) == "dynamodb":
        lines.append(f"schema registry: in the same table ({where}), under pk = schemas")
    elif registry_backend(config) == "sqlite":
        path = config.schema_registry.path
        assert path is not None  # set by load_config for an SQLite registry
        existed = path.is_file()
        registry = open_registry(config)
        try:
            await registry.subjects()  # opening it writable creates the file and its table
        finally:
            await registry.close()
        done = "is ready (it existed)" if existed else "created"
        lines.append(f"schema registry: {path} {done}")
    return lines


async def _init_dynamodb(config: Config) -> str:
    from sfstream.state.dynamodb import DynamoDbStateStore

    state = config.state
    assert state.table is not None  # checked by the configuration
    store = DynamoDbStateStore(state.table, region=state.region, endpoint_url=state.endpoint_url)
    try:
        created = await store.create_table()
    finally:
        await store.close()
    region = f" in {state.region}" if state.region else ""
    if created:
        return (
            f"state: created DynamoDB table {state.table}{region} (on-demand capacity; string "
            f"keys pk (HASH) and sk (RANGE))"
        )
    return (
        f"state: DynamoDB table {state.table}{region} exists with the keys sfstream needs; "
        f"left as it is"
    )


async def _init_postgres(config: Config) -> list[str]:
    import psycopg

    from sfstream.runners.wiring import open_registry, open_state
    from sfstream.schema.postgres import PostgresSchemaRegistry
    from sfstream.state.postgres import PostgresStateStore

    assert config.state.dsn is not None  # checked by the configuration
    store = open_state(config)
    assert isinstance(store, PostgresStateStore)
    names = store.tables
    try:
        try:
            async with await psycopg.AsyncConnection.connect(
                config.state.dsn.get_secret_value(), autocommit=True, connect_timeout=10
            ) as conn:
                cursor = await conn.execute(
                    "SELECT name FROM unnest(%s::text[]) AS name WHERE to_regclass(name) IS NULL",
                    (names,),
                )
                missing = {str(row[0]) for row in await cursor.fetchall()}
        except psycopg.Error:
            missing = set(names)  # the store says what is wrong, below
        await store.overrides(None)  # a writable store creates its tables on first use
    finally:
        await store.close()
    lines = [
        f"state: {'created' if name in missing else 'kept the existing'} table {name} in "
        f"{store.database}"
        for name in names
    ]
    registry = open_registry(config)
    if isinstance(registry, PostgresSchemaRegistry):
        try:
            created = await registry.create_table()
        finally:
            await registry.close()
        done = "created" if created else "kept the existing"
        lines.append(f"schema registry: {done} table {registry.table} in {registry.database}")
    else:
        await registry.close()
    return lines


async def _init_sqlite(config: Config) -> str:
    from sfstream.runners.wiring import open_state

    path = config.state.path
    existed = path.is_file()
    store = open_state(config)
    try:
        await store.overrides(None)  # a writable store creates and migrates its file
    finally:
        await store.close()
    if existed:
        return f"state: the database {path} is ready (it existed; migrated if it was older)"
    return f"state: created the database {path} (mode 600)"


@contextlib.asynccontextmanager
async def _owning(
    store: StateStore, stream: str, force: bool, leased: bool = False
) -> AsyncIterator[None]:
    """Own `stream` while changing it; a stream a run owns is refused (or, with --force,
    changed with a warning). With leases, its lease is held meanwhile too."""
    from sfstream.engine.leases import held_by_operator
    from sfstream.state.base import LeaseStore

    try:
        async with contextlib.AsyncExitStack() as owned:
            await owned.enter_async_context(store.owner([stream]))
            if leased and isinstance(store, LeaseStore):
                await owned.enter_async_context(held_by_operator(store, [stream]))
            yield
            return
    except StreamOwnedError as exc:
        if not force:
            raise Failure(f"{exc}; stop it first or use --force") from exc
        click.echo(
            f"sfstream: warning: {exc}; changed anyway (--force): the run overwrites the "
            f"change with its next checkpoint of {stream}, or takes it over when it restarts",
            err=True,
        )
    yield


async def _known_streams(config: Config, stream: str) -> tuple[list[str], str | None]:
    """The ids of the streams this configuration runs, and why the list may be incomplete.

    With discovery from metadata the org is asked, unless `stream` is configured anyway.
    """
    from sfstream.engine.discovery import discover, streams_from_config

    configured = sorted(spec.id for spec in streams_from_config(config))
    if config.discovery.mode != "metadata" or stream in configured:
        return configured, None
    from sfstream.runners.wiring import org_session

    try:
        async with org_session(config) as session:
            return sorted(spec.id for spec in await discover(config, session.rest)), None
    except SfStreamError as exc:
        return configured, f"the org's streams could not be listed ({exc})"


def _unknown(stream: str, known: list[str], note: str | None) -> str:
    listed = ", ".join(known) if known else "none"
    text = f"{stream} is not one of the streams of this configuration (known: {listed})"
    if note:
        text += f"; {note}"
    return f"{text}. Check the name (`sfstream discover` lists them), or use --force"


def _initial_replay(config: Config, stream: str) -> str:
    from sfstream.engine.discovery import streams_from_config

    for spec in streams_from_config(config):
        if spec.id == stream:
            where = {-2: "earliest", -1: "latest"}.get(
                spec.initial_replay, f"after replayId {spec.initial_replay}"
            )
            return f"its initial replay ({where})"
    return "its initial replay"


def _pending_json(override: Override) -> dict[str, Any]:
    start = override.start
    return {
        "start": {-2: "earliest", -1: "latest", None: "initial_replay"}.get(start, start),
        "previous": override.previous,
        "requested_at": override.requested_at,
    }


def _pending_text(pending: dict[str, Any] | None) -> str:
    if pending is None:
        return ""
    start = pending["start"]
    where = f"after {start}" if isinstance(start, int) else str(start).replace("_", " ")
    was = pending["previous"]
    return f"start {where} (was {was if was is not None else 'none'})"


def _text(value: object) -> str:
    return "-" if value is None else str(value)
