"""The connector's commands: run, discover, check, state, manifest.

Exit codes, for every command: 0 success; 1 a runtime failure (Salesforce refused, a store
is unreachable, `check` found problems); 2 a usage or configuration error.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from sfstream.engine.config import Config, load_config
from sfstream.errors import ConfigError, SfStreamError

CONFIG_OPTION = click.option(
    "--config",
    "-c",
    "config_path",
    required=True,
    envvar="SFSTREAM_CONFIG",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Connector configuration (YAML) [env SFSTREAM_CONFIG].",
)


class ConfigProblem(click.ClickException):
    """A configuration error: reported as is, exit code 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"sfstream: configuration error: {self.message}", err=True)


class Failure(click.ClickException):
    """A runtime failure: one clear line, exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"sfstream: {self.message}", err=True)


def load(config_path: Path, *, log_level: str | None = None) -> Config:
    """Load the configuration and set up logging with its secrets redacted."""
    from sfstream.observability import configure_logging

    try:
        config = asyncio.run(load_config(config_path))
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    fmt = config.logging.format
    configure_logging(
        level=log_level or config.logging.level,
        json=None if fmt == "auto" else fmt == "json",
        secrets=config.secret_values(),
    )
    return config


@click.command()
@CONFIG_OPTION
@click.option(
    "--run-id",
    envvar="SFSTREAM_RUN_ID",
    default=None,
    help="The orchestrator's run id, put on every log line and record "
    "[env SFSTREAM_RUN_ID]; generated when absent.",
)
def run(config_path: Path, run_id: str | None) -> None:
    """Stream the configured channels until SIGTERM or SIGINT.

    Records go to the configured sink (stdout: JSON lines; logs are on stderr). Each stream
    resumes from its checkpoint. On SIGTERM/SIGINT it stops polling, writes and commits what
    it received, disconnects and exits 0. Exit 1 on a terminal error, 2 on a bad config.
    """
    import signal

    from sfstream.runners.connector import new_run_id
    from sfstream.runners.service import serve

    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Until the event loop takes over, a stop request is remembered, not fatal.
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    config = load(config_path)
    sys.exit(
        asyncio.run(serve(config, run_id or new_run_id(), early_signals=early, exit_process=True))
    )


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def discover(config_path: Path, as_json: bool) -> None:
    """Print the catalog: every stream the connector would run.

    With discovery.mode: metadata the org is asked (describe global, PushTopic,
    StreamingChannel, Tooling PlatformEventChannelMember); otherwise the streams come from
    the configuration.
    """
    from sfstream.engine.discovery import discover as find_streams
    from sfstream.runners.connector import org_session

    config = load(config_path, log_level="warning")

    async def catalog() -> list[dict[str, Any]]:
        async with org_session(config) as session:
            rest = session.rest if config.discovery.mode == "metadata" else None
            return [spec.as_dict() for spec in await find_streams(config, rest)]

    try:
        streams = asyncio.run(catalog())
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except SfStreamError as exc:
        raise Failure(str(exc)) from exc
    if as_json:
        sys.stdout.buffer.write(orjson.dumps({"streams": streams}, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return
    _table(
        ["STREAM", "CHANNEL", "KIND", "START", "ON INVALID", "SOURCE"],
        [
            [
                s["id"],
                s["channel"],
                s["kind"],
                _replay(s["initial_replay"]),
                s["on_invalid_replay"],
                s["source"],
            ]
            for s in streams
        ],
    )


def _replay(value: int) -> str:
    return {-1: "latest", -2: "earliest"}.get(value, str(value))


def _table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        )


@click.command()
@CONFIG_OPTION
def check(config_path: Path) -> None:
    """Verify everything a run needs, without streaming.

    The configuration, the login, every stream (an entity without change events enabled, a
    missing channel or topic, a wrong key field), the state store and the sink location.
    Exit 0 when all is well, 1 when something needs fixing.
    """
    from sfstream.runners.checks import run_checks

    config = load(config_path, log_level="warning")
    results = asyncio.run(run_checks(config))
    failed = False
    for ok, label, detail in results:
        mark = "ok  " if ok else "FAIL"
        failed = failed or not ok
        click.echo(f"{mark}  {label}" + (f": {detail}" if detail else ""))
    sys.exit(1 if failed else 0)


@click.group()
def state() -> None:
    """Show and change stream checkpoints (operators only: a wrong replayId skips or repeats
    events)."""


@state.command("show")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def state_show(config_path: Path, as_json: bool) -> None:
    """Print every stream's checkpoint."""
    from sfstream.runners.connector import open_state

    config = load(config_path, log_level="warning")

    async def read() -> list[dict[str, Any]]:
        store = open_state(config)
        try:
            found = await store.load(None)
        finally:
            await store.close()
        return [
            {"stream": c.stream, "replay_id": c.replay_id, "updated_at": c.updated_at}
            for c in sorted(found.values(), key=lambda c: c.stream)
        ]

    rows = _store_call(read)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps({"checkpoints": rows}, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return
    if not rows:
        click.echo("no checkpoints yet")
        return
    _table(
        ["STREAM", "REPLAY ID", "UPDATED AT"],
        [[r["stream"], str(r["replay_id"]), r["updated_at"]] for r in rows],
    )


@state.command("set")
@CONFIG_OPTION
@click.argument("stream")
@click.argument("replay_id", type=click.IntRange(min=0))
def state_set(config_path: Path, stream: str, replay_id: int) -> None:
    """Set STREAM's checkpoint to REPLAY_ID: the next run resumes after that event."""
    from sfstream.runners.connector import open_state
    from sfstream.streams import check_stream_id

    config = load(config_path, log_level="warning")
    try:
        check_stream_id(stream)
    except ConfigError as exc:
        raise click.BadParameter(str(exc), param_hint="STREAM") from exc

    async def write() -> None:
        store = open_state(config)
        try:
            await store.commit({stream: replay_id})
        finally:
            await store.close()

    _store_call(write)
    click.echo(f"{stream}: checkpoint set to {replay_id}")


@state.command("reset")
@CONFIG_OPTION
@click.argument("stream")
def state_reset(config_path: Path, stream: str) -> None:
    """Forget STREAM's checkpoint: the next run starts from its initial replay."""
    from sfstream.runners.connector import open_state

    config = load(config_path, log_level="warning")

    async def forget() -> bool:
        store = open_state(config)
        try:
            return await store.reset(stream)
        finally:
            await store.close()

    if _store_call(forget):
        click.echo(f"{stream}: checkpoint removed")
    else:
        raise Failure(f"{stream} has no checkpoint")


def _store_call(function: Any) -> Any:
    try:
        return asyncio.run(function())
    except SfStreamError as exc:
        raise Failure(str(exc)) from exc


@click.command()
@click.option(
    "--check",
    "check_it",
    is_flag=True,
    help="Validate the manifest and its consistency with the code.",
)
def manifest(check_it: bool) -> None:
    """Print the connector manifest (what sfstream is, for orchestrators and catalogs)."""
    from sfstream.manifest import check_manifest, manifest_text

    if not check_it:
        click.echo(manifest_text(), nl=False)
        return
    problems = check_manifest()
    for problem in problems:
        click.echo(f"FAIL  {problem}", err=True)
    if problems:
        sys.exit(1)
    click.echo("ok    manifest is valid and matches the code")


@click.group()
def schema() -> None:
    """Show the schemas registered for each stream (subject) and their history."""


def _registry_call(config_path: Path, function: Any) -> Any:
    from sfstream.runners.connector import open_registry

    config = load(config_path, log_level="warning")

    async def call() -> Any:
        registry = open_registry(config)
        try:
            return await function(registry)
        finally:
            await registry.close()

    return _store_call(call)


@schema.command("list")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schema_list(config_path: Path, as_json: bool) -> None:
    """Every subject with its latest version."""

    async def latest(registry: Any) -> list[dict[str, Any]]:
        rows = []
        for subject in await registry.subjects():
            version = await registry.get(subject)
            rows.append(
                {
                    "subject": subject,
                    "version": version.version,
                    "fields": len(version.schema.get("properties", {})),
                    "created_at": version.created_at,
                    "schema_id": version.schema_id,
                }
            )
        return rows

    rows = _registry_call(config_path, latest)
    if as_json:
        sys.stdout.buffer.write(orjson.dumps({"subjects": rows}, option=orjson.OPT_INDENT_2))
        sys.stdout.write("\n")
        return
    if not rows:
        click.echo("no schemas registered yet (they are registered when `sfstream run` starts)")
        return
    _table(
        ["SUBJECT", "VERSION", "FIELDS", "SALESFORCE SCHEMA ID", "REGISTERED AT"],
        [
            [
                r["subject"],
                str(r["version"]),
                str(r["fields"]),
                r["schema_id"] or "-",
                r["created_at"],
            ]
            for r in rows
        ],
    )


@schema.command("show")
@CONFIG_OPTION
@click.argument("subject")
@click.option(
    "--version",
    "version",
    type=click.IntRange(min=1),
    default=None,
    help="A version (default: the latest).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonschema", "avro"]),
    default="jsonschema",
    show_default=True,
)
def schema_show(config_path: Path, subject: str, version: int | None, fmt: str) -> None:
    """Print SUBJECT's schema (a stream id, or stream.entity for multi-entity streams)."""

    async def get(registry: Any) -> Any:
        return await registry.get(subject, version)

    found = _registry_call(config_path, get)
    if found is None:
        which = f"version {version} of " if version else ""
        raise Failure(f"no {which}schema registered for {subject} (see `sfstream schema list`)")
    body = found.schema if fmt == "jsonschema" else found.avro
    sys.stdout.buffer.write(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))
    sys.stdout.write("\n")


@schema.command("history")
@CONFIG_OPTION
@click.argument("subject")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schema_history(config_path: Path, subject: str, as_json: bool) -> None:
    """Every version of SUBJECT with what changed and whether it broke readers."""

    async def history(registry: Any) -> Any:
        return await registry.history(subject)

    versions = _registry_call(config_path, history)
    if not versions:
        raise Failure(f"no schema registered for {subject} (see `sfstream schema list`)")
    if as_json:
        rows = [
            {
                "version": v.version,
                "created_at": v.created_at,
                "schema_id": v.schema_id,
                "breaking": v.breaking,
                "diff": v.diff,
            }
            for v in versions
        ]
        sys.stdout.buffer.write(
            orjson.dumps({"subject": subject, "versions": rows}, option=orjson.OPT_INDENT_2)
        )
        sys.stdout.write("\n")
        return
    for v in versions:
        verdict = "BREAKING" if v.breaking else "compatible"
        click.echo(
            f"version {v.version}  {v.created_at}  schema id {v.schema_id or '-'}"
            + ("" if v.version == 1 else f"  {verdict}")
        )
        for change in v.diff:
            mark = "  " if change["compatible"] else "! "
            click.echo(
                f"  {mark}{change['change']:<20} {change['field']}: "
                f"{change['before'] or '-'} -> {change['after'] or '-'}"
            )


COMMANDS = (run, discover, check, state, schema, manifest)
