"""What the entry points import, each in a fresh interpreter.

Every module imported costs every `sfstream run` at start, and so every AWS Lambda cold start
(bench/footprint.py measures it). What a run does not need is imported where it is used: the
other commands, the PostgreSQL and AWS backends, the live status line of a terminal, the
emulator. These tests pin that, so that a later import cannot bring one back unnoticed.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import types
from pathlib import Path

import orjson
import pytest

from sfstream_emulator import Emulator
from tests.conftest import MakeConfig

NOT_ON_THE_RUN_PATH = frozenset(
    {
        "sfstream_emulator",  # a separate package
        "sfstream.state.postgres",  # the PostgreSQL state backend
        "psycopg",
        "sfstream.secrets.aws",  # the AWS Secrets Manager backend
        "boto3",
        "botocore",
        "sfstream.observability.status",  # the live status line, on a terminal only
        "opentelemetry",  # traces, when `OTEL_*` variables configure an exporter
        "sfstream.observability.emf",  # the AWS Lambda handler's metrics
        "aws_lambda_powertools",
        "sfstream.cli.check",
        "sfstream.cli.discover",
        "sfstream.cli.endpoints",
        "sfstream.cli.healthcheck",
        "sfstream.cli.status",
        "sfstream.cli.manifest",
        "sfstream.cli.schema",
        "sfstream.cli.state",
        "sfstream.cli.tail",
        "sfstream.manifest",
        "sfstream.runners.aws_lambda",
        "sfstream.testing",
        "difflib",  # suggestions for a misspelled configuration key
    }
)
"""Modules a `sfstream run` (SQLite state, file or stdout sink, secrets from the environment
or a file, JSON logs or no terminal) never imports."""

HTTP_CLIENT = frozenset({"aiohttp", "sfstream.auth.oauth", "sfstream.client", "sqlite3"})
"""What `sfstream run` needs only once its configuration is read."""


def _loaded(code: str) -> set[str]:
    """The modules `code` leaves imported in a fresh interpreter."""
    script = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    return set(done.stdout.split())


def test_the_package_imports_only_the_errors() -> None:
    # Every `import sfstream.x` runs `sfstream/__init__.py` first: the public surface is
    # imported on first use.
    loaded = _loaded("import sfstream")
    heavy = {"aiohttp", "pydantic", "yaml", "structlog", "msgspec", "sqlite3", "click"}
    assert not heavy & loaded
    assert {m for m in loaded if m.startswith("sfstream.")} <= {"sfstream.errors", "sfstream._lazy"}


def test_the_run_command_reads_its_configuration_before_loading_the_client() -> None:
    loaded = _loaded("import sfstream.cli.run")
    assert "sfstream.engine.config" in loaded
    assert not (NOT_ON_THE_RUN_PATH | HTTP_CLIENT) & loaded


def test_the_run_path_leaves_out_what_a_run_does_not_use() -> None:
    loaded = _loaded(
        "import sfstream.cli.run, sfstream.runners.service, sfstream.state.sqlite, "
        "sfstream.sinks.file, sfstream.sinks.stdout"
    )
    assert "sfstream.runners.connector" in loaded
    assert not NOT_ON_THE_RUN_PATH & loaded


RUN_PROBE = """
import atexit, runpy, sys
def _write():
    with open(OUT, "w") as handle:
        handle.write(" ".join(sorted(sys.modules)))
atexit.register(_write)
sys.argv = ["sfstream", *sys.argv[1:]]
runpy.run_module("sfstream.cli", run_name="__main__")
"""
"""`python -c` source that runs `sfstream ARGS` and, at exit, writes the names of the modules
it loaded to the file OUT."""


async def test_a_real_run_leaves_out_what_it_does_not_use(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)  # a file sink, SQLite state, secrets from a file
    emu.create_record("Account", {"Name": "A"})
    out = tmp_path / "modules.txt"
    with (tmp_path / "run.log").open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", RUN_PROBE.replace("OUT", repr(str(out)))),
            *("run", "--config", str(tmp_path / "sfstream.yaml")),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
        )
    assert config.sink.path is not None
    sink = config.sink.path
    async with asyncio.timeout(60):
        while not (sink.exists() and b'"type":"RECORD"' in sink.read_bytes()):
            assert process.returncode is None, (tmp_path / "run.log").read_text()
            await asyncio.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        code = await process.wait()
    assert code == 0, (tmp_path / "run.log").read_text()
    loaded = set(out.read_text().split())
    assert {"sfstream.state.sqlite", "sfstream.sinks.file", "aiohttp"} <= loaded
    assert not NOT_ON_THE_RUN_PATH & loaded
    messages = [orjson.loads(line) for line in sink.read_bytes().splitlines()]
    assert any(message["type"] == "RECORD" for message in messages)


def test_the_lazy_names_are_listed_and_importable() -> None:
    import sfstream
    import sfstream.auth
    import sfstream.observability
    import sfstream.state

    for package in (sfstream, sfstream.auth, sfstream.state, sfstream.observability):
        names = dir(package)
        for name in package.__all__:
            assert name in names, (package.__name__, name)
            assert getattr(package, name) is not None
            assert not isinstance(getattr(package, name), types.ModuleType)
    from sfstream import Config, StreamingClient
    from sfstream.client.streaming import StreamingClient as Defined
    from sfstream.engine.config import Config as DefinedConfig

    assert StreamingClient is Defined
    assert Config is DefinedConfig


def test_an_unknown_name_is_an_attribute_error() -> None:
    import sfstream
    import sfstream.state

    for package in (sfstream, sfstream.state):
        with pytest.raises(AttributeError, match="NoSuchName"):
            package.NoSuchName  # noqa: B018 - the lookup is the test
