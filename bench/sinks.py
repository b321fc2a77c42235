"""Events per second and CPU per event of `sfstream run` into each sink, against the file sink.

The emulator runs in its own process with N change events of about 1 KB in
`/data/AccountChangeEvent` (control API `events/generate`). Each run is `sfstream run` in its
own process, SQLite checkpoints and default batching (up to 2,000 records a batch, written as
soon as nothing more is waiting), replaying the channel from the earliest event into one
sink, with that sink's defaults:

- `file`: the JSON lines file, fsynced after every batch;
- `kafka`: a Tansu broker (bench/servers.py, memory storage) on this machine; the run's two
  topics (`<prefix>.<stream>`, `<prefix>.control`) are created beforehand with 4 partitions
  (Tansu's default for a topic it creates), as production topics would be;
- `postgres`: the PostgreSQL of the tests (127.0.0.1:5432), a table of the run's own, dropped
  after the run;
- `s3`: moto's server (bench/servers.py), a bucket of the run's own, gzipped objects (the
  sink's default); `s3_plain`: the same with `compression: none`, which shows gzip's share.

Wall time runs from spawn to the moment the run's checkpoint (in its SQLite state, polled
every 10 ms once the stream started) reaches the last replayId: the engine commits a
checkpoint only after the sink's write returned, so every event is in the sink by then. The
run is then stopped with SIGTERM. "Streaming" time starts at the run's `stream_started` log
line instead (start-up done, the sink reached and its high-water marks read): the rate of
the replay itself, without the process's start.

CPU is the connector process's user + sys (`os.wait4`, threads included: librdkafka's, the S3
sink's PUT pool) over the events; it includes start-up and shutdown, so a fixed-cost run per
sink (subscribe to new events only, then stop: the sink's library imported and its
destination reached, no event) gives the marginal CPU per event too. Each run's CPU by thread
is read from /proc at its last checkpoint (Python 3.11 names no thread: the sink's worker
threads show as `python`). The destination server's CPU is measured alongside (Tansu's and
moto's process; for PostgreSQL the backend serving the run, found by its `application_name`),
as is the emulator's. After each run, the destination is counted (outside the timing): it
must hold every event.

Runs alternate between the sinks in a rotating order for `--rounds` rounds; medians, and each
sink's ratio to the file sink within this run, are reported. moto is not S3: the S3 figures
are the sink's own CPU against a local, single-threaded endpoint, not a prediction of what
AWS would sustain.

    .venv/bin/python bench/sinks.py [--events 50000] [--rounds 3] [--profile]
    .venv/bin/python bench/sinks.py --quick      # 5,000 events, 1 round: a smoke run

Results go to bench/results/sinks.json (with the table for docs/benchmarks.md, printed too;
`--docs` writes it into docs/benchmarks.md's `sinks` section).
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from benchlib import (
    CLIENT_ID,
    ROOT,
    SFSTREAM,
    file_contains,
    finish_machine,
    machine,
    machine_line,
    median,
    proc_cpu_s,
    proc_threads_cpu,
    reap,
    refresh_docs,
    sfstream_env,
    start_emulator,
    start_py_spy,
    stop,
    summarize_profile,
    write_result,
)
from benchlib import prefill as generate
from servers import AWS_REGION, POSTGRES_DSN, ServerError, Servers, aws_environment, without_aws
from sfstream.streams import stream_id

CHANNEL = "/data/AccountChangeEvent"
STREAM = stream_id(CHANNEL)
SINKS = ("file", "kafka", "postgres", "s3", "s3_plain")
SERVER_OF = {"kafka": "kafka", "postgres": "postgres", "s3": "s3", "s3_plain": "s3"}
NAMES = {
    "file": "file (fsync per batch)",
    "kafka": "Kafka (Tansu, acks=all, idempotent)",
    "postgres": "PostgreSQL (one INSERT per batch)",
    "s3": "S3 on moto (gzip, the default)",
    "s3_plain": "S3 on moto (compression: none)",
}
SERVER_NAMES = {
    "kafka": "Tansu",
    "postgres": "PostgreSQL backend",
    "s3": "moto",
    "s3_plain": "moto",
}
WORK = Path(tempfile.gettempdir()) / f"sfstream-bench-sinks-{os.getpid()}"
POLL_S = 0.01
RUN_TIMEOUT_S = 600.0
KAFKA_PARTITIONS = 4


def _run_id() -> str:
    return uuid.uuid4().hex[:10]


# -- the destinations -----------------------------------------------------------------------


@dataclass
class Destination:
    """One run's destination: the connector's `sink:` settings and how to count what it holds."""

    sink: str
    settings: dict[str, Any]
    count: Callable[[], int]
    """RECORDs held (after the run)."""
    cleanup: Callable[[], None] = lambda: None
    env: dict[str, str] = field(default_factory=dict)
    server_pid: int | None = None
    """The destination server's process, when the harness started it."""
    application_name: str | None = None
    """PostgreSQL: the `application_name` of the run's connection."""


def destination(sink: str, servers: Servers, directory: Path) -> Destination:
    """A fresh destination of `sink` (a file, topics, a table or a bucket of its own)."""
    if sink == "file":
        path = directory / "records.jsonl"
        return Destination(sink, {"type": "file", "path": str(path)}, lambda: _count_file(path))
    if sink == "kafka":
        assert servers.kafka is not None
        return _kafka(servers.kafka, servers.pids["kafka"])
    if sink == "postgres":
        assert servers.postgres is not None
        return _postgres(servers.postgres)
    assert servers.s3 is not None
    return _s3(sink, servers.s3, servers.pids["s3"])


def _count_file(path: Path) -> int:
    with path.open("rb") as handle:
        return sum(1 for line in handle if b'"type":"RECORD"' in line)


def _kafka(bootstrap: str, pid: int) -> Destination:
    from confluent_kafka.admin import AdminClient, NewTopic

    prefix = f"bench-{_run_id()}"
    topic, control = f"{prefix}.{STREAM}", f"{prefix}.control"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = admin.create_topics(
        [NewTopic(t, num_partitions=KAFKA_PARTITIONS) for t in (topic, control)]
    )
    for future in created.values():
        future.result(15)
    settings = {
        "type": "kafka",
        "bootstrap_servers": bootstrap,
        "topic": f"{prefix}.{{stream}}",
        "control_topic": control,
    }
    return Destination("kafka", settings, lambda: _count_topic(bootstrap, topic), server_pid=pid)


def _count_topic(bootstrap: str, topic: str) -> int:
    """Messages in every partition of `topic`, read from offset 0 to the end with `assign()`."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"bench-count-{_run_id()}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
        }
    )
    try:
        consumer.assign([TopicPartition(topic, p, 0) for p in range(KAFKA_PARTITIONS)])
        pending = set(range(KAFKA_PARTITIONS))
        count = 0
        deadline = time.monotonic() + 120
        while pending and time.monotonic() < deadline:
            for message in consumer.consume(5000, 0.2):
                error = message.error()
                if error is None:
                    count += 1
                elif error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
        if pending:
            raise SystemExit(f"{topic}: partitions {sorted(pending)} did not reach their end")
        return count
    finally:
        consumer.close()


def _postgres(dsn: str) -> Destination:
    import psycopg
    from psycopg import sql

    table = f"bench_{_run_id()}"
    application = f"sfstream-bench-{table}"
    separator = "&" if "?" in dsn else "?"
    settings = {
        "type": "postgres",
        "dsn": f"{dsn}{separator}application_name={application}",
        "table": table,
    }

    def count() -> int:
        with psycopg.connect(dsn) as connection:
            row = connection.execute(
                sql.SQL("SELECT count(*) FROM {} WHERE type = 'RECORD'").format(
                    sql.Identifier(table)
                )
            ).fetchone()
        return int(row[0]) if row else 0

    def cleanup() -> None:
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table)))

    return Destination("postgres", settings, count, cleanup=cleanup, application_name=application)


def _s3(sink: str, endpoint: str, pid: int) -> Destination:
    import boto3

    bucket = f"bench-{_run_id()}"
    client = boto3.client(
        "s3",
        region_name=AWS_REGION,
        endpoint_url=endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",  # moto's dummy key
    )
    client.create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": AWS_REGION}
    )
    settings = {
        "type": "s3",
        "bucket": bucket,
        "prefix": "bench",
        "region": AWS_REGION,
        "endpoint_url": endpoint,
        "compression": "none" if sink == "s3_plain" else "gzip",
    }

    def count() -> int:
        records = 0
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", ()):
                body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
                if item["Key"].endswith(".gz"):
                    body = gzip.decompress(body)
                records += body.count(b'"type":"RECORD"')
        return records

    return Destination(sink, settings, count, env=aws_environment(), server_pid=pid)


# -- one run --------------------------------------------------------------------------------


def write_config(directory: Path, url: str, sink: dict[str, Any], *, fixed: bool) -> Path:
    """The run's configuration: the emulator, SQLite state in `directory`, and `sink`."""
    document = {
        "salesforce": {
            "login_url": url,
            "client_id": CLIENT_ID,
            "client_secret": "${secret:SF_CLIENT_SECRET}",
            "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        },
        "secrets": {"backend": "env"},
        "streams": [{"channel": CHANNEL, "initial_replay": "latest" if fixed else "earliest"}],
        "state": {"backend": "sqlite", "path": "state.db"},
        "sink": sink,
        "logging": {"level": "info", "format": "json"},
    }
    path = directory / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


class Checkpoint:
    """The run's checkpoint of the stream, read from its SQLite state.

    Opened only once the run logged `stream_started` (its state is set up by then: a reader
    opening it earlier could get in the way of its switch to WAL mode).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None

    def replay_id(self) -> int | None:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=1.0)
        try:
            row = self._db.execute(
                "SELECT replay_id FROM sfstream_checkpoints WHERE stream = ?", (STREAM,)
            ).fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class BackendCpu:
    """CPU seconds of the PostgreSQL backend serving the run (found by `application_name`)."""

    def __init__(self, dsn: str, application: str) -> None:
        self.dsn = dsn
        self.application = application
        self.pid: int | None = None
        self.cpu_s = 0.0
        self._next_look = 0.0

    def sample(self) -> None:
        if self.pid is None:
            now = time.perf_counter()
            if now < self._next_look:
                return
            self._next_look = now + 0.1
            import psycopg

            with psycopg.connect(self.dsn) as connection:
                row = connection.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                    (self.application,),
                ).fetchone()
            if row is None:
                return
            self.pid = int(row[0])
        with contextlib.suppress(OSError, ValueError, IndexError):
            self.cpu_s = proc_cpu_s(self.pid)


def thread_groups(pid: int) -> dict[str, float]:
    """CPU seconds of a running process's threads, by kind (librdkafka's, the S3 pool...)."""
    groups: dict[str, float] = {}
    for name, usage in proc_threads_cpu(pid).items():
        if name.startswith("rdk:"):
            kind = "librdkafka (rdk:*)"
        elif name.startswith("sfstream-s3"):
            kind = "S3 PUT pool (sfstream-s3*)"
        elif name == "main":
            kind = "main (event loop)"
        elif name == "python":
            kind = "worker threads (python)"
        else:
            kind = re.sub(r"[-_]?\d+$", "", name)
        groups[kind] = groups.get(kind, 0.0) + usage["user_s"] + usage["sys_s"]
    return {k: round(v, 3) for k, v in sorted(groups.items())}


def run_once(
    sink: str,
    servers: Servers,
    url: str,
    last: int,
    emulator_pid: int,
    *,
    fixed: bool = False,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """One `sfstream run` into `sink`, from spawn to exit; `fixed`: new events only, then stop."""
    directory = WORK / sink
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    target = destination(sink, servers, directory)
    config = write_config(directory, url, target.settings, fixed=fixed)
    stderr_path = directory / "stderr.log"
    env = sfstream_env()
    if target.env:
        env = without_aws(env) | target.env
    server_cpu = proc_cpu_s(target.server_pid) if target.server_pid else None
    backend = (
        BackendCpu(servers.postgres or POSTGRES_DSN, target.application_name)
        if target.application_name
        else None
    )
    emulator_cpu = proc_cpu_s(emulator_pid)
    checkpoint = Checkpoint(directory / "state.db")
    spy: subprocess.Popen[bytes] | None = None
    threads: dict[str, float] = {}
    try:
        with stderr_path.open("wb") as stderr:
            started = time.perf_counter()
            process = subprocess.Popen(
                [*SFSTREAM, "run", "--config", str(config)],
                cwd=directory,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        done_at: float | None = None
        streaming_at: float | None = None
        streaming = False
        deadline = started + RUN_TIMEOUT_S
        exited = None
        try:
            while exited is None:
                if time.perf_counter() > deadline:
                    raise SystemExit(f"{sink} did not finish within {RUN_TIMEOUT_S:.0f} s")
                if done_at is None:
                    if not streaming:
                        streaming = file_contains(stderr_path, b'"event":"stream_started"')
                        if streaming:
                            streaming_at = time.perf_counter()
                        if streaming and profile_to is not None:
                            spy = start_py_spy(process.pid, profile_to)
                    if backend is not None:
                        backend.sample()
                    if streaming and (fixed or (checkpoint.replay_id() or -1) >= last):
                        done_at = time.perf_counter()
                        with contextlib.suppress(OSError, FileNotFoundError):
                            threads = thread_groups(process.pid)
                        process.send_signal(signal.SIGTERM)
                exited = reap(process, block=False)
                if exited is None:
                    time.sleep(POLL_S)
        finally:
            if process.returncode is None:
                process.kill()
                reap(process)
            if spy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    spy.wait(timeout=30)
        checkpoint.close()
        if exited.status != 0:
            tail = stderr_path.read_text(errors="replace")[-2000:]
            raise SystemExit(f"{sink} exited with {exited.status}:\n{tail}")
        server_cpu_s = None
        if server_cpu is not None and target.server_pid is not None:
            server_cpu_s = proc_cpu_s(target.server_pid) - server_cpu
        elif backend is not None and backend.pid is not None:
            server_cpu_s = backend.cpu_s
        emulator_cpu_s = proc_cpu_s(emulator_pid) - emulator_cpu
        held = 0 if fixed else target.count()
    finally:
        target.cleanup()
    events = held
    wall = (done_at or exited.ended) - started
    streaming_s = (done_at or exited.ended) - (streaming_at or started)
    return {
        "sink": sink,
        "kind": "fixed" if fixed else "drain",
        "events": events,
        "cpu_s": exited.cpu_s,
        "user_s": exited.user_s,
        "sys_s": exited.sys_s,
        "wall_s": wall,
        "wall_to_exit_s": exited.ended - started,
        "events_per_s": events / wall if events else 0.0,
        "streaming_s": streaming_s,
        "streaming_events_per_s": events / streaming_s if events else 0.0,
        "cpu_us_per_event": exited.cpu_s / events * 1e6 if events else None,
        "max_rss_mb": exited.max_rss_mb,
        "threads_cpu_s": threads,
        "server_cpu_s": server_cpu_s,
        "emulator_cpu_s": emulator_cpu_s,
    }


# -- summary --------------------------------------------------------------------------------


def summarize(sinks: list[str], runs: list[dict[str, Any]], events: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for sink in sinks:
        drains = [r for r in runs if r["sink"] == sink and r["kind"] == "drain"]
        fixed = [r for r in runs if r["sink"] == sink and r["kind"] == "fixed"]
        fixed_cpu = median(r["cpu_s"] for r in fixed) if fixed else 0.0
        servers = [r["server_cpu_s"] for r in drains if r["server_cpu_s"] is not None]
        threads: dict[str, float] = {}
        for kind in {k for r in drains for k in r["threads_cpu_s"]}:
            threads[kind] = round(median(r["threads_cpu_s"].get(kind, 0.0) for r in drains), 3)
        summary[sink] = {
            "runs": len(drains),
            "events_per_s": median(r["events_per_s"] for r in drains),
            "wall_s": median(r["wall_s"] for r in drains),
            "streaming_events_per_s": median(r["streaming_events_per_s"] for r in drains),
            "streaming_s": median(r["streaming_s"] for r in drains),
            "cpu_s": median(r["cpu_s"] for r in drains),
            "user_s": median(r["user_s"] for r in drains),
            "sys_s": median(r["sys_s"] for r in drains),
            "cpu_us_per_event": median(r["cpu_s"] for r in drains) / events * 1e6,
            "fixed_cpu_s": fixed_cpu,
            "marginal_cpu_us_per_event": median(r["cpu_s"] - fixed_cpu for r in drains)
            / events
            * 1e6,
            "server_cpu_us_per_event": median(servers) / events * 1e6 if servers else None,
            "emulator_cpu_s": median(r["emulator_cpu_s"] for r in drains),
            "max_rss_mb": median(r["max_rss_mb"] for r in drains),
            "threads_cpu_s": dict(sorted(threads.items())),
        }
    ratios: dict[str, dict[str, float]] = {}
    if "file" in summary:
        base = summary["file"]
        for sink in sinks:
            if sink == "file":
                continue
            row = summary[sink]
            ratios[sink] = {
                "events_per_s": row["events_per_s"] / base["events_per_s"],
                "streaming_events_per_s": row["streaming_events_per_s"]
                / base["streaming_events_per_s"],
                "cpu_per_event": row["cpu_us_per_event"] / base["cpu_us_per_event"],
                "marginal_cpu_per_event": row["marginal_cpu_us_per_event"]
                / base["marginal_cpu_us_per_event"],
            }
    return {"sinks": summary, "ratios_to_file": ratios}


def docs_section(result: dict[str, Any]) -> str:
    rows = [
        "| sink | events/s (wall) | x file | events/s (streaming) | x file | CPU µs/event "
        "| x file | fixed CPU s | marginal µs/event | x file | server CPU µs/event "
        "| peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    ratios = result["summary"]["ratios_to_file"]
    same = dict.fromkeys(
        ("events_per_s", "streaming_events_per_s", "cpu_per_event", "marginal_cpu_per_event"),
        1.0,
    )
    for sink, row in result["summary"]["sinks"].items():
        ratio = ratios.get(sink, same)
        server = row["server_cpu_us_per_event"]
        server_text = "-" if server is None else f"{server:.1f} ({SERVER_NAMES[sink]})"
        rows.append(
            f"| {NAMES.get(sink, sink)} | {row['events_per_s']:,.0f} | "
            f"{ratio['events_per_s']:.2f} | {row['streaming_events_per_s']:,.0f} | "
            f"{ratio['streaming_events_per_s']:.2f} | {row['cpu_us_per_event']:.1f} | "
            f"{ratio['cpu_per_event']:.2f} | {row['fixed_cpu_s']:.2f} | "
            f"{row['marginal_cpu_us_per_event']:.1f} | {ratio['marginal_cpu_per_event']:.2f} | "
            f"{server_text} | {row['max_rss_mb']:.0f} |"
        )
    threads = ["| sink | CPU s by thread (median, read at the last checkpoint) |", "|---|---|"]
    for sink, row in result["summary"]["sinks"].items():
        parts = ", ".join(f"{k} {v:.2f}" for k, v in row["threads_cpu_s"].items())
        threads.append(f"| {sink} | {parts} |")
    profiles = result.get("profile") or {}
    if profiles:
        threads += [
            "",
            "Where the connector's Python time goes: py-spy on one extra run per sink (not in the "
            "medians), from `stream_started` on, sampling only the thread holding the GIL (so "
            "not librdkafka's threads, nor zlib and socket calls that release it). Share of the "
            "samples whose innermost sfstream frame is in the sink's module, and its hottest "
            "own functions:",
            "",
            "| sink | samples | in the sink's module | hottest sink functions (own time) |",
            "|---|---|---|---|",
        ]
        for sink, summary in profiles.items():
            hottest = ", ".join(
                f"`{row['function'].split(':', 1)[1]}` {row['share'] * 100:.0f}%"
                for row in summary.get("sink_functions", [])
            )
            threads.append(
                f"| {sink} | {summary['samples']} | {summary.get('sink_share', 0) * 100:.0f}% "
                f"| {hottest or '-'} |"
            )
    lines = [
        "## Sinks: the same replay into each sink",
        "",
        f"`.venv/bin/python {result['command']}`",
        "",
        machine_line(result["machine"]),
        "",
        f"The emulator (own process) holds {result['events']:,} change events of about 1 KB in "
        f"`{CHANNEL}`; each run is `sfstream run` replaying them from the earliest into one "
        "sink (its defaults, default batching, SQLite checkpoints). Wall: spawn to the "
        "checkpoint at the last replayId (committed after the sink's write returned); "
        "streaming: from the run's `stream_started` log line (start-up done, the sink reached "
        "and its high-water marks read) to that checkpoint. CPU: "
        "the connector's user + sys over the events (`os.wait4`, threads included), the "
        f"median of {result['rounds']} alternated runs; the fixed cost is a run that starts, "
        "reaches its sink and subscribes without an event; the marginal figure subtracts it. "
        "Server CPU: the destination's own process (Tansu, moto; for PostgreSQL the backend of "
        "the run's connection), on the same 2 cores. moto is not S3: its figures are a floor "
        "of the sink's own CPU, not a prediction of AWS throughput.",
        "",
        *rows,
        "",
        *threads,
        "",
    ]
    return "\n".join(lines)


# -- profiles and main ----------------------------------------------------------------------


def profile_runs(
    sinks: list[str], servers: Servers, url: str, last: int, emulator_pid: int
) -> dict[str, Any]:
    """One run per sink under py-spy (not in the medians), attached once the stream started."""
    profiles = {}
    for sink in sinks:
        raw = WORK / f"profile_{sink}.txt"  # summarised into the results, then removed
        run_once(sink, servers, url, last, emulator_pid, profile_to=raw)
        profiles[sink] = summary = summarize_profile(raw)
        # benchlib names the area of sfstream/sinks/ after the file sink; here it is each sink's.
        for area in summary["areas"]:
            if area["function"].startswith("sfstream: file sink"):
                area["function"] = f"sfstream: the {sink} sink (sfstream/sinks/)"
        summary["sink_share"] = sum(
            row["share"] for row in summary["areas"] if row["function"].startswith("sfstream: the")
        )
        summary["sink_functions"] = [
            row for row in summary["self"] if "sfstream/sinks/" in row["function"]
        ][:4]
        top = profiles[sink]["self"][:5]
        print(
            f"profile {sink}: " + ", ".join(f"{t['function']} {t['share'] * 100:.0f}%" for t in top)
        )
    return profiles


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--fixed-rounds", type=int, default=1)
    parser.add_argument(
        "--sinks", default=",".join(SINKS), help="comma-separated, from " + ", ".join(SINKS)
    )
    parser.add_argument("--postgres-dsn", default=POSTGRES_DSN)
    parser.add_argument("--profile", action="store_true", help="one extra run per sink, py-spy")
    parser.add_argument("--quick", action="store_true", help="5,000 events, 1 round")
    parser.add_argument(
        "--docs", action="store_true", help="write the table into docs/benchmarks.md"
    )
    args = parser.parse_args()
    if args.quick:
        args.events, args.rounds, args.fixed_rounds = 5_000, 1, 1
    sinks = [s.strip() for s in args.sinks.split(",") if s.strip()]
    unknown = sorted(set(sinks) - set(SINKS))
    if unknown:
        raise SystemExit(f"unknown sinks {unknown}; known: {list(SINKS)}")

    started_machine = machine()
    runs: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    WORK.mkdir(parents=True, exist_ok=True)
    try:
        servers = Servers(
            {SERVER_OF[s] for s in sinks if s in SERVER_OF},
            WORK / "servers",
            postgres_dsn=args.postgres_dsn,
        ).__enter__()
    except ServerError as exc:
        raise SystemExit(f"bench/sinks.py: {exc}") from None
    emulator, url = start_emulator(poll_timeout_s=5)
    try:
        last, fill_s = generate(url, "Account", args.events, 1024)
        print(f"pre-filled {args.events:,} events in {fill_s:.1f} s; last replayId {last}")
        for index in range(max(args.rounds, args.fixed_rounds)):
            shift = index % len(sinks)
            for sink in sinks[shift:] + sinks[:shift]:
                if index < args.fixed_rounds:
                    run = run_once(sink, servers, url, last, emulator.pid, fixed=True)
                    runs.append(run)
                    print(
                        f"round {index + 1} {sink:>9} fixed: CPU {run['cpu_s']:.2f} s, "
                        f"wall {run['wall_to_exit_s']:.2f} s"
                    )
                if index < args.rounds:
                    run = run_once(sink, servers, url, last, emulator.pid)
                    runs.append(run)
                    server = run["server_cpu_s"]
                    print(
                        f"round {index + 1} {sink:>9}: {run['events']:,} events, "
                        f"{run['events_per_s']:,.0f}/s (wall {run['wall_s']:.2f} s), "
                        f"CPU {run['cpu_s']:.2f} s ({run['cpu_us_per_event']:.1f} µs/event), "
                        + (f"server CPU {server:.2f} s, " if server is not None else "")
                        + f"RSS {run['max_rss_mb']:.0f} MB"
                    )
                    if run["events"] != args.events:
                        raise SystemExit(f"{sink} holds {run['events']} records, not {args.events}")
        if args.profile:
            profiles = profile_runs(sinks, servers, url, last, emulator.pid)
    finally:
        stop(emulator)
        servers.close()
    shutil.rmtree(WORK, ignore_errors=True)

    summary = summarize(sinks, runs, args.events)
    result = {
        "benchmark": "sinks",
        "events": args.events,
        "rounds": args.rounds,
        "fixed_rounds": args.fixed_rounds,
        "prefill_s": fill_s,
        "last_replay_id": last,
        "runs": runs,
        "summary": summary,
        "profile": profiles,
        "machine": finish_machine(started_machine),
        "command": (
            f"bench/sinks.py --events {args.events} --rounds {args.rounds} "
            f"--fixed-rounds {args.fixed_rounds} --sinks {','.join(sinks)}"
            + (" --profile" if args.profile else "")
        ),
    }
    result["docs_section"] = docs_section(result)
    out = write_result("sinks", result)
    if args.docs and not args.quick:
        refresh_docs("sinks", result["docs_section"])
    print()
    print(result["docs_section"])
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
