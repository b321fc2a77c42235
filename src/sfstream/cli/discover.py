"""`sfstream discover`: the catalog of streams, with each stream's schema on request."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from sfstream.cli.common import CONFIG_OPTION, Failure, call, load, print_json, table

if TYPE_CHECKING:
    from sfstream.engine.discovery import OrgMetadata
    from sfstream.salesforce.rest import RestClient
    from sfstream.streams import StreamSpec


@click.command()
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--with-schemas",
    is_flag=True,
    help="Add each stream's current schema (JSON Schema and Avro), fetched from the org.",
)
def discover(config_path: Path, as_json: bool, with_schemas: bool) -> None:
    """Print the catalog: every stream the connector would run.

    With discovery.mode: metadata the org is asked (describe global, PushTopic,
    StreamingChannel, Tooling PlatformEventChannelMember); otherwise the streams come from
    the configuration.

    With --with-schemas, each stream's current schema is derived from the org's event
    definitions (eventSchema, else describe), as a run derives it; nothing is registered
    (`sfstream schema derive` does). Streams that carry several entities have one schema per
    entity, learnt from their events, and none here.

    A change-event stream that nothing is selected for (its entity is not selected for
    Change Data Capture, a custom channel has no members) runs and stays empty until an
    admin selects it. When the org is asked, such a stream is marked: `cdc_selected: false`
    in --json, a `not selected:` note under the table. `cdc_selected` is null for other
    streams and when the org is not asked (streams from the configuration, without
    --with-schemas; `sfstream check` asks it).
    """
    from sfstream.engine.discovery import (
        CDC_KINDS,
        cdc_selected,
        read_metadata,
        streams_from_config,
        streams_from_metadata,
    )
    from sfstream.runners.wiring import org_session

    # Streams listed in the configuration need no login: the Salesforce secrets are
    # resolved only when the org must be asked (metadata discovery, schemas).
    config = load(config_path, log_level="warning", offline=True)
    if config.discovery.mode == "metadata" or with_schemas:
        config = load(config_path, log_level="warning")

    async def catalog() -> list[dict[str, Any]]:
        if config.discovery.mode == "config" and not with_schemas:
            return [_entry(spec, None) for spec in streams_from_config(config)]
        async with org_session(config) as session:
            metadata: OrgMetadata | None
            if config.discovery.mode == "metadata":
                metadata = await read_metadata(session.rest)
                specs = streams_from_metadata(config, metadata)
            else:
                specs = streams_from_config(config)
                kinds = {spec.kind for spec in specs} & CDC_KINDS
                metadata = await read_metadata(session.rest, kinds) if kinds else None
            streams = [
                _entry(spec, None if metadata is None else cdc_selected(spec, metadata))
                for spec in specs
            ]
            if with_schemas:
                for spec, stream in zip(specs, streams, strict=True):
                    stream["schema"] = await _schema_of(spec, session.rest)
            return streams

    streams = call(catalog)
    failed = [s["id"] for s in streams if with_schemas and s["schema"]["error"]]
    if as_json:
        print_json({"streams": streams})
    else:
        header = ["STREAM", "CHANNEL", "KIND", "START", "ON INVALID", "SOURCE"]
        table(
            [*header, "SCHEMA"] if with_schemas else header,
            [
                [
                    s["id"],
                    s["channel"],
                    s["kind"],
                    _replay(s["initial_replay"]),
                    s["on_invalid_replay"],
                    s["source"],
                    *([_summary(s["schema"])] if with_schemas else []),
                ]
                for s in streams
            ],
        )
        _notes(streams)
    if failed:
        raise Failure(f"the schema of {', '.join(failed)} could not be derived")


def _entry(spec: StreamSpec, selected: bool | None) -> dict[str, Any]:
    """A stream in the catalog: its settings and whether its change events are selected."""
    return {**spec.as_dict(), "cdc_selected": selected}


def _notes(streams: list[dict[str, Any]]) -> None:
    """Under the table: each stream that would stay empty until its entity is selected."""
    unselected = [s for s in streams if s["cdc_selected"] is False]
    if not unselected:
        return
    click.echo("")
    for stream in unselected:
        what = stream["entity"] if stream["kind"] == "change_events" else None
        click.echo(
            f"not selected: {stream['id']} ({stream['channel']}) stays empty until "
            + (
                f"{what} is selected in Setup > Change Data Capture"
                if what
                else "an entity is selected on its channel"
            )
        )


async def _schema_of(spec: StreamSpec, rest: RestClient) -> dict[str, Any]:
    """The `schema` entry of a stream in the catalog."""
    from sfstream.errors import SfStreamError
    from sfstream.schema.tracker import current_schema, multi_entity

    entry: dict[str, Any] = {
        "subject": None,
        "json_schema": None,
        "avro": None,
        "schema_id": None,
        "fingerprint": None,
        "origin": None,
        "fields": None,
        "note": None,
        "error": None,
    }
    if multi_entity(spec):
        entry["note"] = "one subject per entity, learnt from events"
        return entry
    try:
        current = await current_schema(spec, rest)
    except SfStreamError as exc:
        entry["error"] = str(exc)
        return entry
    entry.update(
        subject=current.subject,
        json_schema=current.schema,
        avro=current.avro,
        schema_id=current.schema_id,
        fingerprint=current.fingerprint,
        origin=current.model.origin,
        fields=len(current.schema.get("properties", {})),
    )
    return entry


def _summary(schema: dict[str, Any]) -> str:
    if schema["error"]:
        return f"unavailable: {schema['error']}"
    if schema["note"]:
        return "per entity"
    return f"{schema['fields']} fields ({schema['origin']})"


def _replay(value: int) -> str:
    return {-1: "latest", -2: "earliest"}.get(value, str(value))
