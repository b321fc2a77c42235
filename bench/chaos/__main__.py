"""The chaos run: 100,000 events, seeded faults, 20 SIGKILLs, then a full audit of the sink.

The emulator runs in this process with seeded chaos (dropped and cut responses, 503s,
stalls, unknown clients, token revocations, expired clients) while a publisher adds events
at a steady rate across four channels and `sfstream run` (SQLite state) is SIGKILLed and
restarted at random moments. The last run catches up and is stopped with SIGTERM. Then
every published event must be in the sink exactly once, in replayId order per stream (per
partition for Kafka), with the checkpoints at the last replayIds and no secret in any output
file. The work is done by the rest of this package (`bench.chaos`), which the CI test
(`tests/bench/test_chaos.py`) uses too. Run it from the repository root:

    make chaos
    make chaos CHAOS_ARGS="--sink kafka --events 20000 --duration 60 --kills 8"
    .venv/bin/python -m bench.chaos [--events 100000] [--duration 180] [--kills 20] [--seed 1]
        [--sink file|kafka|postgres|s3]

`--sink` picks the sink: `file` (the default: a JSON lines file, audited as it grows),
`kafka` (a Tansu broker started for the run, topics of the run's own prefix), `postgres`
(a table of the run's own in the PostgreSQL at `--postgres-dsn`, dropped at the end unless
`--workdir` is given) or `s3` (a bucket of the run's own on a moto server started for the
run). A destination other than the file is read back from the start at the end, and asked
what it holds after every kill (bench/servers.py starts the servers).

Prints a summary, writes bench/results/chaos.json (chaos-<sink>.json for the other sinks),
and exits 1 on any loss, duplicate, ordering violation, checkpoint violation, crash or
leaked secret.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.chaos import DEFAULT_CHANNELS, ChaosPlan, default_faults, run_chaos
from bench.chaos.destinations import (
    Destination,
    KafkaDestination,
    PostgresDestination,
    S3Destination,
)
from bench.servers import POSTGRES_DSN, ServerError, Servers
from sfstream_emulator import ChaosSettings

ROOT = Path(__file__).resolve().parents[2]
PROG = "python -m bench.chaos"
RESULTS = ROOT / "bench" / "results"


def arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=100_000, help="events to publish")
    parser.add_argument("--duration", type=float, default=180.0, help="publishing seconds")
    parser.add_argument("--kills", type=int, default=20, help="SIGKILLs of the connector")
    parser.add_argument("--seed", type=int, default=1, help="seeds events, kills and faults")
    parser.add_argument(
        "--channels",
        default=",".join(DEFAULT_CHANNELS),
        help="comma-separated channels (/data/<Entity>ChangeEvent, /event/<Name>__e)",
    )
    parser.add_argument(
        "--poll-timeout", type=float, default=2.0, help="the emulator's long poll (s)"
    )
    parser.add_argument("--stall", type=float, default=3.0, help="length of a stall fault (s)")
    parser.add_argument(
        "--no-faults", action="store_true", help="kills only, no emulator chaos (a baseline)"
    )
    parser.add_argument(
        "--sink",
        choices=("file", "kafka", "postgres", "s3"),
        default="file",
        help="where the connector writes (default: file)",
    )
    parser.add_argument(
        "--postgres-dsn", default=POSTGRES_DSN, help="the database of --sink postgres"
    )
    parser.add_argument(
        "--workdir", type=Path, help="keep the run's files here (default: a temporary dir)"
    )
    parser.add_argument(
        "--output",
        type=Path,
        help="where the JSON goes (default: bench/results/chaos.json, chaos-<sink>.json)",
    )
    return parser.parse_args()


def say(line: str) -> None:
    print(line, flush=True)


def faults(args: argparse.Namespace) -> ChaosSettings:
    settings = default_faults(args.seed).model_copy(update={"stall_s": args.stall})
    if args.no_faults:
        zero = dict.fromkeys(
            (
                "drop",
                "cut",
                "http_503",
                "stall",
                "unknown_client",
                "revoke_tokens",
                "expire_clients",
            ),
            0.0,
        )
        settings = settings.model_copy(update=zero)
    return settings


def destination(args: argparse.Namespace, servers: Servers) -> Destination | None:
    """The destination of `--sink` on the servers started for it (None: the file sink)."""
    if args.sink == "kafka":
        assert servers.kafka is not None
        return KafkaDestination(servers.kafka)
    if args.sink == "postgres":
        assert servers.postgres is not None
        return PostgresDestination(servers.postgres, keep=args.workdir is not None)
    if args.sink == "s3":
        assert servers.s3 is not None
        return S3Destination(servers.s3)
    return None


async def main() -> int:
    args = arguments()
    if args.output is None:
        name = "chaos.json" if args.sink == "file" else f"chaos-{args.sink}.json"
        args.output = RESULTS / name
    logs = Path(tempfile.mkdtemp(prefix="sfstream-chaos-servers-"))
    kinds = [] if args.sink == "file" else [args.sink]
    with contextlib.ExitStack() as stack:
        try:
            servers = stack.enter_context(Servers(kinds, logs, postgres_dsn=args.postgres_dsn))
        except ServerError as exc:
            print(f"{PROG}: {exc}", file=sys.stderr)
            return 2
        code = await chaos(args, destination(args, servers))
    if code == 0 or not kinds:
        shutil.rmtree(logs, ignore_errors=True)
    else:
        print(f"the servers' logs: {logs}")
    return code


async def chaos(args: argparse.Namespace, target: Destination | None) -> int:
    scratch = None
    workdir = args.workdir
    if workdir is None:
        scratch = tempfile.mkdtemp(prefix="sfstream-chaos-")
        workdir = Path(scratch)
    try:
        plan = ChaosPlan(
            workdir=workdir.resolve(),
            events=args.events,
            duration_s=args.duration,
            kills=args.kills,
            seed=args.seed,
            channels=tuple(c.strip() for c in args.channels.split(",") if c.strip()),
            faults=faults(args),
            poll_timeout_s=args.poll_timeout,
            destination=target,
        )
    except ValueError as exc:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    try:
        report = await run_chaos(plan, say)
    finally:
        if scratch is not None:  # the files stay only in a --workdir
            shutil.rmtree(scratch, ignore_errors=True)
    result = report.as_json()
    result["command"] = " ".join([PROG, *sys.argv[1:]])
    result["finished_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print()
    print(report.summary())
    print(f"results: {args.output}")
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
