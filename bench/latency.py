"""End-to-end latency: publish time to durably written, at a steady event rate.

The emulator runs inside this process (`Emulator(...)`) and a publisher task publishes
`Order_Placed__e` platform events at a steady rate (default 2,000 events/s for 60 s) with
`emu.publish_event(...)`, topping up every millisecond to the number due by then. Each event
carries its publish time (CLOCK_MONOTONIC ns, taken just before the publish call) in
`Notes__c`. The consumer runs as a subprocess and writes to a file:

- `sfstream`: `sfstream run` with its defaults (a batch is written as soon as nothing more
  is waiting; the file sink's write + fsync and the SQLite commit on the event loop), the
  file sink and SQLite checkpoints, through bench/consumers/sfstream_probe.py, which notes
  when each `FileSink.write` returned (the batch is appended and fsynced);
- `sfstream-thread-io`: the same with `runtime.disk_io: thread` (a worker thread per write
  and per commit);
- `sfstream-batched`: the same with `batch.max_records: 500, max_wait_ms: 200` (fewer,
  larger writes; the latency a batching window costs);
- `raw-fsync`: the floor, bench/consumers/raw_floor.py writing and fsyncing each response's
  events before the next poll and noting when that returned.

How "durably written" is measured: for each record, the CLOCK_MONOTONIC time at which the
write that contains it returned (after `os.fsync`), as noted in the consumer process by the
probe; latency = that time - the publish time read back from the record's `Notes__c`. As an
independent check, bench/consumers/tail_reader.py follows the file with inotify from another
process and notes when each line became visible (after `write`, before or while `fsync`
runs): a lower bound. Events published in the first `--warmup` seconds are left out of the
percentiles (connections and caches warming up); every event must be written.

    .venv/bin/python bench/latency.py [--rate 2000] [--duration 60] [--variants ...] [--profile]
    .venv/bin/python bench/latency.py --quick      # 5 s per variant: a smoke run

Results go to bench/results/latency.json and the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from benchlib import (
    PYTHON,
    ROOT,
    Exited,
    TailWatcher,
    clean_run_dir,
    file_contains,
    finish_machine,
    machine,
    machine_line,
    median,
    percentile,
    proc_cpu_s,
    proc_threads_cpu,
    profile_table,
    reap,
    refresh_docs,
    spawn,
    start_py_spy,
    summarize_profile,
    write_result,
    write_sfstream_config,
)
from sfstream_emulator import Emulator, EmulatorSettings

CHANNEL = "/event/Order_Placed__e"
EVENT = "Order_Placed__e"
WORK = Path(tempfile.gettempdir()) / f"sfstream-bench-latency-{os.getpid()}"
CONSUMERS = ROOT / "bench" / "consumers"
VARIANTS: dict[str, dict[str, Any]] = {
    "sfstream": {"kind": "sfstream", "batch": None},
    "sfstream-thread-io": {"kind": "sfstream", "batch": None, "runtime": {"disk_io": "thread"}},
    "sfstream-batched": {"kind": "sfstream", "batch": {"max_records": 500, "max_wait_ms": 200}},
    "raw-fsync": {"kind": "raw", "batch": None},
}
DEFAULT_VARIANTS = ("sfstream", "sfstream-thread-io", "sfstream-batched", "raw-fsync")


def consumer_argv(variant: str, url: str, directory: Path) -> list[str]:
    spec = VARIANTS[variant]
    out = directory / "records.jsonl"
    probe = directory / "probe.jsonl"
    if spec["kind"] == "raw":
        return [
            *(PYTHON, str(CONSUMERS / "raw_floor.py"), "--url", url, "--out", str(out)),
            *("--last", "-1", "--replay", "-2", "--channel", CHANNEL, "--fsync"),
            *("--probe", str(probe)),
        ]
    stream = {"channel": CHANNEL, "key_field": "Order_Number__c", "initial_replay": "earliest"}
    config = write_sfstream_config(
        directory, url, [stream], batch=spec["batch"], runtime=spec.get("runtime")
    )
    return [
        PYTHON,
        str(CONSUMERS / "sfstream_probe.py"),
        str(probe),
        "run",
        "--config",
        str(config),
    ]


async def wait_ready(kind: str, stderr_path: Path, process: subprocess.Popen[bytes]) -> None:
    marker = b"subscribed" if kind == "raw" else b'"event":"stream_started"'
    for _ in range(600):
        if file_contains(stderr_path, marker):
            return
        if process.poll() is not None:
            break
        await asyncio.sleep(0.05)
    raise SystemExit(f"consumer not ready; see {stderr_path}")


async def publish(
    emu: Emulator, rate: float, duration: float, counter: list[int]
) -> tuple[int, float, int]:
    """Publish at `rate`/s for `duration` s; returns (events, seconds, last replayId)."""
    started = time.monotonic()
    total = int(duration * rate)
    published = 0
    last = 0
    while published < total:
        elapsed = time.monotonic() - started
        due = min(int(elapsed * rate) + 1, total)
        while published < due:
            stamp = time.monotonic_ns()
            last, _ = emu.publish_event(
                EVENT,
                {
                    "Order_Number__c": f"L{published:08d}",
                    "Notes__c": str(stamp),
                    "Amount__c": 42.5,
                    "Quantity__c": 1,
                },
            )
            published += 1
        counter[0] = published
        await asyncio.sleep(0.001)
    return published, time.monotonic() - started, last


def latencies(
    directory: Path, kind: str, warmup_ns: int, started_ns: int
) -> tuple[dict[str, Any], list[float]]:
    """Per record: durable time (probe) - publish time (the record's Notes__c), in ms."""
    durable: dict[int, int] = {}
    writes = 0
    for line in (directory / "probe.jsonl").read_bytes().splitlines():
        entry = orjson.loads(line)
        writes += 1
        for replay_id in entry["ids"]:
            durable.setdefault(replay_id, entry["t"])
    visible = {rid: ns for ns, rid in orjson.loads((directory / "visible.json").read_bytes())}
    published: dict[int, int] = {}
    duplicates = 0
    for line in (directory / "records.jsonl").read_bytes().splitlines():
        message = orjson.loads(line)
        if kind == "raw":
            replay_id = message["data"]["event"]["replayId"]
            stamp = int(message["data"]["payload"]["Notes__c"])
        elif message.get("type") == "RECORD":
            replay_id = message["replay_id"]
            stamp = int(message["data"]["Notes__c"])
        else:
            continue
        if replay_id in published:
            duplicates += 1
        published[replay_id] = stamp
    durable_ms: list[float] = []
    visible_ms: list[float] = []
    fsync_ms: list[float] = []
    for replay_id, stamp in published.items():
        if stamp - started_ns < warmup_ns:
            continue
        done = durable.get(replay_id)
        if done is None:
            continue
        durable_ms.append((done - stamp) / 1e6)
        seen = visible.get(replay_id)
        if seen is not None:
            visible_ms.append((seen - stamp) / 1e6)
            fsync_ms.append((done - seen) / 1e6)
    durable_ms.sort()
    visible_ms.sort()
    fsync_ms.sort()

    def stats(values: list[float]) -> dict[str, float]:
        return {
            "p50_ms": percentile(values, 0.50),
            "p95_ms": percentile(values, 0.95),
            "p99_ms": percentile(values, 0.99),
            "p999_ms": percentile(values, 0.999),
            "max_ms": values[-1] if values else float("nan"),
            "mean_ms": sum(values) / len(values) if values else float("nan"),
        }

    missing = [rid for rid in published if rid not in durable]
    return {
        "records": len(published),
        "duplicates": duplicates,
        "measured": len(durable_ms),
        "without_probe": len(missing),
        "writes": writes,
        "records_per_write": len(published) / max(writes, 1),
        "durable": stats(durable_ms),
        "visible": stats(visible_ms),
        "visible_to_durable": stats(fsync_ms),
    }, durable_ms


async def run_variant(
    variant: str,
    rate: float,
    duration: float,
    warmup: float,
    *,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    kind = VARIANTS[variant]["kind"]
    directory = WORK / variant
    clean_run_dir(directory)
    for name in ("probe.jsonl", "visible.json"):
        (directory / name).unlink(missing_ok=True)
    settings = EmulatorSettings(poll_timeout_s=30, seed=1)
    async with Emulator(settings) as emu:
        argv = consumer_argv(variant, emu.url, directory)
        stderr_path = directory / "stderr.log"
        out = directory / "records.jsonl"
        process = spawn(argv, cwd=directory, stderr=stderr_path, env=VARIANTS[variant].get("env"))
        reader: subprocess.Popen[bytes] | None = None
        spy: subprocess.Popen[bytes] | None = None
        exited: Exited | None = None
        try:
            await wait_ready(kind, stderr_path, process)
            out.touch()
            reader = spawn(
                [
                    PYTHON,
                    str(CONSUMERS / "tail_reader.py"),
                    str(out),
                    str(directory / "visible.json"),
                ],
                cwd=directory,
            )
            if profile_to is not None:
                spy = start_py_spy(process.pid, profile_to)
            await asyncio.sleep(0.5)
            harness_cpu = resource.getrusage(resource.RUSAGE_SELF)
            consumer_cpu = proc_cpu_s(process.pid)
            started_ns = time.monotonic_ns()
            connects = emu.cometd.stats["connects"]
            counter = [0]
            published, seconds, last = await publish(emu, rate, duration, counter)
            harness_after = resource.getrusage(resource.RUSAGE_SELF)
            # Wait for the last event to be written.
            marker = b'"replayId":%d}' % last if kind == "raw" else b'"replay_id":%d,' % last
            watcher = TailWatcher(out, marker)
            for _ in range(3000):
                if watcher.found():
                    break
                await asyncio.sleep(0.01)
            consumer_cpu = proc_cpu_s(process.pid) - consumer_cpu
            threads = proc_threads_cpu(process.pid)
            connects = emu.cometd.stats["connects"] - connects
            await asyncio.sleep(0.3)
            process.send_signal(signal.SIGTERM)
            exited = await asyncio.to_thread(reap, process)
        finally:
            if process.returncode is None:
                process.kill()
                await asyncio.to_thread(reap, process)
            if reader is not None:
                reader.send_signal(signal.SIGTERM)
                await asyncio.to_thread(reader.wait)
            if spy is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    await asyncio.to_thread(spy.wait, 30)
    if exited is None or exited.status != 0:
        raise SystemExit(f"{variant} failed:\n{stderr_path.read_text(errors='replace')[-2000:]}")
    figures, _ = latencies(directory, kind, int(warmup * 1e9), started_ns)
    harness_s = (harness_after.ru_utime + harness_after.ru_stime) - (
        harness_cpu.ru_utime + harness_cpu.ru_stime
    )
    result = {
        "variant": variant,
        "batch": VARIANTS[variant]["batch"],
        "rate": rate,
        "duration_s": duration,
        "published": published,
        "publish_seconds": seconds,
        "achieved_rate": published / seconds,
        "consumer_cpu_s": consumer_cpu,
        "consumer_cpu_us_per_event": consumer_cpu / max(published, 1) * 1e6,
        "consumer_max_rss_mb": exited.max_rss_mb,
        "consumer_user_s": exited.user_s,
        "consumer_sys_s": exited.sys_s,
        "consumer_threads_cpu_s": threads,
        "connects": connects,
        "events_per_connect": published / max(connects, 1),
        "consumer_cpu_us_per_connect": consumer_cpu / max(connects, 1) * 1e6,
        "harness_cpu_s": harness_s,
        **figures,
    }
    if figures["records"] != published:
        raise SystemExit(f"{variant}: {published} published, {figures['records']} written")
    return result


def summarize(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per variant, the median over its runs of each percentile and rate."""
    summary: dict[str, dict[str, float]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == variant]
        row: dict[str, float] = {"runs": len(mine)}
        for kind in ("durable", "visible"):
            for key in ("p50_ms", "p95_ms", "p99_ms", "p999_ms", "max_ms"):
                row[f"{kind}_{key}"] = median(r[kind][key] for r in mine)
        row["worker_threads_cpu_share"] = median(
            sum(
                v["user_s"] + v["sys_s"]
                for k, v in r["consumer_threads_cpu_s"].items()
                if k != "main"
            )
            / max(sum(v["user_s"] + v["sys_s"] for v in r["consumer_threads_cpu_s"].values()), 1e-9)
            for r in mine
        )
        for key in (
            "records_per_write",
            "events_per_connect",
            "consumer_cpu_us_per_event",
            "consumer_cpu_us_per_connect",
        ):
            row[key] = median(r[key] for r in mine)
        summary[variant] = row
    return summary


def docs_section(result: dict[str, Any]) -> str:
    rows = [
        "| consumer | durable p50 | p95 | p99 | max | visible p50 | visible p99 "
        "| records/write | events/connect | consumer CPU µs/event | in worker threads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "sfstream": "**sfstream run** (defaults)",
        "sfstream-thread-io": "sfstream run, `runtime.disk_io: thread`",
        "sfstream-batched": "sfstream run, `batch.max_records: 500, max_wait_ms: 200`",
        "raw-fsync": "raw floor: write + fsync per response",
    }
    for variant, row in result["summary"].items():
        rows.append(
            f"| {names.get(variant, variant)} | {row['durable_p50_ms']:.1f} ms | "
            f"{row['durable_p95_ms']:.1f} ms | {row['durable_p99_ms']:.1f} ms | "
            f"{row['durable_max_ms']:.1f} ms | {row['visible_p50_ms']:.1f} ms | "
            f"{row['visible_p99_ms']:.1f} ms | {row['records_per_write']:.1f} | "
            f"{row['events_per_connect']:.1f} | {row['consumer_cpu_us_per_event']:.0f} | "
            f"{row['worker_threads_cpu_share'] * 100:.0f}% |"
        )
    lines = [
        "## Latency: publish to durably written",
        "",
        f"`make bench` or `.venv/bin/python {result['command']}`",
        "",
        machine_line(result["machine"]),
        "",
        f"The emulator runs in the benchmark process and publishes `{EVENT}` at a steady "
        f"{result['rate']:,.0f} events/s for {result['duration_s']:.0f} s per consumer, each "
        "event stamped with its publish time (CLOCK_MONOTONIC) in `Notes__c`; the consumer is "
        "a subprocess writing to a file. **Durable** = when the `FileSink.write` (or the raw "
        "floor's write + fsync) that holds the record returned, noted inside the consumer by "
        "a probe that wraps the call; **visible** = when a separate inotify reader saw the "
        "line (after `write`, before `fsync` returns: a lower bound). Latency = that time - "
        f"the publish time read back from the record. The first {result['warmup_s']:.0f} s "
        "are left out; every published event was written once. Each figure is the median "
        f"over {result['rounds']} alternated run(s) of each consumer.",
        "",
        *rows,
        "",
    ]
    for name, target in result.get("targets", {}).items():
        verdict = "met" if target["met"] else "**not met**"
        lines.append(f"- target {name}: {verdict} ({target['value']:.1f} ms)")
    for variant, profile in result.get("profile", {}).items():
        lines += [
            "",
            f"Where `{variant}` spends its CPU at {result['rate']:,.0f} events/s: py-spy, "
            f"{profile['samples']:,} samples of a separate 20 s run, taken while the process "
            "holds the GIL (worker threads doing fsync and SQLite commits, and the kernel, "
            "are not in these samples; the per-thread CPU is in the JSON). Own time per "
            "function, then by area:",
            "",
            *profile_table(profile, "self", rows=10),
            "",
            *profile_table(profile, "areas", rows=10, header="area"),
        ]
    return "\n".join(lines)


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    runs = []
    for round_index in range(args.rounds):
        for variant in variants:
            run = await run_variant(variant, args.rate, args.duration, args.warmup)
            run["round"] = round_index + 1
            runs.append(run)
            d = run["durable"]
            print(
                f"{variant:>15}: {run['published']:,} events at {run['achieved_rate']:,.0f}/s; "
                f"durable p50 {d['p50_ms']:.1f} p95 {d['p95_ms']:.1f} p99 {d['p99_ms']:.1f} "
                f"max {d['max_ms']:.1f} ms; visible p50 {run['visible']['p50_ms']:.1f} ms; "
                f"{run['records_per_write']:.1f} records/write, "
                f"{run['events_per_connect']:.1f} events/connect; consumer CPU "
                f"{run['consumer_cpu_us_per_event']:.0f} µs/event, "
                f"{run['consumer_cpu_us_per_connect']:.0f} µs/connect",
                flush=True,
            )
    profiles = await profile_runs(variants, args) if args.profile else {}
    return {"runs": runs, "profile": profiles, "variants": variants}


async def profile_runs(variants: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """A shorter run (20 s at most) of each sfstream variant under py-spy, not counted."""
    profiles = {}
    for variant in [v for v in variants if v == "sfstream"]:
        raw = ROOT / "bench" / "results" / f"profile_latency_{variant}.txt"
        await run_variant(variant, args.rate, min(args.duration, 20), args.warmup, profile_to=raw)
        profiles[variant] = summarize_profile(raw)
    return profiles


def profile_only(args: argparse.Namespace) -> None:
    """Redo the profiles of the last results (bench/results/latency.json) only."""
    path = ROOT / "bench" / "results" / "latency.json"
    result = json.loads(path.read_text())
    args.rate, args.duration, args.warmup = result["rate"], result["duration_s"], result["warmup_s"]
    try:
        result["profile"] = asyncio.run(profile_runs(["sfstream"], args))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    result["profile_machine"] = machine()
    write_result("latency", result)
    refresh_docs("latency", docs_section(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--duration", type=float, default=60.0, help="publishing seconds")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds left out")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--variants",
        default=",".join(DEFAULT_VARIANTS),
        help=f"comma-separated, from {', '.join(VARIANTS)}",
    )
    parser.add_argument("--profile", action="store_true", help="extra sfstream runs under py-spy")
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="only redo the py-spy runs of bench/results/latency.json",
    )
    parser.add_argument("--quick", action="store_true", help="5 s per variant, 1 s warm-up")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "--result-name",
        default="latency",
        help="bench/results/NAME.json (another name also leaves the docs alone)",
    )
    args = parser.parse_args()
    if args.profile_only:
        profile_only(args)
        return
    if args.quick:
        args.duration, args.warmup = 5.0, 1.0
    started_machine = machine()
    try:
        outcome = asyncio.run(amain(args))
    finally:
        shutil.rmtree(WORK, ignore_errors=True)
    runs = outcome["runs"]
    summary = summarize(runs)
    targets = {}
    for variant in ("sfstream",):
        if variant in summary:
            p99, p50 = summary[variant]["durable_p99_ms"], summary[variant]["durable_p50_ms"]
            targets[f"{variant} p99 <= 25 ms"] = {"value": p99, "met": p99 <= 25}
            targets[f"{variant} p50 <= 5 ms"] = {"value": p50, "met": p50 <= 5}
    result = {
        "benchmark": "latency",
        "rate": args.rate,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "rounds": args.rounds,
        "runs": runs,
        "summary": summary,
        "targets": targets,
        "profile": outcome["profile"],
        "machine": finish_machine(started_machine),
        "command": (
            f"bench/latency.py --rate {args.rate:.0f} --duration {args.duration:.0f} "
            f"--warmup {args.warmup:.0f} --rounds {args.rounds} "
            f"--variants {','.join(outcome['variants'])}" + (" --profile" if args.profile else "")
        ),
    }
    out = write_result(args.result_name, result)
    if not args.no_docs and not args.quick and args.result_name == "latency":
        refresh_docs("latency", docs_section(result))
    for name, target in targets.items():
        print(f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['value']:.1f} ms)")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
