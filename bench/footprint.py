"""Footprint of `sfstream run`: resident memory with 100 channels, import time, cold start.

Memory: the emulator (own process) serves an org generated from the bundled one plus 100
platform events (`Bench_Event_000__e` ...); `sfstream run` (file sink, SQLite state) is
configured with one stream per event, and once every stream has logged `stream_started` it
idles for `--idle` seconds with no event, after which its RSS is read from
/proc/PID/status (`VmRSS`, and the peak `VmHWM`). The same is measured with 1 channel, for
comparison. Runs alternate; medians over `--rounds`.

Cold start (what a process pays from its start, as every AWS Lambda invocation after a
freeze-out does): `--cold-events` events are published to `Bench_Event_000__e` first; then
`sfstream run` (one stream, `initial_replay: earliest`, file sink, SQLite state, a fresh
directory each time) is started, and the time from spawning the process to the first
complete `RECORD` line in the sink file (the file is polled) is measured. The same for the
raw floor (bench/consumers/raw_floor.py with `--fsync`, so that each response's lines reach
its file at once, as sfstream's do): spawn to its first complete event line. Runs
alternate; medians over `--cold-rounds`.

Import time: the median wall time of fresh interpreters (`--imports` times each, the kinds
alternated) that import (0) `aiohttp` and `orjson` only (the raw floor's imports: the
reference), (a) `sfstream.cli.run` (what `sfstream run` has loaded when it starts reading
its configuration), also with `sfstream.runners.service` (which it imports next), and (b)
every module a real `sfstream run` had loaded once it wrote its first record (a snapshot
of `sys.modules`, taken on SIGUSR1 in a probe of the cold start run), minus the median time
of an interpreter that imports nothing (`python -c pass`). The target: (b) costs at most
1.5 times (0). `python -X importtime` of (b) names the heaviest imports.

    .venv/bin/python bench/footprint.py [--channels 100] [--idle 10] [--rounds 3]
    .venv/bin/python bench/footprint.py --quick

Results go to bench/results/footprint.json (`--out` elsewhere; a `--quick` run writes to the
temporary directory unless given `--out`) and the table in docs/benchmarks.md (not with
`--quick`, `--no-docs` or `--out`).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from benchlib import (
    PYTHON,
    ROOT,
    SFSTREAM,
    clean_run_dir,
    control,
    finish_machine,
    machine,
    machine_line,
    median,
    proc_cpu_s,
    proc_status_kb,
    reap,
    refresh_docs,
    spawn,
    start_emulator,
    stop,
    write_result,
    write_sfstream_config,
)

WORK = Path(tempfile.gettempdir()) / f"sfstream-bench-footprint-{os.getpid()}"
QUICK_OUT = Path(tempfile.gettempdir()) / "sfstream-bench-footprint-quick.json"
DEFAULT_ORG = ROOT / "src" / "sfstream_emulator" / "default_org.yaml"
RAW_FLOOR = ROOT / "bench" / "consumers" / "raw_floor.py"
RECORD_MARKER = b'"type":"RECORD"'
ENTRY_MODULES = "sfstream.cli.run, sfstream.runners.service"
"""What `sfstream run` imports itself: the command, then (with its configuration read) the
service."""
LIBRARIES = (
    "import aiohttp, orjson, pydantic, yaml, structlog, click, msgspec, sqlite3\n"
    "class Model(pydantic.BaseModel):\n"
    "    field: int = 0\n"
    "Model()\n"
)
"""(c): the libraries the run path needs before it streams (a first pydantic model built, as
the configuration's validation does, which loads pydantic's plugin machinery), without
sfstream: what sfstream's own modules are judged against."""
PROBE_MODULES = (
    "import json, os, runpy, signal, sys\n"
    "def snapshot(signum, frame):\n"
    "    names = [\n"
    "        name for name, module in list(sys.modules.items())\n"
    "        if not name.endswith('__main__') and getattr(module, '__spec__', None) is not None\n"
    "    ]\n"
    "    with open(OUT + '.part', 'w') as handle:\n"
    "        json.dump(names, handle)\n"
    "    os.replace(OUT + '.part', OUT)\n"
    "signal.signal(signal.SIGUSR1, snapshot)\n"
    "sys.argv = ['sfstream', *sys.argv[1:]]\n"
    "runpy.run_module('sfstream.cli', run_name='__main__')\n"
)
"""`python -c` source that runs `sfstream` and, on SIGUSR1, writes the names of every module
loaded so far (JSON) to the file OUT, in the order they were imported (so that importing them
in that order nests as the run did, for `python -X importtime`)."""


def bench_event(index: int) -> str:
    return f"Bench_Event_{index:03d}__e"


def write_org(channels: int) -> Path:
    """The bundled org plus `channels` platform events."""
    org = yaml.safe_load(DEFAULT_ORG.read_text())
    for index in range(channels):
        org["platform_events"].append(
            {
                "name": bench_event(index),
                "label": f"Bench Event {index}",
                "label_plural": f"Bench Events {index}",
                "key_prefix": f"f{index:02d}" if index < 100 else f"g{index - 100:02d}",
                "fields": [
                    {"name": "Code__c", "type": "string", "length": 40},
                    {"name": "Amount__c", "type": "double", "precision": 16, "scale": 2},
                ],
            }
        )
    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / f"org-{channels}.yaml"
    path.write_text(yaml.safe_dump(org, sort_keys=False))
    return path


def measure_rss(url: str, channels: int, idle_s: float) -> dict[str, Any]:
    """`sfstream run` with `channels` streams: RSS after every stream started and `idle_s`."""
    directory = WORK / f"run-{channels}"
    clean_run_dir(directory)
    streams = [
        {"channel": f"/event/{bench_event(i)}", "initial_replay": "latest"} for i in range(channels)
    ]
    config = write_sfstream_config(directory, url, streams)
    stderr_path = directory / "stderr.log"
    started = time.perf_counter()
    process = spawn([*SFSTREAM, "run", "--config", str(config)], cwd=directory, stderr=stderr_path)
    try:
        deadline = started + 120
        while stderr_path.read_bytes().count(b'"event":"stream_started"') < channels:
            if process.poll() is not None or time.perf_counter() > deadline:
                raise SystemExit(
                    f"sfstream did not start {channels} streams:\n"
                    + stderr_path.read_text(errors="replace")[-2000:]
                )
            time.sleep(0.05)
        ready_s = time.perf_counter() - started
        cpu_ready = proc_cpu_s(process.pid)
        samples = []
        end = time.perf_counter() + idle_s
        while time.perf_counter() < end:
            samples.append(proc_status_kb(process.pid, "VmRSS"))
            time.sleep(0.5)
        rss_kb = proc_status_kb(process.pid, "VmRSS")
        hwm_kb = proc_status_kb(process.pid, "VmHWM")
        idle_cpu = proc_cpu_s(process.pid) - cpu_ready
        threads = proc_status_kb(process.pid, "Threads")
        process.send_signal(signal.SIGTERM)
        exited = reap(process)
    finally:
        if process.returncode is None:
            process.kill()
            reap(process)
    assert exited is not None
    return {
        "channels": channels,
        "rss_mb": rss_kb / 1024,
        "peak_rss_mb": hwm_kb / 1024,
        "rss_max_during_idle_mb": max(samples, default=rss_kb) / 1024,
        "ready_s": ready_s,
        "startup_cpu_s": cpu_ready,
        "idle_cpu_s": idle_cpu,
        "threads": threads,
        "exit_status": exited.status,
    }


def first_line_s(
    process: subprocess.Popen[bytes],
    path: Path,
    marker: bytes,
    started: float,
    stderr_path: Path,
    timeout_s: float = 120.0,
) -> float:
    """Seconds from `started` until `path` holds a complete line (newline-terminated) that
    contains `marker` (any line with an empty marker); the file is polled every 2 ms."""
    deadline = started + timeout_s
    while True:
        now = time.perf_counter()
        try:
            with path.open("rb") as handle:
                head = handle.read(1 << 20)
        except FileNotFoundError:
            head = b""
        at = head.find(marker)
        if at >= 0 and head.find(b"\n", at) >= 0:
            return now - started
        if process.poll() is not None or now > deadline:
            raise SystemExit(
                f"no complete line with {marker!r} in {path}:\n"
                + stderr_path.read_text(errors="replace")[-2000:]
            )
        time.sleep(0.002)


def cold_start(
    kind: str, url: str, channel: str, index: int, probe: Path | None = None
) -> dict[str, Any]:
    """Spawn a consumer of `channel` (`sfstream` or `raw`) that has never run, and time its
    first durable record; `probe`: run sfstream under `PROBE_MODULES`, writing the modules
    it has loaded by then to that file."""
    directory = WORK / f"cold-{kind}-{index}"
    clean_run_dir(directory)
    stderr_path = directory / "stderr.log"
    if kind == "sfstream":
        config = write_sfstream_config(
            directory, url, [{"channel": channel, "initial_replay": "earliest"}]
        )
        out = directory / "records.jsonl"
        marker = RECORD_MARKER
        if probe is not None:
            source = PROBE_MODULES.replace("OUT", repr(str(probe)))
            argv = [PYTHON, "-c", source, "run", "--config", str(config)]
        else:
            argv = [*SFSTREAM, "run", "--config", str(config)]
    else:
        out = directory / "events.jsonl"
        out.unlink(missing_ok=True)
        marker = b""
        argv = [
            *(PYTHON, str(RAW_FLOOR), "--url", url, "--out", str(out)),
            *("--last", "-1", "--replay", "-2", "--channel", channel, "--fsync"),
        ]
    started = time.perf_counter()
    process = spawn(argv, cwd=directory, stderr=stderr_path)
    try:
        first_s = first_line_s(process, out, marker, started, stderr_path)
        cpu_s = proc_cpu_s(process.pid)
        rss_kb = proc_status_kb(process.pid, "VmHWM")
        if probe is not None:
            process.send_signal(signal.SIGUSR1)
            deadline = time.perf_counter() + 30
            while not probe.exists():
                if time.perf_counter() > deadline:
                    raise SystemExit("the probe wrote no module list")
                time.sleep(0.01)
        process.send_signal(signal.SIGTERM)
        exited = reap(process)
    finally:
        if process.returncode is None:
            process.kill()
            reap(process)
    assert exited is not None
    if exited.status != 0:
        raise SystemExit(
            f"{kind} exited {exited.status}:\n" + stderr_path.read_text(errors="replace")[-2000:]
        )
    return {"kind": kind, "first_record_s": first_s, "cpu_s": cpu_s, "peak_rss_mb": rss_kb / 1024}


def time_python(code: str) -> tuple[float, float]:
    """Wall and CPU (user + sys) seconds of `python -c code` in a fresh interpreter."""
    started = time.perf_counter()
    process = subprocess.Popen([PYTHON, "-c", code], cwd=ROOT)
    exited = reap(process)
    if exited is None or exited.status != 0:
        raise SystemExit(f"python -c {code!r} failed")
    return exited.ended - started, exited.cpu_s


def importtime(code: str, top: int = 15) -> dict[str, Any]:
    """`python -X importtime`: the total and the heaviest top-level imports (cumulative)."""
    completed = subprocess.run(
        [PYTHON, "-X", "importtime", "-c", code],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    rows = []
    total_us = 0
    for line in completed.stderr.splitlines():
        match = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if match is None:
            continue
        own, cumulative, indent, name = match.groups()
        total_us += int(own)
        rows.append((int(cumulative), int(own), len(indent) // 2, name))
    # Top-level packages wherever they are first imported, and sfstream's own modules.
    heaviest = sorted(
        (r for r in rows if "." not in r[3] or (r[3].startswith("sfstream") and r[2] <= 1)),
        reverse=True,
    )[:top]
    heaviest_own = sorted(rows, key=lambda r: r[1], reverse=True)[:top]
    return {
        "total_ms": total_us / 1000,
        "top_cumulative": [
            {"module": name, "cumulative_ms": cum / 1000, "depth": depth}
            for cum, _, depth, name in heaviest
        ],
        "top_self": [{"module": name, "self_ms": own / 1000} for _, own, _, name in heaviest_own],
    }


def import_code(modules: list[str]) -> str:
    """`python -c` source importing `modules` in their order (what (b) measures), after
    `sfstream.cli`, the module the `sfstream` script imports first (its entry point
    `sfstream.cli:main`): a run's imports happen after it has set the process up."""
    return (
        "import sfstream.cli\nimport importlib\n"
        f"for name in {tuple(modules)!r}:\n    importlib.import_module(name)\n"
    )


def measure_imports(codes: dict[str, str], runs: int) -> dict[str, Any]:
    """Wall and CPU time of `runs` fresh interpreters for each of `codes` (alternated, one
    interpreter of each at a time), the medians minus that of `codes["baseline"]`."""
    samples: dict[str, list[float]] = {name: [] for name in codes}
    cpu: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(runs):
        for name, code in codes.items():
            wall_s, cpu_s = time_python(code)
            samples[name].append(wall_s)
            cpu[name].append(cpu_s)

    def cost_ms(name: str, of: dict[str, list[float]]) -> float:
        return (median(of[name]) - median(of["baseline"])) * 1000

    imports: dict[str, Any] = {
        "baseline_ms": median(samples["baseline"]) * 1000,
        "baseline_cpu_ms": median(cpu["baseline"]) * 1000,
    }
    for name in codes:
        if name != "baseline":
            imports[f"{name}_ms"] = cost_ms(name, samples)
            imports[f"{name}_cpu_ms"] = cost_ms(name, cpu)
            imports[f"{name}_total_ms"] = median(samples[name]) * 1000
    floor = imports["floor_ms"]
    for name in codes:
        if name not in ("baseline", "floor"):
            imports[f"{name}_ratio"] = imports[f"{name}_ms"] / floor
    imports["samples_s"] = samples
    imports["cpu_samples_s"] = cpu
    return imports


def docs_section(result: dict[str, Any]) -> str:
    imports = result["imports"]
    cold = result["cold_start"]
    lines = [
        "## Footprint: memory with 100 channels, import time, cold start",
        "",
        f"`make bench` or `.venv/bin/python {result['command']}`",
        "",
        machine_line(result["machine"]),
        "",
    ]
    rss = result.get("rss")
    if rss is not None:
        lines += [
            f"`sfstream run` (file sink, SQLite state) subscribed to {result['channels']} "
            "platform event channels of an emulator org generated for the purpose, then idle "
            f"for {result['idle_s']:.0f} s; RSS from /proc/PID/status, median of "
            f"{result['rounds']} alternated runs.",
            "",
            "| measure | value |",
            "|---|---|",
            f"| RSS, {result['channels']} channels subscribed, idle | "
            f"**{rss['many']['rss_mb']:.1f} MB** (peak {rss['many']['peak_rss_mb']:.1f} MB) |",
            f"| RSS, 1 channel subscribed, idle | {rss['one']['rss_mb']:.1f} MB "
            f"(peak {rss['one']['peak_rss_mb']:.1f} MB) |",
            f"| start to {result['channels']} streams started | "
            f"{rss['many']['ready_s']:.2f} s, {rss['many']['startup_cpu_s']:.2f} s CPU |",
            f"| CPU while idle with {result['channels']} channels | "
            f"{rss['many']['idle_cpu_s'] / result['idle_s'] * 1000:.1f} ms/s |",
            "",
        ]
    lines += [
        "Cold start: from spawning the process to its first record in its output file (the "
        "file polled every 2 ms), with "
        f"{result['cold_events']} events published beforehand; `sfstream run` with one stream "
        "(`initial_replay: earliest`, file sink, SQLite state, nothing from a previous run), "
        "the raw floor with `--fsync`; median (min to max) of "
        f"{result['cold_rounds']} alternated runs.",
        "",
        "| process start to first record | wall | CPU by then |",
        "|---|---|---|",
        f"| `sfstream run`: first `RECORD` line in the sink file | "
        f"**{cold['sfstream']['first_record_s'] * 1000:.0f} ms** "
        f"({cold['sfstream']['min_s'] * 1000:.0f} to {cold['sfstream']['max_s'] * 1000:.0f}) | "
        f"{cold['sfstream']['cpu_s'] * 1000:.0f} ms |",
        f"| raw floor: first event line in its file | "
        f"{cold['raw']['first_record_s'] * 1000:.0f} ms "
        f"({cold['raw']['min_s'] * 1000:.0f} to {cold['raw']['max_s'] * 1000:.0f}) | "
        f"{cold['raw']['cpu_s'] * 1000:.0f} ms |",
        f"| ratio | {cold['ratio']:.2f} | |",
        "",
        "Import time: median wall time (and CPU time, which other work on the machine disturbs "
        f"less) of {result['import_runs']} fresh interpreters for each (alternated) importing "
        "the modules, minus that of `python -c pass`; the target is judged on wall time.",
        "",
        "| import time (median, interpreter start subtracted) | wall | CPU (user + sys) "
        "| / floor |",
        "|---|---|---|---|",
        f"| interpreter alone (`python -c pass`), not subtracted | "
        f"{imports['baseline_ms']:.0f} ms | {imports['baseline_cpu_ms']:.0f} ms | |",
        f"| (0) `aiohttp` + `orjson` (what the raw floor imports) | {imports['floor_ms']:.0f} ms "
        f"| {imports['floor_cpu_ms']:.0f} ms | 1 |",
        f"| (a) `sfstream.cli.run` (loaded when `sfstream run` reads its configuration) | "
        f"{imports['cli_ms']:.0f} ms | {imports['cli_cpu_ms']:.0f} ms | "
        f"{imports['cli_ratio']:.2f} |",
        f"| (a) + `sfstream.runners.service` | {imports['cli_service_ms']:.0f} ms | "
        f"{imports['cli_service_cpu_ms']:.0f} ms | {imports['cli_service_ratio']:.2f} |",
        f"| (b) everything `sfstream run` has loaded at its first record "
        f"({len(result['run_all_modules'])} modules, {len(result['run_modules'])} of sfstream) | "
        f"**{imports['run_ms']:.0f} ms** | {imports['run_cpu_ms']:.0f} ms | "
        f"**{imports['run_ratio']:.2f}** |",
        f"| (c) the libraries alone: aiohttp, orjson, pydantic (one model built), PyYAML, "
        "structlog, click, msgspec, sqlite3; no sfstream module | "
        f"{imports['libraries_ms']:.0f} ms | {imports['libraries_cpu_ms']:.0f} ms | "
        f"{imports['libraries_ratio']:.2f} |",
        "",
    ]
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "**not met**"
        lines.append(f"- target {name}: {verdict} ({target['value']:.2f})")
    lines += [
        "",
        "Heaviest imports of the run path (`python -X importtime`, cumulative ms at the "
        "place each is first imported; packages nest, so the rows overlap):",
        "",
        "| module | cumulative ms |",
        "|---|---|",
    ]
    lines += [
        f"| `{row['module']}` | {row['cumulative_ms']:.1f} |"
        for row in imports["importtime"]["top_cumulative"]
    ][:15]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--channels", type=int, default=100)
    parser.add_argument("--idle", type=float, default=10.0, help="idle seconds before reading")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imports", type=int, default=10, help="interpreters per import figure")
    parser.add_argument("--cold-rounds", type=int, default=10, help="cold starts of each")
    parser.add_argument("--cold-events", type=int, default=10, help="events published first")
    parser.add_argument("--no-rss", action="store_true", help="skip the memory measures")
    parser.add_argument(
        "--quick", action="store_true", help="2 s idle, 1 round, 3 imports, 3 cold starts"
    )
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    parser.add_argument(
        "--out", type=Path, help="write the result here (and leave docs/benchmarks.md alone)"
    )
    args = parser.parse_args()
    if args.quick:
        args.idle, args.rounds, args.imports, args.cold_rounds = 2.0, 1, 3, 3

    started_machine = machine()
    org = write_org(max(args.channels, 1))
    emulator, url = start_emulator(poll_timeout_s=110, org=org)
    runs: list[dict[str, Any]] = []
    colds: list[dict[str, Any]] = []
    modules_file = WORK / "modules.json"
    try:
        # As much payload as the event's text fields hold (its Code__c is 40 characters).
        control(url, "events/generate", {"target": bench_event(0), "count": args.cold_events})
        channel = f"/event/{bench_event(0)}"
        cold_start("sfstream", url, channel, 0, probe=modules_file)  # also warms the caches
        cold_start("raw", url, channel, 0)
        run_all_modules: list[str] = json.loads(modules_file.read_text())
        for index in range(args.cold_rounds):
            for kind in ("sfstream", "raw") if index % 2 == 0 else ("raw", "sfstream"):
                cold = cold_start(kind, url, channel, index)
                colds.append(cold)
                print(
                    f"cold start {index + 1}, {kind:>8}: first record after "
                    f"{cold['first_record_s'] * 1000:.0f} ms ({cold['cpu_s'] * 1000:.0f} ms CPU)",
                    flush=True,
                )
        for index in range(0 if args.no_rss else args.rounds):
            for channels in (1, args.channels) if index % 2 == 0 else (args.channels, 1):
                run = measure_rss(url, channels, args.idle)
                runs.append(run)
                print(
                    f"round {index + 1}, {channels:>3} channels: RSS {run['rss_mb']:.1f} MB "
                    f"(peak {run['peak_rss_mb']:.1f}), ready in {run['ready_s']:.2f} s, "
                    f"idle CPU {run['idle_cpu_s']:.2f} s",
                    flush=True,
                )
    finally:
        stop(emulator)
    shutil.rmtree(WORK, ignore_errors=True)

    def summary(channels: int) -> dict[str, float]:
        mine = [r for r in runs if r["channels"] == channels]
        keys = ("rss_mb", "peak_rss_mb", "ready_s", "startup_cpu_s", "idle_cpu_s", "threads")
        return {key: median(r[key] for r in mine) for key in keys}

    def cold_summary(kind: str) -> dict[str, float]:
        mine = [c for c in colds if c["kind"] == kind]
        return {
            "first_record_s": median(c["first_record_s"] for c in mine),
            "min_s": min(c["first_record_s"] for c in mine),
            "max_s": max(c["first_record_s"] for c in mine),
            "cpu_s": median(c["cpu_s"] for c in mine),
            "peak_rss_mb": median(c["peak_rss_mb"] for c in mine),
        }

    cold_start_summary: dict[str, Any] = {
        "sfstream": cold_summary("sfstream"),
        "raw": cold_summary("raw"),
    }
    cold_start_summary["ratio"] = (
        cold_start_summary["sfstream"]["first_record_s"]
        / cold_start_summary["raw"]["first_record_s"]
    )
    run_modules = sorted(m for m in run_all_modules if m == "sfstream" or m.startswith("sfstream."))
    run_path = import_code(run_all_modules)
    codes = {
        "baseline": "pass",
        "floor": "import aiohttp, orjson",
        "cli": "import sfstream.cli.run",
        "cli_service": f"import {ENTRY_MODULES}",
        "run": run_path,
        "libraries": LIBRARIES,
    }
    imports = measure_imports(codes, args.imports)
    # The command's own imports first, so that the table nests as a run does.
    imports["importtime"] = importtime(f"import {ENTRY_MODULES}\n{run_path}")
    # The names of earlier results, kept for their readers.
    imports["run_path_ms"] = imports["run_ms"]
    imports["run_path_cpu_ms"] = imports["run_cpu_ms"]
    imports["run_path_total_ms"] = imports["run_total_ms"]
    targets = {
        "import of the run path / floor imports ((b)/(0)) <= 1.5": {
            "value": imports["run_ratio"],
            "met": imports["run_ratio"] <= 1.5,
        },
    }
    rss = None
    if runs:
        rss = {"one": summary(1), "many": summary(args.channels)}
        targets[f"RSS with {args.channels} channels <= 80 MB"] = {
            "value": rss["many"]["rss_mb"],
            "met": rss["many"]["rss_mb"] <= 80,
        }
    result = {
        "benchmark": "footprint",
        "channels": args.channels,
        "idle_s": args.idle,
        "rounds": 0 if args.no_rss else args.rounds,
        "import_runs": args.imports,
        "cold_rounds": args.cold_rounds,
        "cold_events": args.cold_events,
        "runs": runs,
        "rss": rss,
        "cold_starts": colds,
        "cold_start": cold_start_summary,
        "run_modules": run_modules,
        "run_all_modules": run_all_modules,
        "imports": imports,
        "targets": targets,
        "machine": finish_machine(started_machine),
        "command": (
            f"bench/footprint.py --channels {args.channels} --idle {args.idle:.0f} "
            f"--rounds {args.rounds} --imports {args.imports} --cold-rounds {args.cold_rounds}"
            + (" --no-rss" if args.no_rss else "")
        ),
    }
    if args.out is not None or args.quick:
        out = args.out or QUICK_OUT
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    else:
        out = write_result("footprint", result)
        if not args.no_docs:
            refresh_docs("footprint", docs_section(result))
    if rss is not None:
        print(
            f"RSS {rss['many']['rss_mb']:.1f} MB with {args.channels} channels "
            f"({rss['one']['rss_mb']:.1f} MB with 1)"
        )
    sf, raw = cold_start_summary["sfstream"], cold_start_summary["raw"]
    print(
        f"cold start to first record: sfstream {sf['first_record_s'] * 1000:.0f} ms, raw floor "
        f"{raw['first_record_s'] * 1000:.0f} ms (ratio {cold_start_summary['ratio']:.2f})"
    )
    print(
        f"imports (interpreter start, {imports['baseline_ms']:.0f} ms, subtracted): "
        f"(0) floor {imports['floor_ms']:.0f} ms; (a) sfstream.cli.run {imports['cli_ms']:.0f} ms "
        f"({imports['cli_ratio']:.2f}x), with runners.service {imports['cli_service_ms']:.0f} ms "
        f"({imports['cli_service_ratio']:.2f}x); (b) run path {imports['run_ms']:.0f} ms "
        f"({imports['run_ratio']:.2f}x); (c) the libraries alone {imports['libraries_ms']:.0f} ms "
        f"({imports['libraries_ratio']:.2f}x)"
    )
    for name, target in targets.items():
        print(f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['value']:.2f})")
    print(f"written to {out if not out.is_relative_to(ROOT) else out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
