"""`sfstream tail --config FILE`: the connector's configuration says how to log in, which
secrets store to use and which channels to follow."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import yaml

from sfstream_emulator import Emulator, EmulatorSettings
from tests.conftest import MakeConfig

REPO = Path(__file__).resolve().parents[2]


async def sfstream(
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    on_log: Callable[[dict[str, Any]], None] | None = None,
    json_stdout: bool = True,
) -> tuple[int, list[Any], list[dict[str, Any]], str]:
    """Run `sfstream ARGS`; (exit code, stdout lines (parsed with `json_stdout`), stderr JSON
    lines, stderr).

    `on_log` sees each log line as it arrives (to act once the tail has subscribed).
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        cwd=cwd,
        env={**os.environ, **(env or {})},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    assert process.stderr is not None
    errors: list[bytes] = []

    async def read_stderr() -> None:
        assert process.stderr is not None
        async for line in process.stderr:
            errors.append(line)
            if on_log is not None and line.startswith(b"{"):
                on_log(orjson.loads(line))

    async with asyncio.timeout(60):
        reader = asyncio.create_task(read_stderr())
        stdout = await process.stdout.read()
        await reader
        code = await process.wait()
    stderr = b"".join(errors).decode()
    logged = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    lines = stdout.splitlines()
    return code, [orjson.loads(line) for line in lines] if json_stdout else lines, logged, stderr


def readme_tail_command() -> list[str]:
    """The `sfstream tail` example of the README, as its words."""
    readme = (REPO / "README.md").read_text()
    (command,) = re.findall(r"`(sfstream tail [^`]*)`", readme)
    return shlex.split(command)[1:]


async def test_the_readme_example_runs_as_written(
    sfstream_emulator: Emulator, tmp_path: Path
) -> None:
    # As the README says: the example configuration with login_url and client_id set, and
    # its secrets (SF_CLIENT_SECRET, SF_REFRESH_TOKEN) in the environment.
    emu = sfstream_emulator
    example = yaml.safe_load((REPO / "examples" / "sfstream.example.yaml").read_text())
    example["salesforce"]["login_url"] = emu.url
    example["salesforce"]["client_id"] = emu.credentials["client_id"]
    (tmp_path / "sfstream.yaml").write_text(yaml.safe_dump(example))
    env = {
        "SF_CLIENT_SECRET": emu.credentials["client_secret"],
        "SF_REFRESH_TOKEN": emu.credentials["refresh_token"],
    }
    for number in range(2):
        emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O-{number}"})

    args = readme_tail_command()
    assert args[:3] == ["tail", "--config", "sfstream.yaml"]
    code, lines, logged, stderr = await sfstream(
        *args, "--max-messages", "2", cwd=tmp_path, env=env
    )

    assert code == 0, stderr
    assert [m["data"]["payload"]["Order_Number__c"] for m in lines] == ["O-0", "O-1"]
    assert {"handshake", "subscribed", "tail_stopped"} <= {line["event"] for line in logged}
    assert emu.credentials["client_secret"] not in stderr
    assert emu.credentials["refresh_token"] not in stderr
    # The rest of the README's commands work with the same configuration.
    code, lines, _, stderr = await sfstream(
        "check", "--config", "sfstream.yaml", cwd=tmp_path, env=env, json_stdout=False
    )
    assert code == 0, (lines, stderr)


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=5)


async def test_without_channels_it_follows_the_configured_streams_from_their_initial_replay(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(
        emu,
        [
            {"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"},
            {"channel": "/event/Order_Placed__e"},  # latest: only what comes after
        ],
    )
    for name in ("A0", "A1"):
        emu.create_record("Account", {"Name": name})
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "before"})
    subscribed: set[str] = set()

    def publish_once_subscribed(line: dict[str, Any]) -> None:
        if line["event"] == "subscribed":
            subscribed.add(line["channel"])
            if len(subscribed) == 2:
                emu.publish_event("Order_Placed__e", {"Order_Number__c": "after"})

    code, lines, logged, stderr = await sfstream(
        "tail",
        "--config",
        str(tmp_path / "sfstream.yaml"),
        "--max-messages",
        "3",
        on_log=publish_once_subscribed,
    )

    assert code == 0, stderr
    assert subscribed == {"/data/AccountChangeEvent", "/event/Order_Placed__e"}
    accounts = [m["data"]["payload"]["Name"] for m in lines if m["channel"].startswith("/data")]
    orders = [
        m["data"]["payload"]["Order_Number__c"] for m in lines if m["channel"].startswith("/event")
    ]
    assert accounts == ["A0", "A1"]
    assert orders == ["after"]
    assert "tail_stopped" in {line["event"] for line in logged}


async def test_replay_overrides_every_streams_initial_replay(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(emu, [{"channel": "/event/Order_Placed__e"}])
    for number in range(3):
        emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O-{number}"})
    code, lines, _, stderr = await sfstream(
        "tail",
        "--replay",
        "-2",
        "--max-messages",
        "3",
        env={"SFSTREAM_CONFIG": str(tmp_path / "sfstream.yaml")},
    )
    assert code == 0, stderr
    assert [m["data"]["payload"]["Order_Number__c"] for m in lines] == ["O-0", "O-1", "O-2"]


async def test_channels_given_replace_the_configured_streams(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}])
    emu.create_record("Account", {"Name": "not followed"})
    emu.publish_event("Low_Ink__e", {"Printer_Model__c": "XZ-1"})
    code, lines, _, stderr = await sfstream(
        "tail",
        "--config",
        str(tmp_path / "sfstream.yaml"),
        "--channel",
        "/event/Low_Ink__e",
        "--replay",
        "-2",
        "--max-messages",
        "1",
    )
    assert code == 0, stderr
    assert [m["channel"] for m in lines] == ["/event/Low_Ink__e"]


async def test_metadata_discovery_finds_the_channels_to_follow(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(
        emu,
        [],
        discovery={"mode": "metadata", "include": ["/event/Order*"], "initial_replay": "earliest"},
    )
    emu.publish_event("Order_Placed__e", {"Order_Number__c": "42"})
    code, lines, _, stderr = await sfstream(
        "tail", "--config", str(tmp_path / "sfstream.yaml"), "--max-messages", "1"
    )
    assert code == 0, stderr
    assert [m["data"]["payload"]["Order_Number__c"] for m in lines] == ["42"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--emulator", "http://localhost:1"], "--emulator cannot be combined with --config"),
        (["--client-id", "k"], "--client-id cannot be combined with --config"),
    ],
)
async def test_login_flags_and_a_configuration_exclude_each_other(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    extra: list[str],
    message: str,
) -> None:
    await make_config(sfstream_emulator)
    code, lines, _, stderr = await sfstream(
        "tail", "--config", str(tmp_path / "sfstream.yaml"), *extra
    )
    assert code == 2
    assert lines == []
    assert message in stderr
    assert "Traceback" not in stderr


async def test_a_bad_configuration_is_a_configuration_error(tmp_path: Path) -> None:
    path = tmp_path / "sfstream.yaml"
    path.write_text("salesforce: {client_id: k}\nstreams: []\n")
    code, lines, _, stderr = await sfstream("tail", "--config", str(path))
    assert code == 2
    assert lines == []
    assert "configuration error" in stderr
    assert "Traceback" not in stderr


class TestRotation:
    @pytest.fixture
    def sfstream_emulator_settings(self) -> EmulatorSettings:
        return EmulatorSettings(poll_timeout_s=1.0, seed=7, rotate_refresh_tokens=True)

    async def test_a_rotated_refresh_token_is_saved_like_sfstream_run_saves_it(
        self, sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
    ) -> None:
        emu = sfstream_emulator
        original = emu.credentials["refresh_token"]
        await make_config(emu)
        emu.create_record("Account", {"Name": "A0"})
        code, lines, logged, stderr = await sfstream(
            "tail", "--config", str(tmp_path / "sfstream.yaml"), "--max-messages", "1"
        )
        assert code == 0, stderr
        assert [m["data"]["payload"]["Name"] for m in lines] == ["A0"]
        secrets = dict(
            line.split("=", 1) for line in (tmp_path / "secrets.env").read_text().splitlines()
        )
        saved = secrets["SF_REFRESH_TOKEN"]
        assert saved != original
        assert [t for t, valid in emu.tokens.refresh_tokens.items() if valid] == [saved]
        assert (tmp_path / "secrets.env").stat().st_mode & 0o777 == 0o600
        assert "refresh_token_saved" in {line["event"] for line in logged}
        for token in emu.tokens.refresh_tokens:
            assert token not in stderr

        # The next tail logs in with the saved token (the original one is refused now).
        emu.create_record("Account", {"Name": "A1"})
        code, lines, _, stderr = await sfstream(
            "tail", "--config", str(tmp_path / "sfstream.yaml"), "--max-messages", "2"
        )
        assert code == 0, stderr
        assert [m["data"]["payload"]["Name"] for m in lines] == ["A0", "A1"]
