"""What the commands share: the `--config` option, loading it, errors in the user's words,
tables and JSON output."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import IO, Any, TypeVar

import click
import orjson

from sfstream.engine.config import Config, load_config, log_warnings
from sfstream.errors import ConfigError, ExitCode, SfStreamError

T = TypeVar("T")

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

    exit_code = ExitCode.USAGE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"sfstream: configuration error: {self.message}", err=True)


class Failure(click.ClickException):
    """A runtime failure: one clear line, exit code 1."""

    exit_code = ExitCode.FAILURE

    def show(self, file: IO[Any] | None = None) -> None:
        click.echo(f"sfstream: {self.message}", err=True)


def load(config_path: Path, *, log_level: str | None = None, offline: bool = False) -> Config:
    """Load the configuration and set up logging with its secrets redacted; then log what
    loading warned about (a secret written inline).

    `offline`: for a command that does not call Salesforce (`state`, `schema`, config-mode
    `discover`): its `${secret:...}` references are not resolved, so the command runs
    without them (see `load_config`). Commands that log in (`run`, `check`, `tail`, metadata
    `discover`) load with every secret.

    A configuration problem exits 2 (`ConfigProblem`); a secrets store that cannot be
    reached exits 1 (`Failure`).
    """
    from sfstream.observability import configure_logging

    try:
        config = asyncio.run(load_config(config_path, offline=offline))
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except SfStreamError as exc:
        raise Failure(str(exc)) from exc
    fmt = config.logging.format
    configure_logging(
        level=log_level or config.logging.level,
        json=None if fmt == "auto" else fmt == "json",
        secrets=config.secret_values(),
    )
    log_warnings(config)
    return config


def call(function: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run one async step of a command; sfstream errors become one line and exit 1 (or 2)."""
    try:
        return asyncio.run(function())
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc
    except SfStreamError as exc:
        raise Failure(str(exc)) from exc


def table(header: list[str], rows: list[list[str]]) -> None:
    """Print rows as aligned columns under a header."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo(
            "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True))
        )


def print_json(value: Any) -> None:
    """Indented JSON on stdout, for `--json`."""
    sys.stdout.buffer.write(orjson.dumps(value, option=orjson.OPT_INDENT_2))
    sys.stdout.write("\n")
