"""The `sfstream` group: every command listed, each imported only when it runs."""

from __future__ import annotations

import subprocess
import sys

import orjson
from click.testing import CliRunner

from sfstream.cli import main
from sfstream.cli.main import COMMANDS

_PROBE = """
import sys, orjson
from click.testing import CliRunner
from sfstream.cli import main
result = CliRunner().invoke(main, sys.argv[1:])
loaded = sorted(m for m in sys.modules if m.startswith(("sfstream", "sfstream_emulator")))
print(orjson.dumps({"code": result.exit_code, "output": result.output, "loaded": loaded}).decode())
"""


def _probe(*args: str) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE, *args], capture_output=True, check=True, timeout=60
    )
    result: dict[str, object] = orjson.loads(done.stdout)
    return result


def test_help_lists_every_command_without_importing_one() -> None:
    found = _probe("--help")
    assert found["code"] == 0
    for name in COMMANDS:
        assert f"  {name} " in str(found["output"])
    loaded = found["loaded"]
    assert isinstance(loaded, list)
    assert not [m for m in loaded if m.startswith("sfstream.cli.") and m != "sfstream.cli.main"]
    assert "sfstream_emulator" not in loaded


def test_run_path_does_not_load_the_emulator_or_other_commands() -> None:
    found = _probe("run", "--help")
    assert found["code"] == 0
    loaded = found["loaded"]
    assert isinstance(loaded, list)
    assert "sfstream.cli.run" in loaded
    assert not [m for m in loaded if m.startswith("sfstream_emulator")]
    assert "sfstream.cli.tail" not in loaded


def test_emulator_command_is_the_emulators_own() -> None:
    result = CliRunner().invoke(main, ["emulator", "--help"])
    assert result.exit_code == 0
    assert "--poll-timeout" in result.output


def test_unknown_command_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["nonsense"])
    assert result.exit_code == 2
    assert "No such command 'nonsense'" in result.output
