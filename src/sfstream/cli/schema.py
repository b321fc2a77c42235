"""`sfstream schema list|show|history|derive`: the schema registry.

`list`, `show` and `history` only read the registry: they open it read-only, need no access
to Salesforce, and never create or change it (a read-only file or directory is fine).
`derive` asks the org for each stream's current schema and registers it, so that
destination tables can be created before the first run.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from sfstream.cli.common import CONFIG_OPTION, Failure, call, load, print_json, table

if TYPE_CHECKING:
    from sfstream.engine.config import Config


@click.group()
def schema() -> None:
    """Show the schemas registered for each stream (subject) and their history, or register
    each stream's current schema before the first run (`derive`)."""


def _registry_config(config_path: Path) -> Config:
    # Reading the registry needs no login: the Salesforce secrets are not resolved.
    return load(config_path, log_level="warning", offline=True)


def _registry_exists(config: Config) -> tuple[bool, str]:
    """(whether the registry exists, where it is, for messages): an SQLite registry is a file
    that the first run creates; the others live in the state's database."""
    from sfstream.runners.wiring import describe_registry, registry_backend

    where = describe_registry(config)
    if registry_backend(config) == "sqlite":
        path = config.schema_registry.path
        return path is not None and path.is_file(), where
    return True, where


def _registry_call(config: Config, function: Any) -> Any:
    """Run `function(registry)` on the configured registry, opened read-only."""
    from sfstream.runners.wiring import open_registry

    async def run_with_registry() -> Any:
        registry = open_registry(config, read_only=True)
        try:
            return await function(registry)
        finally:
            await registry.close()

    return call(run_with_registry)


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

    config = _registry_config(config_path)
    exists, path = _registry_exists(config)
    rows = _registry_call(config, latest) if exists else []
    if as_json:
        print_json({"subjects": rows, "registry": path, "exists": exists})
        return
    if not rows:
        click.echo("no schemas registered yet (they are registered when `sfstream run` starts)")
        where = "has no schemas" if exists else "does not exist yet"
        click.echo(
            f"sfstream: the registry {path} {where}; `sfstream schema derive --config "
            f"{config_path}` registers each stream's current schema now, before any run",
            err=True,
        )
        return
    table(
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

    found = _registry_call(_registry_config(config_path), get)
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

    versions = _registry_call(_registry_config(config_path), history)
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
        print_json({"subject": subject, "versions": rows})
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


@schema.command("derive")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def schema_derive(config_path: Path, as_json: bool) -> None:
    """Register each stream's current schema, fetched from the org's event definitions.

    What a run registers when a stream starts at the tip, without streaming: destination
    tables can be created from `sfstream schema show` before the first run. A schema that is
    registered already keeps its version: deriving again registers nothing new. Streams that
    carry several entities get a subject per entity as their events arrive; they are listed
    and skipped.
    """
    from sfstream.engine.discovery import discover as find_streams
    from sfstream.runners.wiring import open_registry, org_session
    from sfstream.schema.tracker import Derived, SchemaTracker

    config = load(config_path, log_level="warning")

    async def derive() -> list[Derived]:
        registry = open_registry(config)
        try:
            async with org_session(config) as session:
                rest = session.rest if config.discovery.mode == "metadata" else None
                specs = await find_streams(config, rest)
                return await SchemaTracker(session.rest, registry).derive(specs)
        finally:
            await registry.close()

    results = call(derive)
    rows = [_derived_row(d) for d in results]
    failed = [r for r in rows if r["error"]]
    if as_json:
        print_json({"registry": str(config.schema_registry.path), "streams": rows})
    else:
        table(
            ["STREAM", "SUBJECT", "VERSION", "FIELDS", "RESULT", "SALESFORCE SCHEMA ID"],
            [
                [
                    r["stream"],
                    r["subject"] or "-",
                    str(r["version"] or "-"),
                    str(r["fields"] if r["fields"] is not None else "-"),
                    _result(r),
                    r["schema_id"] or "-",
                ]
                for r in rows
            ],
        )
        created = sum(1 for r in rows if r["created"])
        click.echo(
            f"{created} new version{'s' if created != 1 else ''} registered in "
            f"{config.schema_registry.path}"
        )
    if failed:
        raise Failure(f"{len(failed)} of {len(rows)} stream schemas could not be derived")


def _derived_row(derived: Any) -> dict[str, Any]:
    version = derived.version
    return {
        "stream": derived.spec.id,
        "channel": derived.spec.channel,
        "subject": version.subject if version else None,
        "version": version.version if version else None,
        "created": derived.created,
        "fields": len(version.schema.get("properties", {})) if version else None,
        "schema_id": version.schema_id if version else None,
        "fingerprint": version.fingerprint if version else None,
        "skipped": derived.skipped,
        "error": derived.error,
    }


def _result(row: dict[str, Any]) -> str:
    if row["error"]:
        return f"FAILED: {row['error']}"
    if row["skipped"]:
        return f"skipped: {row['skipped']}"
    return "registered" if row["created"] else "already registered"
