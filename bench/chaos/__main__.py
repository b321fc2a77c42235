"""The chaos run: 100,000 events, seeded faults, 20 SIGKILLs, then a full audit of the sink.

The emulator runs in this process with seeded chaos (dropped and cut responses, 503s,
stalls, unknown clients, token revocations, expired clients) while a publisher adds events
at a steady rate across four channels and `sfstream run` (file sink, SQLite state) is
SIGKILLed and restarted at random moments. The last run catches up and is stopped with
SIGTERM. Then every published event must be in the sink exactly once, in replayId order
per stream, with the checkpoints at the last replayIds and no secret in any output file.
The work is done by the rest of this package (`bench.chaos`), which the CI test
(`tests/bench/test_chaos.py`) uses too. Run it from the repository root:

    make chaos
    .venv/bin/python -m bench.chaos [--events 100000] [--duration 180] [--kills 20] [--seed 1]

Prints a summary, writes bench/results/chaos.json, and exits 1 on any loss, duplicate,
ordering violation, checkpoint violation, crash or leaked secret.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench.chaos import DEFAULT_CHANNELS, ChaosPlan, default_faults, run_chaos
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
        "--workdir", type=Path, help="keep the run's files here (default: a temporary dir)"
    )
    parser.add_argument(
        "--output", type=Path, default=RESULTS / "chaos.json", help="where the JSON goes"
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


async def main() -> int:
    args = arguments()
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
