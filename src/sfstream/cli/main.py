"""The `sfstream` group. Commands are imported when invoked, so `sfstream run` loads the run
path only, and `sfstream --help` loads no command at all."""

from __future__ import annotations

import importlib
from typing import Final

import click

from sfstream import __version__

COMMANDS: Final = {
    "run": ("sfstream.cli.run:run", "Stream the configured channels until SIGTERM or SIGINT."),
    "discover": ("sfstream.cli.discover:discover", "Print the catalog: every stream to run."),
    "check": ("sfstream.cli.check:check", "Verify everything a run needs, without streaming."),
    "state": ("sfstream.cli.state:state", "Show and change stream checkpoints."),
    "status": (
        "sfstream.cli.status:status",
        "Print each stream's checkpoint, last event time and lag (live with --url).",
    ),
    "schema": ("sfstream.cli.schema:schema", "Derive, list and show the schemas of the streams."),
    "manifest": ("sfstream.cli.manifest:manifest", "Print the connector manifest."),
    "endpoints": (
        "sfstream.cli.endpoints:endpoints",
        "Print every host and port the connector contacts (the NAT egress allow-list).",
    ),
    "tail": ("sfstream.cli.tail:tail", "Print the events of channels as JSON lines."),
    "healthcheck": (
        "sfstream.cli.healthcheck:healthcheck",
        "Ask a running connector's health endpoint (exit 0 or 1).",
    ),
    "emulator": ("sfstream_emulator.cli:main", "Run the bundled Salesforce emulator."),
}
"""name -> ("module:attribute", one-line help shown by `sfstream --help`)."""


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        module_name, _, attribute = entry[0].partition(":")
        command = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The short help comes from the table: listing commands imports none of them.
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][1]) for name in sorted(COMMANDS)])


@click.group(
    cls=LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="sfstream")
def main() -> None:
    """Stream Salesforce Change Data Capture and platform events into your data platform.

    Exit codes, for every command: 0 success; 1 a runtime failure (Salesforce refused, a
    store is unreachable, `check` found problems); 2 a usage or configuration error.
    """
