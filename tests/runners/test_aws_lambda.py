"""The Lambda handler streams until its deadline nears, then flushes and commits."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from sfstream.runners.aws_lambda import handler, run_until
from sfstream_emulator import Emulator
from tests.conftest import MakeConfig


@dataclass
class Context:
    """What the Lambda runtime passes (the outside world)."""

    remaining_ms: int
    aws_request_id: str = "req-123"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


async def test_streams_until_the_budget_then_commits(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    for number in range(5):
        emu.create_record("Account", {"Name": f"L{number}"})
    summary = await run_until(str(tmp_path / "sfstream.yaml"), "req-1", budget_s=2.0)
    assert summary["ok"], summary
    assert summary["run_id"] == "req-1"
    stream = summary["streams"]["sf.event.account_changes"]
    assert stream["emitted"] == 5
    last = emu.published("/data/AccountChangeEvent")[-1]["data"]["event"]["replayId"]
    assert stream["checkpoint"] == last
    assert config.sink.path is not None
    names = [
        m["data"]["Name"]
        for m in map(orjson.loads, config.sink.path.read_bytes().splitlines())
        if m["type"] == "RECORD"
    ]
    assert names == [f"L{n}" for n in range(5)]


async def test_a_bad_config_is_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: []\n")
    summary = await run_until(str(bad), "r", budget_s=5.0)
    assert summary["ok"] is False
    assert "salesforce" in summary["error"]


def test_handler_needs_a_config_and_time(tmp_path: Path) -> None:
    assert handler({}, Context(60_000))["error"].startswith("no configuration")
    config = tmp_path / "c.yaml"
    config.write_text("salesforce: {client_id: x, refresh_token: y}\nstreams: [{channel: /u/X}]\n")
    result = handler({"config": str(config)}, Context(10_000))
    assert result == {
        "run_id": "req-123",
        "ok": False,
        "error": "not enough time left in the invocation to stream",
    }
