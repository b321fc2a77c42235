"""`sfstream state show|set|reset`: the checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from sfstream.cli.common import CONFIG_OPTION, Failure, call, load, print_json, table
from sfstream.errors import ConfigError


@click.group()
def state() -> None:
    """Show and change stream checkpoints (operators only: a wrong replayId skips or repeats
    events)."""


@state.command("show")
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def state_show(config_path: Path, as_json: bool) -> None:
    """Print every stream's checkpoint."""
    from sfstream.runners.wiring import open_state

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

    rows = call(read)
    if as_json:
        print_json({"checkpoints": rows})
        return
    if not rows:
        click.echo("no checkpoints yet")
        return
    table(
        ["STREAM", "REPLAY ID", "UPDATED AT"],
        [[r["stream"], str(r["replay_id"]), r["updated_at"]] for r in rows],
    )


@state.command("set")
@CONFIG_OPTION
@click.argument("stream")
@click.argument("replay_id", type=click.IntRange(min=0))
def state_set(config_path: Path, stream: str, replay_id: int) -> None:
    """Set STREAM's checkpoint to REPLAY_ID: the next run resumes after that event."""
    from sfstream.runners.wiring import open_state
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

    call(write)
    click.echo(f"{stream}: checkpoint set to {replay_id}")


@state.command("reset")
@CONFIG_OPTION
@click.argument("stream")
def state_reset(config_path: Path, stream: str) -> None:
    """Forget STREAM's checkpoint: the next run starts from its initial replay."""
    from sfstream.runners.wiring import open_state

    config = load(config_path, log_level="warning")

    async def forget() -> bool:
        store = open_state(config)
        try:
            return await store.reset(stream)
        finally:
            await store.close()

    if call(forget):
        click.echo(f"{stream}: checkpoint removed")
    else:
        raise Failure(f"{stream} has no checkpoint")
