"""`sfstream tail` as a user runs it: a subprocess against a running emulator."""

from __future__ import annotations

import asyncio
import sys

import orjson
import pytest

from sfstream_emulator import Emulator


async def tail(emu: Emulator, *args: str) -> tuple[int, list[bytes], str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        "tail",
        "--emulator",
        emu.url,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.splitlines(), stderr.decode()


async def test_prints_retained_events_as_json_lines(sfstream_emulator: Emulator) -> None:
    for number in range(3):
        sfstream_emulator.publish_event("Order_Placed__e", {"Order_Number__c": f"O-{number}"})
    code, lines, stderr = await tail(
        sfstream_emulator,
        "--channel",
        "/event/Order_Placed__e",
        "--replay",
        "-2",
        "--max-messages",
        "3",
    )
    assert code == 0, stderr
    messages = [orjson.loads(line) for line in lines]
    assert [m["data"]["payload"]["Order_Number__c"] for m in messages] == ["O-0", "O-1", "O-2"]
    assert all(m["channel"] == "/event/Order_Placed__e" for m in messages)
    assert all(isinstance(m["data"]["event"]["replayId"], int) for m in messages)
    logged = [orjson.loads(line) for line in stderr.splitlines()]
    assert {"handshake", "subscribed", "tail_stopped"} <= {line["event"] for line in logged}
    assert sfstream_emulator.credentials["client_secret"] not in stderr


async def test_unknown_channel_exits_1_with_one_clear_line(sfstream_emulator: Emulator) -> None:
    code, lines, stderr = await tail(sfstream_emulator, "--channel", "/event/Nope__e")
    assert code == 1
    assert lines == []
    assert "does not exist {/event/Nope__e}" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channel", "/event/Low_Ink__e", "--replay", "-5"], "must be -1, -2 or a replayId"),
        (["--channel", "event/Low_Ink__e"], "must start with '/'"),
        ([], "Missing option '--channel'"),
    ],
)
async def test_usage_errors_exit_2(
    sfstream_emulator: Emulator, args: list[str], message: str
) -> None:
    code, _, stderr = await tail(sfstream_emulator, *args)
    assert code == 2
    assert message in stderr
    assert "Traceback" not in stderr
