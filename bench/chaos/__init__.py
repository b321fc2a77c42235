"""Chaos runs: the connector under seeded faults and SIGKILLs, then an audit of its output.

A chaos run starts the bundled emulator in this process, turns on its seeded chaos mode
(dropped and cut responses, 503s, stalls, unknown clients, token revocations, expired
clients), publishes events across several channels at a steady rate, and meanwhile runs
`sfstream run` as a subprocess (SQLite state; the file sink, or with a `Destination` in the
plan the Kafka, PostgreSQL or S3 sink) that it SIGKILLs and restarts at random moments. The
run after the last kill catches up and is stopped with SIGTERM. Then the audit checks:

- every published event is in the sink (per stream, by replayId), none lost;
- no record appears twice (`(stream, replayId, key)`), and within a stream replayIds never
  go backwards (within a partition for Kafka);
- no `GAP`, no unreadable line, no line that disappeared between two reads (the file sink
  is read as it grows; another destination is read back from the start at the end, and only
  asked what it holds after each kill);
- at every kill, each checkpoint was at or below what the sink held; at the end each
  checkpoint equals its channel's last replayId;
- every connector run ended by a kill or by the final SIGTERM (exit 0), no traceback;
- no secret (client secret, refresh token, password, every access token the emulator
  issued) appears in any file the connector wrote: sink, state database, stdout, stderr.

The modules, by job:

- `bench.chaos.plan`: `ChaosPlan`, `default_faults`, the channels the publisher can feed
  and the layout of a run's working directory;
- `bench.chaos.run`: `run_chaos`, the publisher and the supervisor of the connector runs;
- `bench.chaos.audit`: `SinkAudit`, `StreamAudit`, the checkpoints, `scan_for_secrets`
  and `count_log_events`;
- `bench.chaos.destinations`: the Kafka, PostgreSQL and S3 destinations (`--sink`), each
  read back independently of its sink (confluent-kafka, psycopg, boto3);
- `bench.chaos.report`: `ChaosReport`, its failures, JSON and summary;
- `bench.chaos.__main__`: the command line (`python -m bench.chaos`, `make chaos`).

The emulator is imported here, never by the connector package `sfstream`, which is why
the harness lives under `bench/`. `python -m bench.chaos` (`make chaos`, run from the
repository root) runs the full version and `tests/bench/test_chaos.py` a reduced one; both
call `run_chaos`:

    report = await run_chaos(ChaosPlan(workdir=tmp, events=5_000, duration_s=8, kills=3))
    assert report.ok, report.summary()

Fault choice is seeded, but which request a fault hits depends on timing, so two runs with
the same seed publish the same events and kill at the same moments, without being
identical request for request.
"""

from __future__ import annotations

from bench.chaos.audit import Leak, SinkAudit, StreamAudit, count_log_events, scan_for_secrets
from bench.chaos.destinations import (
    Destination,
    KafkaDestination,
    PostgresDestination,
    S3Destination,
)
from bench.chaos.plan import DEFAULT_CHANNELS, ChaosPlan, default_faults
from bench.chaos.report import ChaosReport
from bench.chaos.run import run_chaos

__all__ = [
    "DEFAULT_CHANNELS",
    "ChaosPlan",
    "ChaosReport",
    "Destination",
    "KafkaDestination",
    "Leak",
    "PostgresDestination",
    "S3Destination",
    "SinkAudit",
    "StreamAudit",
    "count_log_events",
    "default_faults",
    "run_chaos",
    "scan_for_secrets",
]
