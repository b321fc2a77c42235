"""CPU per event of sfstream against a raw floor and a peer, draining a pre-filled channel.

The emulator runs in its own process with N change events of about 1 KB in
`/data/AccountChangeEvent` (control API `events/generate`, chunks of 100,000). Then each
consumer, in its own process, reads from replay -2 to the last event:

- `raw`: bench/consumers/raw_floor.py, a minimal aiohttp long-poll loop that decodes each
  response with orjson and writes each event's bytes to a file, nothing else;
- `peer`: bench/consumers/peer_aiosfstream.py, aiosfstream-ng with `ReplayOption.ALL_EVENTS`
  writing each event as a JSON line (`peer_orjson`: the same, decoding with orjson);
- `sfstream`: `sfstream run --config <generated>` into the file sink with SQLite
  checkpoints after every batch (`initial_replay: earliest`, default batching), stopped with
  SIGTERM as soon as its file holds the last replayId.

The harness polls the output file's tail (one stat per 10 ms) to see the last replayId;
that polling runs in the harness, not in the consumer. Per run: the consumer's CPU seconds
(user + sys from `os.wait4`, threads included), wall seconds from spawn to the last event in
the file, peak RSS, and the emulator's CPU. Runs alternate between the consumers, in a
rotating order, for `--rounds` rounds; medians and ratios are reported.

A fixed-cost run per consumer (start, log in, subscribe to new events only, stop: no event)
gives the start-up and shutdown cost, so that the marginal CPU per event is reported too:
(CPU of a run - median fixed cost) / events.

`--profile` adds one sfstream run (and one raw run, for reference) under py-spy, not counted
in the medians, and summarises the hottest functions.

    .venv/bin/python bench/throughput.py [--events 200000] [--rounds 5] [--profile]
    .venv/bin/python bench/throughput.py --quick      # 20,000 events, 1 round: a smoke run

Results go to bench/results/throughput.json and the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import (
    PYTHON,
    ROOT,
    SFSTREAM,
    TailWatcher,
    clean_run_dir,
    finish_machine,
    machine,
    machine_line,
    median,
    proc_cpu_s,
    profile_table,
    reap,
    refresh_docs,
    sfstream_env,
    start_emulator,
    start_py_spy,
    stop,
    summarize_profile,
    write_result,
    write_sfstream_config,
)
from benchlib import prefill as generate

CHANNEL = "/data/AccountChangeEvent"
# Each run writes about 260 MB; it goes to a scratch directory that is removed at the end.
WORK = Path(tempfile.gettempdir()) / f"sfstream-bench-throughput-{os.getpid()}"
CONSUMERS = ("raw", "peer", "peer_orjson", "sfstream", "sfstream_metrics")
METRICS_SCRAPE_S = 1.0
"""How often the harness scrapes `sfstream_metrics` (Prometheus scrapes every 15 to 60 s:
this overstates the cost of serving the page)."""
# Experiments, not sfstream as shipped: `sfstream run` through bench/consumers/sfstream_probe.py
# with a change applied at start-up, to estimate what a proposed fix would save.
EXPERIMENTS = {
    "exp_probe": "",  # the probe alone: its own cost
    "exp_gc_freeze": "gc-freeze",
    "exp_gc_threshold": "gc-threshold",
    "exp_gc_both": "gc-freeze,gc-threshold",
    "exp_time_steps": "time-steps",
}
POLL_S = 0.01
RUN_TIMEOUT_S = 600.0


def command(consumer: str, url: str, out: Path, last: int, config: Path | None) -> list[str]:
    if consumer == "raw":
        script = ROOT / "bench" / "consumers" / "raw_floor.py"
        return [PYTHON, str(script), "--url", url, "--out", str(out), "--last", str(last)]
    if consumer in ("peer", "peer_orjson"):
        script = ROOT / "bench" / "consumers" / "peer_aiosfstream.py"
        decoder = "orjson" if consumer == "peer_orjson" else "json"
        return [
            *(PYTHON, str(script), "--url", url, "--out", str(out), "--last", str(last)),
            *("--json", decoder),
        ]
    assert config is not None
    if consumer in EXPERIMENTS:
        probe = ROOT / "bench" / "consumers" / "sfstream_probe.py"
        return [
            PYTHON,
            str(probe),
            str(out.with_name("probe.jsonl")),
            "run",
            "--config",
            str(config),
        ]
    return [*SFSTREAM, "run", "--config", str(config)]


def run_once(
    consumer: str,
    url: str,
    last: int,
    emulator_pid: int,
    *,
    fixed: bool = False,
    profile_to: Path | None = None,
) -> dict[str, Any]:
    """One consumer process from spawn to exit; `fixed`: subscribe to new events, then stop."""
    directory = WORK / consumer
    clean_run_dir(directory)
    out = directory / "records.jsonl"
    config = None
    metered = consumer == "sfstream_metrics"
    if consumer == "sfstream" or metered or consumer in EXPERIMENTS:
        config = write_sfstream_config(
            directory,
            url,
            [{"channel": CHANNEL, "initial_replay": "latest" if fixed else "earliest"}],
            # Metrics on (scraped, see below); tracing stays off: no OTEL_* variable is set.
            observability={"metrics_port": 0, "metrics_host": "127.0.0.1"} if metered else None,
        )
    stderr_path = directory / "stderr.log"
    argv = command(consumer, url, out, 0 if fixed else last, config)
    emulator_cpu = proc_cpu_s(emulator_pid)
    with stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            argv,
            cwd=directory,
            env=sfstream_env() | {"SFSTREAM_PROBE_EXPERIMENT": EXPERIMENTS.get(consumer, "")},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    spy: subprocess.Popen[bytes] | None = None
    sfstream_like = consumer == "sfstream" or metered or consumer in EXPERIMENTS
    scraper = MetricsScraper(stderr_path) if metered else None
    if sfstream_like:
        watcher = TailWatcher(out, b'"replay_id":%d,' % last)
    else:
        watcher = TailWatcher(out, b'"replayId":%d}' % last)
    seen_last: float | None = None
    deadline = started + RUN_TIMEOUT_S
    exited = None
    try:
        while exited is None:
            if profile_to is not None and spy is None and out.exists():
                # Attached once events flow: the profile is the steady state, not the imports
                # (bench/footprint.py measures those).
                spy = start_py_spy(process.pid, profile_to)
            if time.perf_counter() > deadline:
                raise SystemExit(f"{consumer} did not finish within {RUN_TIMEOUT_S:.0f} s")
            if scraper is not None:
                scraper.poll()
            if sfstream_like and seen_last is None:
                done = (
                    b'"event":"stream_started"' in stderr_path.read_bytes()
                    if fixed
                    else watcher.found()
                )
                if done:
                    seen_last = time.perf_counter()
                    process.send_signal(signal.SIGTERM)
            elif not fixed and seen_last is None and watcher.found():
                seen_last = time.perf_counter()
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
    if exited.status != 0:
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise SystemExit(f"{consumer} exited with {exited.status}:\n{tail}")
    events = 0
    if not fixed:
        marker = b'"type":"RECORD"' if sfstream_like else b""
        with out.open("rb") as handle:
            events = sum(1 for line in handle if marker in line)
        if seen_last is None:  # exited before a poll saw the file complete
            seen_last = exited.ended
    wall = (seen_last or exited.ended) - started
    steps = [
        json.loads(line)["probe_steps"]
        for line in stderr_path.read_text(errors="replace").splitlines()
        if line.startswith('{"probe_steps"')
    ]
    return {
        **({"probe_steps": steps[-1]} if steps else {}),
        **({"scrapes": scraper.scrapes} if scraper is not None else {}),
        "consumer": consumer,
        "kind": "fixed" if fixed else "drain",
        "events": events,
        "cpu_s": exited.cpu_s,
        "user_s": exited.user_s,
        "sys_s": exited.sys_s,
        "wall_s": wall,
        "wall_to_exit_s": exited.ended - started,
        "events_per_s": events / wall if events else 0.0,
        "cpu_us_per_event": exited.cpu_s / events * 1e6 if events else None,
        "max_rss_mb": exited.max_rss_mb,
        "emulator_cpu_s": proc_cpu_s(emulator_pid) - emulator_cpu,
        "output_bytes": out.stat().st_size if out.exists() else 0,
    }


class MetricsScraper:
    """Scrapes a run's `/metrics` every `METRICS_SCRAPE_S`, once its port is logged."""

    def __init__(self, stderr_path: Path) -> None:
        self.stderr_path = stderr_path
        self.port: int | None = None
        self.next_at = 0.0
        self.scrapes = 0

    def poll(self) -> None:
        now = time.perf_counter()
        if now < self.next_at:
            return
        self.next_at = now + METRICS_SCRAPE_S
        if self.port is None:
            for line in self.stderr_path.read_bytes().splitlines():
                if b'"metrics_endpoint"' in line:
                    self.port = int(json.loads(line)["port"])
            if self.port is None:
                return
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{self.port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                self.scrapes += 1


def summarize(consumers: list[str], runs: list[dict[str, Any]], events: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for consumer in consumers:
        drains = [r for r in runs if r["consumer"] == consumer and r["kind"] == "drain"]
        fixed = [r for r in runs if r["consumer"] == consumer and r["kind"] == "fixed"]
        fixed_cpu = median(r["cpu_s"] for r in fixed) if fixed else 0.0
        summary[consumer] = {
            "runs": len(drains),
            "events": median(r["events"] for r in drains),
            "cpu_s": median(r["cpu_s"] for r in drains),
            "user_s": median(r["user_s"] for r in drains),
            "sys_s": median(r["sys_s"] for r in drains),
            "cpu_us_per_event": median(r["cpu_s"] for r in drains) / events * 1e6,
            "fixed_cpu_s": fixed_cpu,
            "marginal_cpu_us_per_event": median(r["cpu_s"] - fixed_cpu for r in drains)
            / events
            * 1e6,
            "wall_s": median(r["wall_s"] for r in drains),
            "events_per_s": median(r["events_per_s"] for r in drains),
            "max_rss_mb": median(r["max_rss_mb"] for r in drains),
            "emulator_cpu_s": median(r["emulator_cpu_s"] for r in drains),
            "bytes_per_line": median(r["output_bytes"] / max(r["events"], 1) for r in drains),
        }
    ratios: dict[str, float] = {}
    if "sfstream" in summary:
        sf = summary["sfstream"]
        for other in ("raw", "peer", "peer_orjson"):
            if other in summary:
                ratios[f"sfstream/{other}"] = sf["cpu_s"] / summary[other]["cpu_s"]
                ratios[f"sfstream/{other} (marginal)"] = (
                    sf["marginal_cpu_us_per_event"] / summary[other]["marginal_cpu_us_per_event"]
                )
        if "sfstream_metrics" in summary:
            ratios["sfstream_metrics/sfstream"] = summary["sfstream_metrics"]["cpu_s"] / sf["cpu_s"]
            ratios["sfstream_metrics/sfstream (marginal)"] = (
                summary["sfstream_metrics"]["marginal_cpu_us_per_event"]
                / sf["marginal_cpu_us_per_event"]
            )
        for experiment in EXPERIMENTS:
            if experiment in summary:
                ratios[f"{experiment}/sfstream"] = summary[experiment]["cpu_s"] / sf["cpu_s"]
    return {"consumers": summary, "ratios": ratios}


def docs_section(result: dict[str, Any]) -> str:
    s = result["summary"]["consumers"]
    ratios = result["summary"]["ratios"]
    rows = [
        "| consumer | CPU s (user+sys) | CPU µs/event | fixed cost s | marginal µs/event "
        "| wall s | events/s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|",
    ]
    names = {
        "raw": "raw floor (aiohttp + orjson, no fsync)",
        "peer": "aiosfstream-ng 0.7.5 (defaults)",
        "peer_orjson": "aiosfstream-ng (orjson decoder)",
        "sfstream": "**sfstream run** (file sink, SQLite)",
        "sfstream_metrics": "sfstream run, metrics endpoint on (scraped every second)",
    }
    for consumer, row in s.items():
        rows.append(
            f"| {names.get(consumer, consumer)} | {row['cpu_s']:.2f} | "
            f"{row['cpu_us_per_event']:.1f} | {row['fixed_cpu_s']:.2f} | "
            f"{row['marginal_cpu_us_per_event']:.1f} | {row['wall_s']:.2f} | "
            f"{row['events_per_s']:,.0f} | {row['max_rss_mb']:.0f} |"
        )
    lines = [
        "## Throughput: sfstream against a raw floor and a peer",
        "",
        f"`make bench` or `.venv/bin/python {result['command']}`",
        "",
        machine_line(result["machine"]),
        "",
        f"The emulator (own process) holds {result['events']:,} change events of about 1 KB in "
        f"`{CHANNEL}`; each consumer, in its own process, reads from replay -2 to the last "
        "event and writes every event as a line to a file. CPU is the consumer process's "
        "user + sys (`os.wait4`, threads included), the median of "
        f"{result['rounds']} alternated runs; the fixed cost is the median of runs that "
        "start, log in, subscribe and stop without an event, and the marginal figure "
        "subtracts it. sfstream runs with its defaults (a batch of up to 2,000 records is "
        "written as soon as nothing more is waiting; the file sink fsynced and the SQLite "
        "checkpoint committed after every batch).",
        "",
        *rows,
        "",
    ]
    for name, value in ratios.items():
        lines.append(f"- {name}: **{value:.2f}**")
    targets = result.get("targets", {})
    if targets:
        lines.append("")
        for name, target in targets.items():
            verdict = "met" if target["met"] else "**not met**"
            lines.append(f"- target {name}: {verdict} ({target['value']:.2f})")
    profile = result.get("profile", {}).get("sfstream")
    if profile:
        lines += [
            "",
            f"Where sfstream's CPU goes: py-spy, {profile['samples']:,} samples of one extra "
            "run (not in the medians), attached once the first batch was written (steady "
            "state, not the imports) and sampling only while the process holds the GIL (its "
            "Python and C-extension work; fsync and SQLite run without it). Own time per "
            "function; a C call such as `msgspec`'s decoding counts in its caller (`decode`), "
            "and so does the garbage collection its allocations trigger. Raw files: "
            "`bench/results/profile_throughput_*.txt`.",
            "",
            *profile_table(profile, "self"),
            "",
            "By area (each sample goes to its innermost sfstream frame, so library calls count "
            "in the sfstream code that made them):",
            "",
            *profile_table(profile, "areas", rows=14, header="area"),
        ]
    return "\n".join(lines)


def profile_runs(url: str, last: int, emulator_pid: int) -> dict[str, Any]:
    """One sfstream run and one raw run under py-spy (not counted in the medians)."""
    profiles = {}
    for consumer in ("sfstream", "raw"):
        raw = ROOT / "bench" / "results" / f"profile_throughput_{consumer}.txt"
        run_once(consumer, url, last, emulator_pid, profile_to=raw)
        profiles[consumer] = summarize_profile(raw)
        top = profiles[consumer]["self"][:5]
        print(
            f"profile {consumer}: "
            + ", ".join(f"{t['function']} {t['share'] * 100:.0f}%" for t in top)
        )
    return profiles


def profile_only() -> None:
    """Redo the profiles of the last results (bench/results/throughput.json) only."""
    path = ROOT / "bench" / "results" / "throughput.json"
    result = json.loads(path.read_text())
    emulator, url = start_emulator(poll_timeout_s=5)
    try:
        last, _ = generate(url, "Account", result["events"], 1024)
        result["profile"] = profile_runs(url, last, emulator.pid)
    finally:
        stop(emulator)
    shutil.rmtree(WORK, ignore_errors=True)
    result["profile_machine"] = machine()
    write_result("throughput", result)
    refresh_docs("throughput", docs_section(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--fixed-rounds", type=int, default=3)
    parser.add_argument(
        "--consumers",
        default=",".join(CONSUMERS),
        help="comma-separated, from raw, peer, peer_orjson, sfstream, " + ", ".join(EXPERIMENTS),
    )
    parser.add_argument("--profile", action="store_true", help="one extra run under py-spy")
    parser.add_argument(
        "--profile-only",
        action="store_true",
        help="only redo the py-spy runs of bench/results/throughput.json",
    )
    parser.add_argument("--quick", action="store_true", help="20,000 events, 1 round")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "--result-name",
        default="throughput",
        help="bench/results/NAME.json (another name also leaves the docs alone)",
    )
    args = parser.parse_args()
    if args.profile_only:
        profile_only()
        return
    if args.quick:
        args.events, args.rounds, args.fixed_rounds = 20_000, 1, 1
    consumers = [c.strip() for c in args.consumers.split(",") if c.strip()]

    started_machine = machine()
    emulator, url = start_emulator(poll_timeout_s=5)
    runs: list[dict[str, Any]] = []
    profiles: dict[str, Any] = {}
    try:
        last, fill_s = generate(url, "Account", args.events, 1024)
        print(f"pre-filled {args.events:,} events in {fill_s:.1f} s; last replayId {last}")
        for index in range(max(args.rounds, args.fixed_rounds)):
            shift = index % len(consumers)
            order = consumers[shift:] + consumers[:shift]
            for consumer in order:
                if index < args.fixed_rounds:
                    run = run_once(consumer, url, last, emulator.pid, fixed=True)
                    runs.append(run)
                    print(
                        f"round {index + 1} {consumer:>11} fixed: CPU {run['cpu_s']:.2f} s, "
                        f"wall {run['wall_to_exit_s']:.2f} s"
                    )
                if index < args.rounds:
                    run = run_once(consumer, url, last, emulator.pid)
                    runs.append(run)
                    print(
                        f"round {index + 1} {consumer:>11}: {run['events']:,} events, "
                        f"CPU {run['cpu_s']:.2f} s ({run['cpu_us_per_event']:.1f} µs/event), "
                        f"wall {run['wall_s']:.2f} s ({run['events_per_s']:,.0f}/s), "
                        f"RSS {run['max_rss_mb']:.0f} MB"
                    )
                    if run["events"] != args.events:
                        raise SystemExit(f"{consumer} wrote {run['events']} events")
        if args.profile:
            profiles = profile_runs(url, last, emulator.pid)
    finally:
        stop(emulator)
    shutil.rmtree(WORK, ignore_errors=True)

    summary = summarize(consumers, runs, args.events)
    targets = {}
    ratios = summary["ratios"]
    if "sfstream/raw" in ratios:
        targets["sfstream/raw CPU <= 1.25"] = {
            "value": ratios["sfstream/raw"],
            "met": ratios["sfstream/raw"] <= 1.25,
        }
    if "sfstream_metrics/sfstream" in ratios:
        targets["metrics on / off CPU <= 1.05"] = {
            "value": ratios["sfstream_metrics/sfstream"],
            "met": ratios["sfstream_metrics/sfstream"] <= 1.05,
        }
    if "sfstream/peer" in ratios:
        targets["sfstream/peer CPU <= 0.5"] = {
            "value": ratios["sfstream/peer"],
            "met": ratios["sfstream/peer"] <= 0.5,
        }
    result = {
        "benchmark": "throughput",
        "events": args.events,
        "rounds": args.rounds,
        "fixed_rounds": args.fixed_rounds,
        "prefill_s": fill_s,
        "last_replay_id": last,
        "runs": runs,
        "summary": summary,
        "targets": targets,
        "profile": profiles,
        "machine": finish_machine(started_machine),
        "command": (
            f"bench/throughput.py --events {args.events} --rounds {args.rounds} "
            f"--fixed-rounds {args.fixed_rounds} --consumers {','.join(consumers)}"
            + (" --profile" if args.profile else "")
        ),
    }
    out = write_result(args.result_name, result)
    if not args.no_docs and not args.quick and args.result_name == "throughput":
        refresh_docs("throughput", docs_section(result))
    for consumer, row in summary["consumers"].items():
        print(
            f"{consumer:>11}: CPU {row['cpu_s']:.2f} s = {row['cpu_us_per_event']:.1f} µs/event "
            f"(fixed {row['fixed_cpu_s']:.2f} s, marginal "
            f"{row['marginal_cpu_us_per_event']:.1f} µs/event), wall {row['wall_s']:.2f} s"
        )
    for name, value in ratios.items():
        print(f"{name}: {value:.2f}")
    for name, target in targets.items():
        print(f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['value']:.2f})")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
