"""`sfstream discover`: the catalog of streams."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sfstream.cli.common import CONFIG_OPTION, call, load, print_json, table


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
    from sfstream.runners.wiring import org_session

    config = load(config_path, log_level="warning")

    async def catalog() -> list[dict[str, Any]]:
        async with org_session(config) as session:
            rest = session.rest if config.discovery.mode == "metadata" else None
            return [spec.as_dict() for spec in await find_streams(config, rest)]

    streams = call(catalog)
    if as_json:
        print_json({"streams": streams})
        return
    table(
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
