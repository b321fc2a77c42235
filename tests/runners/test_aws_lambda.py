"""The Lambda handler streams until its deadline nears, then flushes and commits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfstream.runners.aws_lambda import handler, run_until
from sfstream_emulator import Emulator, Fault, FaultKind
from tests.conftest import MakeConfig

STREAM = "sf.event.account_changes"


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


def _emf_documents(stdout: str) -> list[dict[str, Any]]:
    """The CloudWatch Embedded Metric Format documents among stdout's lines."""
    documents = []
    for line in stdout.splitlines():
        if line.startswith("{"):
            document = orjson.loads(line)
            if "CloudWatchMetrics" in document.get("_aws", {}):
                documents.append(document)
    return documents


def _dimensions(document: dict[str, Any]) -> tuple[str, ...]:
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    return tuple(sorted(name for names in directive["Dimensions"] for name in names))


def _figures(document: dict[str, Any]) -> dict[str, float]:
    """The document's metrics and their values (powertools writes each as a list)."""
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    figures = {}
    for metric in directive["Metrics"]:
        value = document[metric["Name"]]
        (figures[metric["Name"]],) = value if isinstance(value, list) else [value]
    return figures


async def test_an_invocation_ends_with_its_metrics_in_embedded_metric_format(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    await make_config(emu)
    for number in range(4):
        emu.create_record("Account", {"Name": f"M{number}"})
    emu.faults.add(Fault(kind=FaultKind.UNKNOWN_CLIENT, channel="/meta/connect"))
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "0")
    capsys.readouterr()
    event = {"config": str(tmp_path / "sfstream.yaml"), "run_id": "emf-1"}
    # The emulator serves on this loop: the handler runs its own, in a thread.
    summary = await asyncio.to_thread(handler, event, Context(3000))
    stdout = capsys.readouterr().out
    assert summary["ok"], summary
    assert not emu.faults.queue

    documents = _emf_documents(stdout)
    for document in documents:
        (directive,) = document["_aws"]["CloudWatchMetrics"]
        assert directive["Namespace"] == "sfstream"
        assert document["run_id"] == "emf-1"
        assert all(isinstance(document[name], str) for name in _dimensions(document))
    by_dimensions = {_dimensions(d): d for d in documents if "stream" not in d}
    assert sorted(by_dimensions) == [(), ("error", "retryable"), ("reason",)]
    streams = [d for d in documents if "stream" in d]

    (stream,) = streams
    assert stream["stream"] == STREAM
    assert stream["_aws"]["CloudWatchMetrics"][0]["Dimensions"] == [["stream"]]
    figures = _figures(stream)
    published = emu.published("/data/AccountChangeEvent")
    assert figures["events_received"] == len(published) == 4
    assert figures["records_written"] == 4
    assert figures["duplicates_dropped"] == 0
    last = published[-1]["data"]["event"]["replayId"]
    assert figures["checkpoint_replay_id"] == last == summary["streams"][STREAM]["checkpoint"]
    assert 0 <= figures["lag_seconds"] < 600
    units = {m["Name"]: m["Unit"] for m in stream["_aws"]["CloudWatchMetrics"][0]["Metrics"]}
    assert units == {
        "events_received": "Count",
        "records_written": "Count",
        "duplicates_dropped": "Count",
        "checkpoint_replay_id": "None",
        "lag_seconds": "Seconds",
    }

    totals = _figures(by_dimensions[()])
    assert totals["reconnects"] == 1
    assert _figures(by_dimensions[("reason",)]) == {"reconnects": 1}
    assert by_dimensions[("reason",)]["reason"] == "unknown_client"
    errors = by_dimensions[("error", "retryable")]
    assert errors["error"] == "UnknownClientError"
    assert errors["retryable"] == "true"
    assert totals["errors"] == _figures(errors)["errors"] == 1


def test_without_powertools_the_metrics_are_skipped_with_one_warning() -> None:
    script = """
import sys
sys.modules["aws_lambda_powertools"] = None  # not installed
from sfstream.observability import configure_logging
from sfstream.observability.emf import write_metrics
from sfstream.observability.telemetry import Telemetry
configure_logging(json=True)
print(write_metrics("r", Telemetry(), {}), write_metrics("r", Telemetry(), {}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.split() == ["False", "False"]
    warnings = [orjson.loads(line) for line in done.stderr.splitlines()]
    assert [w["event"] for w in warnings] == ["metrics_unavailable"]
    assert "sfstream[lambda]" in warnings[0]["note"]
