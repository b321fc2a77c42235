"""The connector's commands as an operator runs them: discover, check, state, manifest."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import orjson
import pytest

from sfstream_emulator import Emulator
from tests.conftest import MakeConfig


async def sfstream(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_discover_prints_the_catalog(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"}],
        discovery={"mode": "metadata", "exclude": ["/data/*__chn"]},
    )
    config = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream("discover", "--config", config, "--json")
    assert code == 0, err
    streams = {s["channel"]: s for s in orjson.loads(out)["streams"]}
    assert streams["/data/AccountChangeEvent"]["id"] == "sf.event.account_changes"
    assert streams["/event/Order_Placed__e"]["source"] == "config"
    assert "/data/CaseChangeEvent" not in streams
    assert "/data/SalesEvents__chn" not in streams
    code, table, _ = await sfstream("discover", "--config", config)
    assert code == 0
    assert table.splitlines()[0].split() == [
        "STREAM",
        "CHANNEL",
        "KIND",
        "START",
        "ON",
        "INVALID",
        "SOURCE",
    ]
    assert "sf.event.employee_changes" in table


async def test_check_passes_on_a_good_config(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 0, out + err
    assert "ok    login: instance " + sfstream_emulator.url in out
    assert "FAIL" not in out
    assert "stream sf.event.account_changes (/data/AccountChangeEvent)" in out


async def test_check_finds_what_would_stay_silent(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/data/CaseChangeEvent"}, {"channel": "/event/Nope__e"}],
        sink={"type": "file", "path": "/proc/forbidden/records.jsonl"},
    )
    code, out, _ = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1
    failures = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert any("CaseChangeEvent" in line and "not enabled for Case" in line for line in failures)
    assert any("Nope__e" in line and "does not exist" in line for line in failures)
    assert any("sink" in line for line in failures)


async def test_check_reports_a_refused_login(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    sfstream_emulator.revoke_refresh_tokens()
    code, out, _ = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1
    assert "FAIL  login: Salesforce refused the refresh token" in out
    assert sfstream_emulator.credentials["refresh_token"] not in out


async def test_state_show_set_reset(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    config = str(tmp_path / "sfstream.yaml")
    code, out, _ = await sfstream("state", "show", "--config", config)
    assert (code, out.strip()) == (0, "no checkpoints yet")
    code, out, _ = await sfstream(
        "state", "set", "sf.event.account_changes", "123456", "--config", config
    )
    assert code == 0
    assert "checkpoint set to 123456" in out
    code, out, _ = await sfstream("state", "show", "--json", "--config", config)
    (checkpoint,) = orjson.loads(out)["checkpoints"]
    assert (checkpoint["stream"], checkpoint["replay_id"]) == ("sf.event.account_changes", 123456)
    code, out, _ = await sfstream("state", "reset", "sf.event.account_changes", "--config", config)
    assert code == 0
    code, out, err = await sfstream(
        "state", "reset", "sf.event.account_changes", "--config", config
    )
    assert code == 1
    assert "has no checkpoint" in err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["state", "set", "Bad Stream", "5"], "must be lower case"),
        (["state", "set", "sf.event.x", "abc"], "'abc' is not a valid integer"),
    ],
)
async def test_state_usage_errors(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    args: list[str],
    message: str,
) -> None:
    await make_config(sfstream_emulator)
    code, _, err = await sfstream(*args, "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 2
    assert message in err
    assert "Traceback" not in err


async def test_manifest_prints_and_checks() -> None:
    code, out, _ = await sfstream("manifest")
    assert code == 0
    assert "strategy: replay_id" in out
    assert "strategy: source_declared_or_config" in out
    code, out, _ = await sfstream("manifest", "--check")
    assert code == 0
    assert "matches the code" in out


def test_manifest_check_catches_drift() -> None:
    from sfstream.manifest import check_manifest, manifest_text

    text = manifest_text()
    assert check_manifest(text) == []
    drifted = text.replace(
        "sinks: [stdout, file, kafka, postgres, s3]", "sinks: [stdout, file, kinesis]"
    ).replace("sfstream.runners.aws_lambda:handler", "sfstream.runners.aws_lambda:nope")
    problems = check_manifest(drifted)
    assert any("sinks" in p for p in problems)
    assert any("aws_lambda" in p for p in problems)
    assert check_manifest("name: other\n")[0].startswith("manifest is not valid")


async def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    code, _, err = await sfstream("discover", "--config", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "cannot read config file" in err


async def test_schema_list_show_history(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    from sfstream.runners.connector import Connector
    from sfstream_emulator import FieldDef

    emu = sfstream_emulator
    config = await make_config(
        emu, [{"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"}]
    )
    path = str(tmp_path / "sfstream.yaml")
    code, out, _ = await sfstream("schema", "list", "--config", path)
    assert (code, out.strip()) == (
        0,
        "no schemas registered yet (they are registered when `sfstream run` starts)",
    )
    emu.create_record("Account", {"Name": "one"})
    emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string")])
    emu.create_record("Account", {"Name": "two", "Tier__c": "Gold"})
    stop = asyncio.Event()
    async with Connector(config, "cli") as connector:
        task = asyncio.create_task(connector.run(stop))
        assert config.sink.path is not None
        async with asyncio.timeout(20):
            while not config.sink.path.exists() or (
                config.sink.path.read_bytes().count(b'"RECORD"') < 2
            ):
                await asyncio.sleep(0.05)
        stop.set()
        assert (await task).ok
    code, out, _ = await sfstream("schema", "list", "--json", "--config", path)
    assert code == 0
    (subject,) = orjson.loads(out)["subjects"]
    assert subject["subject"] == "sf.event.account_changes"
    latest = subject["version"]
    code, out, _ = await sfstream("schema", "show", "sf.event.account_changes", "--config", path)
    assert code == 0
    shown = orjson.loads(out)
    assert shown["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    code, out, _ = await sfstream(
        "schema",
        "show",
        "sf.event.account_changes",
        "--format",
        "avro",
        "--version",
        "1",
        "--config",
        path,
    )
    assert code == 0
    assert orjson.loads(out)["type"] == "record"
    code, out, _ = await sfstream("schema", "history", "sf.event.account_changes", "--config", path)
    assert code == 0
    assert out.count("version ") == latest
    assert "Tier__c" in out
    code, _, err = await sfstream("schema", "show", "sf.event.nope", "--config", path)
    assert code == 1
    assert "no schema registered for sf.event.nope" in err
