"""The Lambda handler streams until its deadline nears, then flushes and commits.

Its budget counts from the invocation's start, and no stall (token endpoint, REST, state
store) holds it past the deadline: the emulator stalls Salesforce, and a lock that the test
holds on the checkpoint table stalls PostgreSQL (the server of `SFSTREAM_TEST_POSTGRES_DSN`,
by default 127.0.0.1:5432; each test gets a database of its own, since the state store's
run lock is an advisory lock, which is per database).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from psycopg import sql

from sfstream.runners.aws_lambda import Budget, handler, release, run_until
from sfstream_emulator import Emulator, Fault, FaultKind
from tests.conftest import MakeConfig

STREAM = "sf.event.account_changes"
CHANNEL = "/data/AccountChangeEvent"
DSN = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")


@dataclass
class Context:
    """What the Lambda runtime passes (the outside world)."""

    remaining_ms: int
    aws_request_id: str = "req-123"

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


@pytest.fixture(autouse=True)
def _released() -> Iterator[None]:
    """Each test starts cold: what warm invocations kept is closed after it."""
    yield
    release()


@dataclass
class Postgres:
    """A database of its own on the test server, and a connection to it to look and lock."""

    admin: psycopg.AsyncConnection[Any]
    dsn: str

    async def checkpoint(self) -> int | None:
        """The committed checkpoint of the stream (None: none, or no table yet)."""
        cursor = await self.admin.execute("SELECT to_regclass('sfstream_checkpoints') IS NOT NULL")
        row = await cursor.fetchone()
        if row is None or not row[0]:
            return None
        cursor = await self.admin.execute(
            "SELECT replay_id FROM sfstream_checkpoints WHERE stream = %s", (STREAM,)
        )
        found = await cursor.fetchone()
        return None if found is None else int(found[0])

    async def lock(self) -> None:
        """Take the checkpoint table for the current transaction: the store's reads and
        writes wait."""
        await self.admin.execute("LOCK TABLE sfstream_checkpoints IN ACCESS EXCLUSIVE MODE")


@pytest.fixture
async def postgres() -> AsyncIterator[Postgres]:
    try:
        server = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable ({exc}); start it or set SFSTREAM_TEST_POSTGRES_DSN"
        )
    name = f"sfstream_lambda_{uuid.uuid4().hex[:10]}"
    async with server:
        await server.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            dsn = psycopg.conninfo.make_conninfo(DSN, dbname=name)
            async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
                yield Postgres(admin, dsn)
        finally:
            release()  # the handler's connections first
            await server.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


def json_lines(text: str) -> list[dict[str, Any]]:
    """The connector's JSON log lines in `text` (the test's own event loop may add a plain
    line of its own there, such as asyncio's note on a slow callback)."""
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


def records(path: Path | None) -> list[dict[str, Any]]:
    """The RECORD messages the file sink holds."""
    assert path is not None
    if not path.exists():
        return []
    messages = map(orjson.loads, path.read_bytes().splitlines())
    return [m for m in messages if m["type"] == "RECORD"]


def replay_ids(emu: Emulator) -> list[int]:
    return [m["data"]["event"]["replayId"] for m in emu.published(CHANNEL)]


async def invoke(event: dict[str, Any], remaining_ms: int) -> tuple[dict[str, Any], float]:
    """Call the handler as the runtime does, in a thread (the emulator serves on this
    loop); its summary, and how long before the deadline it returned (seconds)."""
    began = time.monotonic()
    summary = await asyncio.to_thread(handler, event, Context(remaining_ms))
    return summary, began + remaining_ms / 1000 - time.monotonic()


async def test_streams_until_the_budget_then_commits(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    for number in range(5):
        emu.create_record("Account", {"Name": f"L{number}"})
    budget = Budget.starting(remaining_s=3.0, margin_s=1.0)
    summary = await run_until(str(tmp_path / "sfstream.yaml"), "req-1", budget)
    assert time.monotonic() < budget.deadline
    assert summary["ok"], summary
    assert summary["run_id"] == "req-1"
    stream = summary["streams"][STREAM]
    assert stream["emitted"] == 5
    last = emu.published(CHANNEL)[-1]["data"]["event"]["replayId"]
    assert stream["checkpoint"] == last
    assert [m["data"]["Name"] for m in records(config.sink.path)] == [f"L{n}" for n in range(5)]


async def test_a_bad_config_is_reported_not_raised(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("streams: []\n")
    summary = await run_until(str(bad), "r", Budget.starting(remaining_s=6.0))
    assert summary["ok"] is False
    assert summary["retryable"] is False
    assert "salesforce" in summary["error"]


def test_handler_needs_a_config_and_time(tmp_path: Path) -> None:
    assert handler({}, Context(60_000))["error"].startswith("no configuration")
    config = tmp_path / "c.yaml"
    config.write_text("salesforce: {client_id: x, refresh_token: y}\nstreams: [{channel: /u/X}]\n")
    result = handler({"config": str(config)}, Context(600))
    assert result["ok"] is False
    assert result["retryable"] is False
    assert result["error"].startswith("not enough time left in the invocation to stream: 600 ms")


def test_the_margin_is_a_share_of_a_short_budget() -> None:
    assert Budget.starting(900.0, 20.0, now=0.0).stop_at == 880.0
    assert Budget.starting(6.0, 1.0, now=0.0).stop_at == 5.0
    short = Budget.starting(6.0, 20.0, now=0.0)
    assert short.margin_s == 2.0  # a third of the time left
    assert (short.stop_at, short.cut_at, short.return_at) == (4.0, 5.5, 5.75)
    assert Budget.starting(6.0, 0.0, now=0.0).margin_s == 0.5  # at least 0.5 s


async def test_a_stalled_token_endpoint_is_paid_from_the_budget(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """6 s left, a 1 s margin and a token endpoint 4 s slow: it logs in, streams what it
    can and returns before the deadline."""
    emu = sfstream_emulator
    config = await make_config(emu, state={"backend": "postgres", "dsn": postgres.dsn})
    for number in range(3):
        emu.create_record("Account", {"Name": f"T{number}"})
    emu.faults.add(Fault(kind=FaultKind.STALL, target="oauth", seconds=4.0))
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "1")
    summary, early_s = await invoke({"config": str(tmp_path / "sfstream.yaml")}, 6000)
    assert early_s > 0, f"returned {-early_s:.3f} s after the deadline"
    assert not emu.faults.queue
    assert summary["startup_ms"] >= 4000  # the login counts in the budget
    assert summary["ok"], summary
    assert [m["data"]["Name"] for m in records(config.sink.path)] == ["T0", "T1", "T2"]
    assert await postgres.checkpoint() == replay_ids(emu)[-1]


async def test_a_token_endpoint_stalled_past_the_stop_is_abandoned(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, state={"backend": "postgres", "dsn": postgres.dsn})
    emu.create_record("Account", {"Name": "S0"})
    emu.faults.add(Fault(kind=FaultKind.STALL, target="oauth", seconds=30.0))
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "1")
    summary, early_s = await invoke({"config": str(tmp_path / "sfstream.yaml")}, 4000)
    assert early_s > 0, f"returned {-early_s:.3f} s after the deadline"
    assert early_s < 1.2  # at the stop, not long before
    assert summary["ok"] is False
    assert summary["retryable"] is True
    assert "waiting for token endpoint localhost:" in summary["error"]
    assert "nothing committed" in summary["error"]
    assert records(config.sink.path) == []
    assert await postgres.checkpoint() is None


async def test_a_stalled_rest_call_is_abandoned_and_the_next_invocation_catches_up(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, state={"backend": "postgres", "dsn": postgres.dsn})
    for number in range(3):
        emu.create_record("Account", {"Name": f"R{number}"})
    emu.faults.add(Fault(kind=FaultKind.STALL, target="rest", seconds=10.0))
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "1")
    event = {"config": str(tmp_path / "sfstream.yaml")}
    summary, early_s = await invoke(event, 6000)
    assert early_s > 0, f"returned {-early_s:.3f} s after the deadline"
    assert summary["ok"] is False
    assert summary["retryable"] is True
    assert "waiting for REST API" in summary["error"]
    assert records(config.sink.path) == []
    assert await postgres.checkpoint() is None

    summary, early_s = await invoke(event, 3000)
    assert early_s > 0
    assert summary["ok"], summary
    assert [m["data"]["Name"] for m in records(config.sink.path)] == ["R0", "R1", "R2"]
    assert await postgres.checkpoint() == replay_ids(emu)[-1]


async def test_a_stalled_state_store_at_start_is_abandoned_with_nothing_committed(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, state={"backend": "postgres", "dsn": postgres.dsn})
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "1")
    event = {"config": str(tmp_path / "sfstream.yaml")}
    emu.create_record("Account", {"Name": "P0"})
    summary, _ = await invoke(event, 3000)
    assert summary["ok"], summary
    committed = await postgres.checkpoint()
    assert committed == replay_ids(emu)[-1]

    emu.create_record("Account", {"Name": "P1"})
    async with postgres.admin.transaction():
        await postgres.lock()
        summary, early_s = await invoke(event, 6000)
    assert early_s > 0, f"returned {-early_s:.3f} s after the deadline"
    assert summary["ok"] is False
    assert summary["retryable"] is True
    assert "waiting for the state store" in summary["error"]
    assert await postgres.checkpoint() == committed
    assert [m["data"]["Name"] for m in records(config.sink.path)] == ["P0"]

    summary, _ = await invoke(event, 3000)
    assert summary["ok"], summary
    assert [m["data"]["Name"] for m in records(config.sink.path)] == ["P0", "P1"]
    assert await postgres.checkpoint() == replay_ids(emu)[-1]


async def test_a_stalled_commit_is_cut_before_the_deadline_and_loses_nothing(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres: Postgres,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The state store stalls while the run commits: the records stay in the sink without
    their checkpoint, and the next invocation resumes after them."""
    emu = sfstream_emulator
    config = await make_config(emu, state={"backend": "postgres", "dsn": postgres.dsn})
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "1")
    event = {"config": str(tmp_path / "sfstream.yaml")}
    emu.create_record("Account", {"Name": "C0"})
    began = time.monotonic()
    running = asyncio.ensure_future(asyncio.to_thread(handler, event, Context(6000)))
    async with asyncio.timeout(5):
        while await postgres.checkpoint() != replay_ids(emu)[-1]:
            await asyncio.sleep(0.02)
    committed = replay_ids(emu)[-1]
    async with postgres.admin.transaction():
        await postgres.lock()
        for number in range(1, 4):
            emu.create_record("Account", {"Name": f"C{number}"})
        summary = await running
        returned = time.monotonic()
    assert returned < began + 6.0, f"returned {returned - began - 6.0:.3f} s after the deadline"
    assert summary["ok"] is False
    assert summary["retryable"] is True
    assert "still stopping" in summary["error"]
    assert summary["streams"][STREAM]["emitted"] == 4
    assert summary["streams"][STREAM]["checkpoint"] == committed
    assert await postgres.checkpoint() == committed
    assert len(records(config.sink.path)) == 4

    summary, _ = await invoke(event, 3000)
    assert summary["ok"], summary
    assert summary["streams"][STREAM]["emitted"] == 0
    names = [m["data"]["Name"] for m in records(config.sink.path)]
    assert names == ["C0", "C1", "C2", "C3"]
    assert await postgres.checkpoint() == replay_ids(emu)[-1]


async def test_warm_invocations_reuse_the_token_and_leave_nothing_running(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres: Postgres,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, state={"backend": "postgres", "dsn": postgres.dsn})
    event = {"config": str(tmp_path / "sfstream.yaml")}
    grants = emu.tokens.grants_issued
    summaries = []
    for number in range(3):
        emu.create_record("Account", {"Name": f"W{number}"})
        summary, early_s = await invoke(event, 2000)
        assert early_s > 0
        assert summary["ok"], summary
        summaries.append(summary)
        assert [t.name for t in threading.enumerate() if t.name.startswith("sfstream")] == []
    assert [s["logins"] for s in summaries] == [1, 0, 0]
    assert emu.tokens.grants_issued == grants + 1
    assert [s["streams"][STREAM]["emitted"] for s in summaries] == [1, 1, 1]
    assert [m["data"]["Name"] for m in records(config.sink.path)] == ["W0", "W1", "W2"]
    lines = json_lines(capsys.readouterr().err)
    ended = [line for line in lines if line.get("event") == "invocation_ended"]
    assert [line["tasks_left"] for line in ended] == [0, 0, 0]
    assert all(line["left_ms"] > 0 for line in ended)


async def test_sqlite_state_is_a_configuration_error_under_lambda(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    await make_config(emu)
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sfstream")
    grants = emu.tokens.grants_issued
    capsys.readouterr()
    summary, _ = await invoke({"config": str(tmp_path / "sfstream.yaml")}, 30_000)
    assert summary["ok"] is False
    assert summary["retryable"] is False
    assert summary["error"].startswith("state.backend is sqlite, which AWS Lambda cannot keep")
    assert str(tmp_path / "state.db") in summary["error"]
    assert "state.backend: dynamodb with state.table, or postgres" in summary["error"]
    assert emu.tokens.grants_issued == grants  # refused before logging in
    assert not (tmp_path / "state.db").exists()
    err = capsys.readouterr().err
    logged = json_lines(err)
    # No traceback from the connector. (The test process's own stdlib logging may print one
    # when an earlier test left a handler on a stream the runner has since closed.)
    assert not [line for line in logged if "exception" in line or "Traceback" in str(line)]
    (line,) = [line for line in logged if line.get("event") == "configuration_error"]
    assert line["error"] == summary["error"]
    assert line["level"] == "error"


async def test_an_sqlite_schema_registry_is_a_configuration_error_under_lambda(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    await make_config(
        emu,
        state={"backend": "postgres", "dsn": "postgresql://sfstream@127.0.0.1:9/unused"},
        schema_registry={"backend": "sqlite", "path": "schemas.db"},
    )
    monkeypatch.setenv("AWS_LAMBDA_FUNCTION_NAME", "sfstream")
    summary, _ = await invoke({"config": str(tmp_path / "sfstream.yaml")}, 30_000)
    assert summary["ok"] is False
    assert summary["retryable"] is False
    assert summary["error"].startswith("schema_registry.backend is sqlite, which AWS Lambda")
    assert str(tmp_path / "schemas.db") in summary["error"]
    assert "schema_registry.backend: state" in summary["error"]
    assert not (tmp_path / "schemas.db").exists()


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
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "0.5")
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
