"""`sfstream schema list|show|history`: the schema registry."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click
import orjson

from sfstream.cli.common import CONFIG_OPTION, Failure, call, load, print_json, table


@click.group()
def schema() -> None:
    """Show the schemas registered for each stream (subject) and their history."""


def _registry_call(config_path: Path, function: Any) -> Any:
    from sfstream.runners.wiring import open_registry

    config = load(config_path, log_level="warning")

    async def run_with_registry() -> Any:
        registry = open_registry(config)
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

    rows = _registry_call(config_path, latest)
    if as_json:
        print_json({"subjects": rows})
        return
    if not rows:
        click.echo("no schemas registered yet (they are registered when `sfstream run` starts)")
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
