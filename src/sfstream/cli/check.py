"""`sfstream check`: everything a run needs, verified without streaming and without changing
anything.

It only looks. The streams are checked exactly as `sfstream run` checks them at start
(`sfstream.engine.discovery.validate_streams`). An existing SQLite state database is opened
read-only; a missing one, or a missing sink file, is reported as "would be created" when its
directory exists and is writable, and as "cannot be created" naming the missing directory
(or the one that is not writable) otherwise: nothing is created, not even directories. A
PostgreSQL state store is read in a read-only session: its table is not created.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sfstream.cli.common import CONFIG_OPTION, load
from sfstream.engine.config import Config
from sfstream.errors import ConfigError, ExitCode, SfStreamError

if TYPE_CHECKING:
    from sfstream.salesforce.rest import RestClient

CheckResult = tuple[bool, str, str]
CONFIGURATION = "configuration"


@click.command()
@CONFIG_OPTION
def check(config_path: Path) -> None:
    """Verify everything a run needs, without streaming and without changing anything.

    The configuration, the login, every stream (an entity without change events enabled, a
    missing channel or topic, a wrong key field), the state store and the sink location.
    Exit 0 when all is well, 1 when something needs fixing, 2 when the configuration itself
    is wrong (colliding stream ids).
    """
    config = load(config_path, log_level="warning")
    results = asyncio.run(run_checks(config))
    code = ExitCode.OK
    for ok, label, detail in results:
        mark = "ok  " if ok else "FAIL"
        if not ok:
            code = max(code, ExitCode.USAGE if label == CONFIGURATION else ExitCode.FAILURE)
        click.echo(f"{mark}  {label}" + (f": {detail}" if detail else ""))
    sys.exit(code)


async def run_checks(config: Config) -> list[CheckResult]:
    """(ok, what, detail) for the configuration, the login, each stream, the state store and
    the sink."""
    from sfstream.engine.discovery import streams_from_config
    from sfstream.runners.wiring import org_session

    results: list[CheckResult] = [(True, CONFIGURATION, "")]
    try:
        streams_from_config(config)  # colliding ids among the configured streams
    except ConfigError as exc:
        results[0] = (False, CONFIGURATION, str(exc))
    async with org_session(config) as session:
        try:
            token = await session.tokens.token()
        except SfStreamError as exc:
            results.append((False, "login", str(exc)))
        else:
            results.append((True, "login", f"instance {token.instance_url}"))
            if results[0][0]:
                results += await _check_streams(config, session.rest, results)
            results += await _check_allocations(session.rest)
    results.append(await _check_state(config))
    if config.sink.type in ("kafka", "postgres", "s3"):
        results.append(await asyncio.to_thread(_check_remote_sink, config))
    else:
        results.append(_check_sink(config))
    return results


async def _check_streams(
    config: Config, rest: RestClient, results: list[CheckResult]
) -> list[CheckResult]:
    """The warnings and a line per stream, as `run` checks them at start; a stream id
    collision replaces the configuration line of `results`."""
    from sfstream.engine.discovery import failures, stream_label, validate_streams

    try:
        specs, problems = await validate_streams(config, rest)
    except ConfigError as exc:
        results[0] = (False, CONFIGURATION, str(exc))
        return []
    except SfStreamError as exc:
        return [(False, "streams", str(exc))]
    found: list[CheckResult] = [
        (True, f"warning {problem.channel}", problem.message)
        for problem in problems
        if problem.severity == "warning"
    ]
    failed = {failure.spec.channel: failure.text for failure in failures(specs, problems)}
    for spec in specs:
        text = failed.get(spec.channel)
        # A failure is worded as `run` words it: `stream ID (CHANNEL): what is wrong`.
        found.append((True, stream_label(spec), "") if text is None else (False, text, ""))
    return found


async def _check_allocations(rest: RestClient) -> list[CheckResult]:
    """A line per event allocation of `/limits`; a spent delivery allocation fails (nothing
    can stream until it recovers). Reading `/limits` needs the View Setup and Configuration
    permission: without it the line says so, and the check passes (a run goes on without
    the allocation gauges)."""
    from sfstream.salesforce.limits import DELIVERY_ALLOCATIONS, read_allocations

    try:
        allocations = await read_allocations(rest)
    except SfStreamError as exc:
        return [(True, "allocations", f"cannot be read ({exc}); a run goes on without them")]
    found: list[CheckResult] = []
    for allocation in allocations:
        spent = allocation.remaining <= 0 and allocation.name in DELIVERY_ALLOCATIONS
        detail = f"{allocation.remaining:,} of {allocation.maximum:,} left"
        if spent:
            detail += ": spent, streaming waits until it recovers"
        found.append((not spent, f"allocation {allocation.name}", detail))
    return found


# -- the state store -------------------------------------------------------------------------


async def _check_state(config: Config) -> CheckResult:
    label = f"state store ({config.state.backend})"
    if config.state.backend == "postgres":
        assert config.state.dsn is not None  # checked by the configuration
        ok, detail = await _check_postgres(config.state.dsn.get_secret_value())
    else:
        ok, detail = await asyncio.to_thread(_check_sqlite, config.state.path.expanduser())
    return (ok, label, detail)


def _check_sqlite(path: Path) -> tuple[bool, str]:
    """Read an existing database read-only; otherwise, whether it could be created."""
    from sfstream.state.sqlite import SCHEMA_VERSION

    if not _exists(path):
        why_not = _cannot_create(path)
        if why_not is not None:
            return False, f"{path} cannot be created: {why_not}"
        return True, f"{path} would be created"
    problem = _unusable_file(path) or _not_private(path)
    if problem is not None:
        return False, problem
    try:
        with contextlib.closing(_open_read_only(path)) as conn:
            version = int(conn.execute("PRAGMA user_version").fetchone()[0])
            health = str(conn.execute("PRAGMA quick_check(1)").fetchone()[0])
            if health != "ok":
                return False, _corrupt(path, health)
            if version > SCHEMA_VERSION:
                return False, (
                    f"{path} has schema version {version}, newer than this sfstream "
                    f"understands ({SCHEMA_VERSION}); upgrade sfstream"
                )
            tables = conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                ("sfstream_checkpoints",),
            ).fetchall()
            if not tables:
                return True, f"{path}: no checkpoints yet (its table would be created)"
            count = int(conn.execute("SELECT count(*) FROM sfstream_checkpoints").fetchone()[0])
    except sqlite3.DatabaseError as exc:
        code = getattr(exc, "sqlite_errorcode", -1) & 0xFF
        if code in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
            return False, _corrupt(path, str(exc))
        return False, f"{path} cannot be read: {exc}"
    return True, f"{path}: {count} checkpoint(s)"


def _open_read_only(path: Path) -> sqlite3.Connection:
    """A read-only connection that leaves no file behind.

    A WAL database opened read-only still gets `-wal` and `-shm` companions, left behind
    when they did not exist. They exist while a connector has the database open: then
    read through them; otherwise nobody is writing, and the file is read as immutable.
    """
    uri = path.resolve().as_uri() + "?mode=ro"
    companions = (Path(f"{path}-wal"), Path(f"{path}-shm"))
    if not all(_exists(companion) for companion in companions):
        uri += "&immutable=1"
    return sqlite3.connect(uri, uri=True, isolation_level=None)


def _unusable_file(path: Path) -> str | None:
    if not path.is_file():
        return f"{path} is not a regular file"
    if not _writable(path):
        return f"{path} is not writable; check its owner and mode"
    if not _writable(path.parent):
        return f"{path.parent} is not writable (the database needs its -wal and -shm there)"
    return None


def _not_private(path: Path) -> str | None:
    """What the store refuses at open: a database others may read that it cannot tighten."""
    info = path.stat()
    mode = stat.S_IMODE(info.st_mode)
    if mode & (stat.S_IRWXG | stat.S_IRWXO) and info.st_uid != os.geteuid():
        return (
            f"{path} is accessible by other users (mode {mode:04o}) and owned by uid "
            f"{info.st_uid}, so sfstream cannot make it private; its owner should run: "
            f"chmod 600 {path}"
        )
    return None


def _corrupt(path: Path, detail: str) -> str:
    return (
        f"{path} is corrupt or not an SQLite database ({detail}); move it aside and restore "
        "a backup, or remove it to start every stream from its initial replay policy"
    )


async def _check_postgres(dsn: str) -> tuple[bool, str]:
    """Connect in a read-only session and look for the table, without creating it."""
    from sfstream.state.postgres import PostgresStateStore

    try:
        store = PostgresStateStore(dsn)  # validates the DSN and the table name; no connection
    except ConfigError as exc:
        return False, str(exc)
    import psycopg
    from psycopg import sql

    params, password = _read_only_params(dsn)
    table = store.table
    try:
        async with await psycopg.AsyncConnection.connect(autocommit=True, **params) as conn:
            cursor = await conn.execute("SELECT to_regclass(%s)::text", (table,))
            row = await cursor.fetchone()
            if row is not None and row[0] is not None:
                query = sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(*table.split(".")))
                counted = await (await conn.execute(query)).fetchone()
                count = int(counted[0]) if counted is not None else 0
                return True, f"table {table} in {store.database}: {count} checkpoint(s)"
            cursor = await conn.execute(
                "SELECT s, s IS NOT NULL AND has_schema_privilege(s, 'CREATE') "
                "FROM (SELECT current_schema() AS s) AS current"
            )
            schema, may_create = await cursor.fetchone() or (None, False)
    except psycopg.Error as exc:
        text = str(exc).strip() or "the server refused"
        if password:
            text = text.replace(password, "***")
        return False, f"{store.database}: {text}"
    if schema is None:
        return False, (
            f"table {table} cannot be created in {store.database}: no schema of the "
            "search_path exists"
        )
    if not may_create:
        return False, (
            f"table {table} cannot be created in {store.database}: the user may not create "
            f"tables in schema {schema}"
        )
    return True, f"table {table} would be created in {store.database}"


# -- the sink --------------------------------------------------------------------------------


def _check_sink(config: Config) -> CheckResult:
    if config.sink.type == "stdout":
        return (True, "sink (stdout)", "")
    path = config.sink.path
    assert path is not None
    label = f"sink ({path})"
    path = path.expanduser()
    if _exists(path):
        if path.is_dir():
            return (False, label, f"{path} is a directory")
        if not _writable(path):
            return (False, label, f"cannot write there: {path} is not writable")
        return (True, label, "appends to the existing file")
    why_not = _cannot_create(path)
    if why_not is not None:
        return (False, label, f"cannot be created: {why_not}")
    return (True, label, "would be created")


def _read_only_params(dsn: str) -> tuple[dict[str, Any], str]:
    """The connection parameters of `dsn` for a look that changes nothing (a read-only
    session, a 10 s connect timeout), and its password (to mask in messages)."""
    import psycopg

    params: dict[str, Any] = psycopg.conninfo.conninfo_to_dict(dsn)
    params.setdefault("connect_timeout", 10)
    params.setdefault("application_name", "sfstream check")
    params["options"] = f"{params.get('options') or ''} -c default_transaction_read_only=on"
    return params, str(params.get("password") or "")


def _check_remote_sink(config: Config) -> CheckResult:
    """Reach a Kafka, PostgreSQL or S3 sink and look, without writing anything. Blocking:
    run it in a thread."""
    sink = config.sink
    try:
        if sink.type == "kafka":
            return _check_kafka(config)
        if sink.type == "postgres":
            return _check_postgres_sink(config)
        return _check_s3(config)
    except ImportError as exc:
        extra = {"kafka": "kafka", "postgres": "postgres", "s3": "aws"}[sink.type]
        return (
            False,
            f"sink ({sink.type})",
            f"needs {exc.name}: pip install 'sfstream[{extra}]'",
        )


def _check_kafka(config: Config) -> CheckResult:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    sink = config.sink
    assert sink.bootstrap_servers is not None  # checked by the configuration
    label = f"sink (kafka {sink.bootstrap_servers})"
    settings: dict[str, Any] = {
        name: value.get_secret_value() if hasattr(value, "get_secret_value") else value
        for name, value in sink.producer
        if not name.startswith(("enable.idempotence", "acks", "linger", "batch", "compression"))
    }
    settings = {
        name: ("true" if value is True else "false" if value is False else value)
        for name, value in settings.items()
    }
    settings["bootstrap.servers"] = sink.bootstrap_servers
    try:
        metadata = AdminClient(settings).list_topics(timeout=10)
    except KafkaException as exc:
        return (False, label, f"the brokers did not answer: {exc.args[0]}")
    except ValueError as exc:  # a property librdkafka does not know
        return (False, label, str(exc))
    brokers = len(metadata.brokers)
    control = sink.control_topic
    where = "exists" if control in metadata.topics else "does not exist yet"
    return (True, label, f"{brokers} broker(s); control topic {control} {where}")


def _check_postgres_sink(config: Config) -> CheckResult:
    import psycopg

    from sfstream.state.pg import redact_dsn

    dsn = config.sink_dsn
    assert dsn is not None  # checked by the configuration
    table = config.sink.table
    label = f"sink (postgres {redact_dsn(dsn)})"
    try:
        params, password = _read_only_params(dsn)
    except psycopg.ProgrammingError:
        return (False, label, "malformed DSN")
    try:
        with psycopg.connect(autocommit=True, **params) as conn:
            row = conn.execute("SELECT to_regclass(%s)::text", (table,)).fetchone()
    except psycopg.Error as exc:
        text = str(exc).strip() or "the server refused"
        return (False, label, text.replace(password, "***") if password else text)
    found = row is not None and row[0] is not None
    return (True, label, f"table {table} {'exists' if found else 'would be created'}")


def _check_s3(config: Config) -> CheckResult:
    from botocore.exceptions import BotoCoreError, ClientError

    from sfstream.secrets._boto import client

    sink = config.sink
    label = f"sink (s3://{sink.bucket}/{sink.prefix})"
    try:
        s3 = client("s3", region=sink.region, endpoint_url=sink.endpoint_url)
        s3.head_bucket(Bucket=sink.bucket)
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket"):
            return (False, label, f"bucket {sink.bucket} does not exist")
        if code in ("403", "AccessDenied"):
            return (False, label, f"access to bucket {sink.bucket} is denied")
        return (False, label, f"S3 answered {code or exc}")
    except BotoCoreError as exc:
        return (False, label, f"cannot reach S3: {exc}")
    return (True, label, "the bucket is reachable")


# -- looking without touching ----------------------------------------------------------------


def _exists(path: Path) -> bool:
    try:
        path.lstat()
    except OSError:
        return False
    return True


def _writable(path: Path) -> bool:
    """Whether this process may write `path` (a directory: create files in it)."""
    mode = os.W_OK | (os.X_OK if path.is_dir() else 0)
    effective = os.access in os.supports_effective_ids
    return os.access(path, mode, effective_ids=effective)


def _cannot_create(path: Path) -> str | None:
    """Why a file cannot be created at `path` (its directory must exist); None if it can."""
    directory = path.parent
    if not _exists(directory):
        missing = directory
        while missing.parent != missing and not _exists(missing.parent):
            missing = missing.parent
        if missing.parent != missing and not missing.parent.is_dir():
            return f"{missing.parent} is not a directory"
        return f"{missing} does not exist"
    if not directory.is_dir():
        return f"{directory} is not a directory"
    if not _writable(directory):
        return f"{directory} is not writable"
    return None
