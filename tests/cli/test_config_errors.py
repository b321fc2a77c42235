"""Configuration problems as an operator meets them: every command that reads the
configuration exits 2 with the same words, names the field or the environment variable at
fault, and never shows a secret; commands that do not call Salesforce do not need its secrets.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sfstream.cli.common import ConfigProblem, load
from sfstream.errors import ExitCode

CONFIG = """\
salesforce:
  login_url: http://127.0.0.1:9
  client_id: key
  client_secret: ${secret:SF_CLIENT_SECRET}
  refresh_token: ${secret:SF_REFRESH_TOKEN}
secrets:
  backend: file
  file: secrets.env
streams:
  - channel: /data/AccountChangeEvent
state:
  path: state.db
sink:
  type: file
  path: records.jsonl
"""
SECRETS = "SF_CLIENT_SECRET=client-secret-5d1e\nSF_REFRESH_TOKEN=refresh-token-9a7b\n"

COMMANDS = [
    ["run"],
    ["check"],
    ["discover"],
    ["state", "show"],
    ["state", "set", "sf.event.account_changes", "1"],
    ["state", "reset", "sf.event.account_changes"],
    ["schema", "list"],
    ["schema", "show", "sf.event.account_changes"],
    ["schema", "history", "sf.event.account_changes"],
]
"""Every command that reads the configuration file."""


def setup(directory: Path, config: str = CONFIG, secrets: str = SECRETS) -> Path:
    path = directory / "sfstream.yaml"
    path.write_text(config, encoding="utf-8")
    (directory / "secrets.env").write_text(secrets)
    (directory / "secrets.env").chmod(0o600)
    return path


def sfstream(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`sfstream ARGS` in a fresh process, with no SFSTREAM_* variables but `env`."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("SFSTREAM_")}
    return subprocess.run(
        [sys.executable, "-m", "sfstream.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**clean, **(env or {})},
        check=False,
    )


def assert_config_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == ExitCode.USAGE, result.stdout + result.stderr
    assert result.stderr.startswith("sfstream: configuration error: "), result.stderr
    assert "Traceback" not in result.stderr
    for text in expected:
        assert text in result.stderr


# -- the same words from every command --------------------------------------------------------


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_names_the_environment_variable_at_fault(
    command: list[str], tmp_path: Path
) -> None:
    path = setup(tmp_path)
    result = sfstream(*command, "--config", str(path), env={"SFSTREAM_BATCH__MAX_RECORDS": "many"})
    assert_config_error(
        result,
        "SFSTREAM_* environment variables: 1 problem(s)",
        "  SFSTREAM_BATCH__MAX_RECORDS: expected an integer from 1 to 100000, got 'many'\n",
    )


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_reports_a_bad_value_in_the_users_words(
    command: list[str], tmp_path: Path
) -> None:
    path = setup(tmp_path, CONFIG + "batch:\n  max_records: 0\n")
    assert_config_error(
        sfstream(*command, "--config", str(path)),
        f"{path}: 1 problem(s)\n",
        "  batch.max_records: expected an integer from 1 to 100000, got 0\n",
    )


def test_variables_that_cannot_set_a_value_are_refused(tmp_path: Path) -> None:
    path = setup(tmp_path)
    result = sfstream(
        "check",
        "--config",
        str(path),
        env={"SFSTREAM_STREAMS": "[{channel: /u/X}]", "SFSTREAM_SNIK__PATH": "out.jsonl"},
    )
    assert_config_error(
        result,
        "SFSTREAM_* environment variables: 2 problem(s)",
        "SFSTREAM_STREAMS: the streams list cannot be set from the environment; list the "
        "streams in the configuration file",
        "SFSTREAM_SNIK__PATH: unknown section snik (did you mean sink?)",
    )


# -- secret references ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "${secrets:SF_CLIENT_SECRET}",
        "${secret:}",
        "${secret:SF_CLIENT_SECRET",
        "${secret:SF_CLIENT_SECRET} trailing",
        "prefix${secret:SF_CLIENT_SECRET}",
    ],
)
def test_a_malformed_reference_is_never_sent_to_salesforce(written: str, tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG.replace("${secret:SF_CLIENT_SECRET}", f"'{written}'"))
    result = sfstream("check", "--config", str(path))
    assert_config_error(
        result,
        f"salesforce.client_secret: `{written}` looks like a secret reference but is not "
        "one; write ${secret:NAME}",
    )
    assert result.stdout == ""


def test_an_inline_secret_is_warned_about_once_by_field(tmp_path: Path) -> None:
    path = setup(
        tmp_path,
        CONFIG.replace("${secret:SF_CLIENT_SECRET}", "inline-client-secret-77")
        + "logging:\n  format: json\n",
    )
    result = sfstream("state", "show", "--config", str(path))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "inline_secret" in line]
    assert len(warnings) == 1, result.stderr
    assert '"field":"salesforce.client_secret"' in warnings[0]
    assert "${secret:NAME}" in warnings[0]
    assert "inline-client-secret-77" not in result.stderr + result.stdout


# -- YAML that cannot be trusted --------------------------------------------------------------


def test_a_duplicate_section_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG + "sink:\n  type: stdout\n")
    assert_config_error(
        sfstream("check", "--config", str(path)), "sink: duplicate key (lines 13 and 16)"
    )


def test_an_alias_bomb_exits_2_at_once(tmp_path: Path) -> None:
    lines = ['lol0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"lol{i}: &l{i} [{','.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 9)]
    path = setup(tmp_path, CONFIG + "\n".join(lines) + "\n")
    started = time.monotonic()
    result = sfstream("check", "--config", str(path), timeout=30)
    elapsed = time.monotonic() - started
    assert_config_error(result, "expands to more than")
    # Interpreter start-up included; loading itself is bounded to well under a second.
    assert elapsed < 15


# -- what each command needs ------------------------------------------------------------------


def test_load_offline_does_not_need_the_salesforce_secrets(tmp_path: Path) -> None:
    path = setup(tmp_path, secrets="")
    with pytest.raises(ConfigProblem) as info:
        load(path)
    assert info.value.exit_code == ExitCode.USAGE
    assert "salesforce.client_secret: secret 'SF_CLIENT_SECRET' is not in" in info.value.message
    config = load(path, offline=True)
    assert config.salesforce.refresh_token is None
    assert config.unresolved_secrets["salesforce.refresh_token"] == "SF_REFRESH_TOKEN"


def test_load_offline_still_reports_every_other_problem(tmp_path: Path) -> None:
    path = setup(tmp_path, CONFIG + "batch:\n  max_records: 0\n", secrets="")
    with pytest.raises(ConfigProblem) as info:
        load(path, offline=True)
    assert "batch.max_records: expected an integer from 1 to 100000, got 0" in info.value.message
    assert "SF_CLIENT_SECRET" not in info.value.message


@pytest.mark.parametrize("command", [["run"], ["check"]], ids=" ".join)
def test_commands_that_log_in_still_need_every_secret(command: list[str], tmp_path: Path) -> None:
    path = setup(tmp_path, secrets="SF_CLIENT_SECRET=x\n")
    assert_config_error(
        sfstream(*command, "--config", str(path)),
        "salesforce.refresh_token: secret 'SF_REFRESH_TOKEN' is not in",
    )


OFFLINE_COMMANDS = [
    ["state", "show"],
    ["schema", "list"],
    ["discover"],
]


@pytest.mark.parametrize("command", OFFLINE_COMMANDS, ids=" ".join)
def test_commands_that_do_not_call_salesforce_run_without_its_secrets(
    command: list[str], tmp_path: Path
) -> None:
    path = setup(tmp_path, secrets="")
    result = sfstream(*command, "--config", str(path))
    assert result.returncode == 0, result.stderr
