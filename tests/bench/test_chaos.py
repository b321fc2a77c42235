"""The chaos run, reduced for CI, and the audit it relies on.

`make chaos` (`python -m bench.chaos`) publishes 100,000 events while the emulator injects
seeded faults and the connector is SIGKILLed 20 times. This test runs the same code
(`bench.chaos`) with 5,000 events, 3 kills and denser faults, and fails on any
lost, duplicated or reordered event, a checkpoint ahead of the sink, a crash, or a secret
in any file the connector wrote. The audit's own checks are tested below on files written
by hand, so that a silent audit cannot pass a broken run.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from bench.chaos import (
    ChaosPlan,
    ChaosReport,
    SinkAudit,
    StreamAudit,
    count_log_events,
    run_chaos,
    scan_for_secrets,
)

from sfstream_emulator import ChaosSettings

SEED = 6
# Denser than the full run's defaults: a 5,000-event run makes a few hundred requests, and
# every kind of fault should still happen a few times.
CI_FAULTS = ChaosSettings(
    seed=SEED,
    drop=0.03,
    cut=0.03,
    http_503=0.03,
    stall=0.02,
    stall_s=1.0,
    unknown_client=0.03,
    revoke_tokens=0.02,
    expire_clients=0.02,
)


@pytest.mark.slow
async def test_reduced_chaos_run_loses_repeats_reorders_and_leaks_nothing(
    tmp_path: Path,
) -> None:
    plan = ChaosPlan(
        workdir=tmp_path / "chaos",
        events=5_000,
        duration_s=8.0,
        kills=3,
        seed=SEED,
        faults=CI_FAULTS,
        poll_timeout_s=1.0,
        catch_up_timeout_s=40.0,
        shutdown_timeout_s=10.0,
    )
    report = await run_chaos(plan)
    assert report.ok, report.summary()
    assert report.published == 5_000
    assert report.delivered == 5_000
    assert report.kills == 3
    assert report.kill_checks >= 1
    assert len(report.streams) == 4
    assert sum(report.faults_injected.values()) > 0, report.summary()
    assert report.access_tokens_issued >= 1  # a run killed while starting asks for none
    assert report.secrets_checked == 3 + report.access_tokens_issued
    assert report.files_scanned >= 2 * report.runs + 2  # logs, sink and state at least


# -- the audit catches what it must ---------------------------------------------------------


def record(stream: str, replay_id: int, key: str | None = "k") -> bytes:
    message = {"type": "RECORD", "stream": stream, "replay_id": replay_id, "key": key}
    return orjson.dumps(message) + b"\n"


def test_sink_audit_counts_duplicates_regressions_and_bad_lines(tmp_path: Path) -> None:
    sink = tmp_path / "records.jsonl"
    sink.write_bytes(
        record("s.a", 10)
        + record("s.a", 12)
        + record("s.a", 12)  # a duplicate
        + record("s.a", 11)  # out of order
        + b'{"type": "STATE", "stream": "s.a", "replay_id": 12}\n'
        + b'{"type": "GAP", "stream": "s.a"}\n'
        + b"not json\n"
        + record("s.other", 1)  # a stream nobody configured
        + b'{"type": "RECORD", "stream": "s.a", "repl'  # a torn tail: not read yet
    )
    audit = SinkAudit(sink, {"/event/A__e": "s.a"})
    assert audit.ingest() == 8
    stream = audit.streams["s.a"]
    assert (stream.records, stream.duplicates, stream.out_of_order) == (4, 1, 1)
    assert stream.replay_ids == {10, 11, 12}
    assert (audit.gaps, audit.corrupt_lines, audit.unknown_streams) == (1, 1, 1)
    assert audit.states == {"s.a": 12}
    stream.compare([10, 11, 12, 14])
    assert (stream.lost, stream.lost_sample, stream.unexpected) == (1, [14], 0)

    # The next writer cuts the torn tail and appends; nothing is read twice.
    data = sink.read_bytes()
    sink.write_bytes(data[: data.rfind(b"\n") + 1] + record("s.a", 14))
    assert audit.ingest() == 1
    assert audit.reached({"s.a": 14})
    sink.write_bytes(b"")
    audit.ingest()
    assert audit.truncations == 1


def test_a_report_fails_on_every_kind_of_damage() -> None:
    clean = StreamAudit("s.a", "/event/A__e", records=3, replay_ids={1, 2, 3})
    clean.compare([1, 2, 3])
    clean.checkpoint = 3
    report = ChaosReport(plan={}, streams=[clean], caught_up=True, final_exit_code=0)
    assert report.ok, report.failures()
    damaged = StreamAudit("s.a", "/event/A__e", records=3, duplicates=1, replay_ids={1, 3})
    damaged.compare([1, 2, 3])
    bad = ChaosReport(
        plan={},
        streams=[damaged],
        caught_up=True,
        final_exit_code=1,
        unexpected_exits=[1],
        tracebacks=1,
        checkpoint_violations=["after kill 1: s.a checkpoint 3 is ahead of the sink's 1"],
    )
    failures = " | ".join(bad.failures())
    for expected in (
        "1 event(s) lost",
        "1 duplicate",
        "ahead of the sink",
        "exited on their own",
        "exited 1",
        "traceback",
    ):
        assert expected in failures
    assert "FAIL" in bad.summary()


def test_secret_scan_finds_every_value_without_reporting_it(tmp_path: Path) -> None:
    org = "00D5g00000EmuOr"
    tokens = {f"access_token[{i}]": f"{org}!AQ{i:03d}-{'x' * 40}" for i in range(300)}
    log = tmp_path / "run.stderr"
    log.write_text('{"event": "ok"}\n' + f'{{"header": "Bearer {tokens["access_token[299]"]}"}}\n')
    (tmp_path / "records.jsonl").write_text("client-secret-value-123 in a record\n")
    values = {**tokens, "client_secret": "client-secret-value-123"}
    leaks, scanned = scan_for_secrets(
        [log, tmp_path / "records.jsonl", tmp_path / "missing"], values, root=tmp_path
    )
    assert {(leak.file, leak.secret) for leak in leaks} == {
        ("run.stderr", "access_token[299]"),
        ("records.jsonl", "client_secret"),
    }
    assert scanned == log.stat().st_size + (tmp_path / "records.jsonl").stat().st_size
    assert all("x" * 40 not in repr(leak) for leak in leaks)


def test_log_events_and_tracebacks_are_counted(tmp_path: Path) -> None:
    log = tmp_path / "run.stderr"
    log.write_text(
        '{"event": "reconnecting"}\n{"event": "reconnecting"}\n'
        '{"event": "client_crashed", "exception": "Traceback ..."}\n'
        "Traceback (most recent call last):\n  File ...\n"
        '{"event": "torn'
    )
    events, tracebacks = count_log_events([log])
    assert events == {"reconnecting": 2, "client_crashed": 1}
    assert tracebacks == 2
