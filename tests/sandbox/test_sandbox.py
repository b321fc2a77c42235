"""End to end against a sandbox org (or the emulator): REST in, `sfstream run` out.

Every check publishes through REST and reads the sink of a real `sfstream run` process, on
both targets. Values carry a per-test tag, so that other traffic in a shared sandbox is
ignored. See docs/sandbox.md for the org's setup.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from tests.runners.process import start_run
from tests.sandbox.conftest import Target

TIMEOUT_S = 120.0
"""A real org delivers within seconds; allow for a slow sandbox."""
EVENT_META = {"channel", "schema_id", "schema_version", "event_uuid", "run_id"}
CHANGE_META = {
    "channel",
    "schema_id",
    "schema_version",
    "entity",
    "change_type",
    "commit_timestamp",
    "transaction_key",
    "sequence_number",
    "gap",
    "run_id",
}
STREAMS = [
    {"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"},
    {"channel": "/data/AccountChangeEvent"},
]


def lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


def records(directory: Path) -> list[dict[str, Any]]:
    return [m for m in lines(directory / "records.jsonl") if m["type"] == "RECORD"]


async def until(found: Callable[[], bool], process: asyncio.subprocess.Process, log: Path) -> None:
    async with asyncio.timeout(TIMEOUT_S):
        while not found():
            assert process.returncode is None, lines(log)[-5:]
            await asyncio.sleep(0.2)


async def started(config: Path, log: Path, streams: int) -> asyncio.subprocess.Process:
    """`sfstream run`, once each of its streams is subscribed."""
    process = await start_run(config, log)
    await until(
        lambda: len([x for x in lines(log) if x["event"] == "stream_started"]) >= streams,
        process,
        log,
    )
    return process


async def stopped(process: asyncio.subprocess.Process, log: Path) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(60):
        code = await process.wait()
    assert code == 0, lines(log)[-5:]


async def publish(target: Target, number: str) -> None:
    answer = await target.rest(
        "POST",
        "sobjects/Order_Placed__e/",
        {"Order_Number__c": number, "Amount__c": 12.5, "Quantity__c": 2},
    )
    assert answer["success"] is True


def orders(directory: Path, tag: str) -> list[dict[str, Any]]:
    return [
        r
        for r in records(directory)
        if r["stream"] == "sf.event.order_placed"
        and str(r["data"].get("Order_Number__c", "")).startswith(tag)
    ]


async def test_a_platform_event_and_an_account_update_reach_the_sink(
    target: Target, tmp_path: Path
) -> None:
    tag = f"SB-{uuid.uuid4().hex[:10]}"
    config = target.write_config(tmp_path, STREAMS)
    log = tmp_path / "run.log"
    process = await started(config, log, len(STREAMS))
    account = (await target.rest("POST", "sobjects/Account/", {"Name": f"{tag} created"}))["id"]
    try:
        await publish(target, f"{tag}-1")
        await target.rest("PATCH", f"sobjects/Account/{account}", {"Name": f"{tag} renamed"})

        def updated() -> list[dict[str, Any]]:
            return [
                r
                for r in records(tmp_path)
                if r["stream"] == "sf.event.account_changes"
                and r["key"] == account
                and r["meta"]["change_type"] == "UPDATE"
            ]

        await until(lambda: bool(orders(tmp_path, tag) and updated()), process, log)
    finally:
        await target.rest("DELETE", f"sobjects/Account/{account}")
        await stopped(process, log)

    (order,) = orders(tmp_path, tag)
    assert order["key"] == f"{tag}-1"  # the key_field
    assert order["data"]["Amount__c"] == 12.5
    assert isinstance(order["replay_id"], int)
    assert set(order["meta"]) >= EVENT_META
    assert order["meta"]["channel"] == "/event/Order_Placed__e"
    assert order["meta"]["event_uuid"]

    (change,) = [
        r for r in records(tmp_path) if r["key"] == account and r["meta"]["change_type"] == "UPDATE"
    ]
    assert set(change["meta"]) >= CHANGE_META
    assert change["meta"]["entity"] == "Account"
    assert change["meta"]["channel"] == "/data/AccountChangeEvent"
    assert change["meta"]["gap"] is False
    header = change["data"]["ChangeEventHeader"]
    assert header["changeType"] == "UPDATE"
    assert header["entityName"] == "Account"
    assert account in header["recordIds"]
    assert change["data"]["Name"] == f"{tag} renamed"
    # Each batch ends with the STATE the checkpoint moved to.
    states = [m for m in lines(tmp_path / "records.jsonl") if m["type"] == "STATE"]
    assert any(s["stream"] == "sf.event.order_placed" for s in states)


async def test_a_restart_resumes_from_the_checkpoint(target: Target, tmp_path: Path) -> None:
    tag = f"SB-{uuid.uuid4().hex[:10]}"
    config = target.write_config(tmp_path, STREAMS[:1])
    log = tmp_path / "run.log"
    process = await started(config, log, 1)
    try:
        for n in range(3):
            await publish(target, f"{tag}-{n}")
        await until(lambda: len(orders(tmp_path, tag)) >= 3, process, log)
    finally:
        await stopped(process, log)

    # Published while no connector runs: the next run replays them from its checkpoint.
    for n in range(3, 6):
        await publish(target, f"{tag}-{n}")
    process = await started(config, log, 1)
    try:
        await until(lambda: len(orders(tmp_path, tag)) >= 6, process, log)
        await publish(target, f"{tag}-6")
        await until(lambda: len(orders(tmp_path, tag)) >= 7, process, log)
    finally:
        await stopped(process, log)

    numbers = [r["data"]["Order_Number__c"] for r in orders(tmp_path, tag)]
    assert sorted(numbers) == [f"{tag}-{n}" for n in range(7)]  # no loss, no duplicate
    replay_ids = [r["replay_id"] for r in orders(tmp_path, tag)]
    assert replay_ids == sorted(replay_ids)
    assert "replay_gap" not in {x["event"] for x in lines(log)}


async def test_an_invalid_replay_id_fails_in_salesforces_words(
    target: Target, tmp_path: Path
) -> None:
    # Far beyond any replayId the channel has had: outside retention on any org.
    replay_id = 999_999_999_999
    config = target.write_config(tmp_path, STREAMS[:1])
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        "tail",
        "--config",
        str(config),
        "--channel",
        "/event/Order_Placed__e",
        "--replay",
        str(replay_id),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(TIMEOUT_S):
        out, err = await process.communicate()
    assert process.returncode == 1, err
    assert out == b""
    (failed,) = [
        orjson.loads(line)
        for line in err.splitlines()
        if line.startswith(b"{") and orjson.loads(line)["event"] == "tail_failed"
    ]
    # docs/salesforce-protocol.md §3: Salesforce's text, on /meta/subscribe.
    assert f"400::The replayId {{{replay_id}}} you provided was invalid." in failed["error"]
    assert "-2 to replay all events, or -1 to replay only new events" in failed["error"]
    assert failed["retryable"] is False
