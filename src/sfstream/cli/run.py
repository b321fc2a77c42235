"""`sfstream run`: stream until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import click

from sfstream.cli.common import CONFIG_OPTION, load


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
    early: list[int] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        # Until the event loop takes over, a stop request is remembered, not fatal.
        signal.signal(sig, lambda signum, _frame: early.append(signum))
    config = load(config_path)

    from sfstream.runners.connector import new_run_id
    from sfstream.runners.service import serve

    sys.exit(
        asyncio.run(serve(config, run_id or new_run_id(), early_signals=early, exit_process=True))
    )
