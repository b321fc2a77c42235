"""Footprint of `sfstream run`: resident memory with 100 channels, and import time.

Memory: the emulator (own process) serves an org generated from the bundled one plus 100
platform events (`Bench_Event_000__e` ...); `sfstream run` (file sink, SQLite state) is
configured with one stream per event, and once every stream has logged `stream_started` it
idles for `--idle` seconds with no event, after which its RSS is read from
/proc/PID/status (`VmRSS`, and the peak `VmHWM`). The same is measured with 1 channel, for
comparison. Runs alternate; medians over `--rounds`.

Import time: the median wall time of fresh interpreters (`--imports` times each) that
import (0) `aiohttp` and `orjson` only (the raw floor's imports, for reference), (a)
`sfstream.cli` and `sfstream.runners.service` (what `sfstream run` loads before it reads its
configuration) and (b) every `sfstream` module a real `sfstream run` had loaded once its
streams started (state store, sink, client, schema tracking...), minus the median time of an
interpreter that imports nothing (`python -c pass`). `python -X importtime` of (b) names
the heaviest imports.

    .venv/bin/python bench/footprint.py [--channels 100] [--idle 10] [--rounds 3]
    .venv/bin/python bench/footprint.py --quick

Results go to bench/results/footprint.json and the table in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
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
DEFAULT_ORG = ROOT / "src" / "sfstream" / "emulator" / "default_org.yaml"
PROBE_MODULES = (
    "import sys, runpy\n"
    "sys.argv = ['sfstream', *sys.argv[1:]]\n"
    "import atexit\n"
    "atexit.register(lambda: open(OUT, 'w').write("
    "'\\n'.join(sorted(m for m in sys.modules if m.startswith('sfstream')))))\n"
    "runpy.run_module('sfstream.cli', run_name='__main__')\n"
)


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


def measure_rss(url: str, channels: int, idle_s: float, probe: bool = False) -> dict[str, Any]:
    """`sfstream run` with `channels` streams: RSS after every stream started and `idle_s`."""
    directory = WORK / f"run-{channels}"
    clean_run_dir(directory)
    streams = [
        {"channel": f"/event/{bench_event(i)}", "initial_replay": "latest"} for i in range(channels)
    ]
    config = write_sfstream_config(directory, url, streams)
    stderr_path = directory / "stderr.log"
    modules_file = directory / "modules.txt"
    if probe:
        source = PROBE_MODULES.replace("OUT", repr(str(modules_file)))
        argv = [PYTHON, "-c", source, "run", "--config", str(config)]
    else:
        argv = [*SFSTREAM, "run", "--config", str(config)]
    started = time.perf_counter()
    process = spawn(argv, cwd=directory, stderr=stderr_path)
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
    result = {
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
    if probe:
        result["modules"] = modules_file.read_text().split()
    return result


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


def docs_section(result: dict[str, Any]) -> str:
    rss = result["rss"]
    imports = result["imports"]
    lines = [
        "## Footprint: memory with 100 channels, import time",
        "",
        f"`make bench` or `.venv/bin/python {result['command']}`",
        "",
        machine_line(result["machine"]),
        "",
        f"`sfstream run` (file sink, SQLite state) subscribed to {result['channels']} platform "
        "event channels of an emulator org generated for the purpose, then idle for "
        f"{result['idle_s']:.0f} s; RSS from /proc/PID/status, median of "
        f"{result['rounds']} alternated runs. Import time: median wall time (and CPU time, "
        "which other work on the machine disturbs less) of "
        f"{result['import_runs']} fresh interpreters importing the modules, minus that of "
        "`python -c pass`; the target is judged on wall time.",
        "",
        "| measure | value |",
        "|---|---|",
        f"| RSS, {result['channels']} channels subscribed, idle | "
        f"**{rss['many']['rss_mb']:.1f} MB** (peak {rss['many']['peak_rss_mb']:.1f} MB) |",
        f"| RSS, 1 channel subscribed, idle | {rss['one']['rss_mb']:.1f} MB "
        f"(peak {rss['one']['peak_rss_mb']:.1f} MB) |",
        f"| start to {result['channels']} streams started | {rss['many']['ready_s']:.2f} s, "
        f"{rss['many']['startup_cpu_s']:.2f} s CPU |",
        f"| CPU while idle with {result['channels']} channels | "
        f"{rss['many']['idle_cpu_s'] / result['idle_s'] * 1000:.1f} ms/s |",
        "",
        "| import time (median, interpreter start subtracted) | wall | CPU (user + sys) |",
        "|---|---|---|",
        f"| interpreter alone (`python -c pass`), not subtracted | "
        f"{imports['baseline_ms']:.0f} ms | {imports['baseline_cpu_ms']:.0f} ms |",
        f"| `aiohttp` + `orjson` (what the raw floor imports) | {imports['floor_ms']:.0f} ms | "
        f"{imports['floor_cpu_ms']:.0f} ms |",
        f"| `sfstream.cli` + `sfstream.runners.service` | "
        f"**{imports['cli_service_ms']:.0f} ms** | {imports['cli_service_cpu_ms']:.0f} ms |",
        f"| everything `sfstream run` loads ({len(result['run_modules'])} sfstream modules) | "
        f"**{imports['run_path_ms']:.0f} ms** | {imports['run_path_cpu_ms']:.0f} ms |",
        "",
    ]
    for name, target in result["targets"].items():
        verdict = "met" if target["met"] else "**not met**"
        lines.append(f"- target {name}: {verdict} ({target['value']:.1f})")
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
    parser.add_argument("--quick", action="store_true", help="2 s idle, 1 round, 3 imports")
    parser.add_argument("--no-docs", action="store_true", help="leave docs/benchmarks.md alone")
    args = parser.parse_args()
    if args.quick:
        args.idle, args.rounds, args.imports = 2.0, 1, 3

    started_machine = machine()
    org = write_org(args.channels)
    emulator, url = start_emulator(poll_timeout_s=110, org=org)
    runs: list[dict[str, Any]] = []
    try:
        probe = measure_rss(url, args.channels, 0.5, probe=True)
        run_modules = probe.pop("modules")
        for index in range(args.rounds):
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

    cli_service = "import sfstream.cli; import sfstream.runners.service"
    run_path = "; ".join(f"import {m}" for m in run_modules)
    floor = "import aiohttp; import orjson"
    codes = {"baseline": "pass", "floor": floor, "cli": cli_service, "run": run_path}
    samples: dict[str, list[float]] = {name: [] for name in codes}
    cpu: dict[str, list[float]] = {name: [] for name in codes}
    for _ in range(args.imports):  # alternated, one interpreter of each at a time
        for name, code in codes.items():
            wall_s, cpu_s = time_python(code)
            samples[name].append(wall_s)
            cpu[name].append(cpu_s)

    def cost_ms(name: str, of: dict[str, list[float]]) -> float:
        return (median(of[name]) - median(of["baseline"])) * 1000

    imports = {
        "baseline_ms": median(samples["baseline"]) * 1000,
        "floor_ms": cost_ms("floor", samples),
        "cli_service_ms": cost_ms("cli", samples),
        "cli_service_total_ms": median(samples["cli"]) * 1000,
        "run_path_ms": cost_ms("run", samples),
        "run_path_total_ms": median(samples["run"]) * 1000,
        "baseline_cpu_ms": median(cpu["baseline"]) * 1000,
        "floor_cpu_ms": cost_ms("floor", cpu),
        "cli_service_cpu_ms": cost_ms("cli", cpu),
        "run_path_cpu_ms": cost_ms("run", cpu),
        "samples_s": samples,
        "cpu_samples_s": cpu,
        "importtime": importtime(run_path),
    }
    rss = {"one": summary(1), "many": summary(args.channels)}
    targets = {
        f"RSS with {args.channels} channels <= 80 MB": {
            "value": rss["many"]["rss_mb"],
            "met": rss["many"]["rss_mb"] <= 80,
        },
        "import of the run path <= 300 ms": {
            "value": imports["run_path_ms"],
            "met": imports["run_path_ms"] <= 300,
        },
    }
    result = {
        "benchmark": "footprint",
        "channels": args.channels,
        "idle_s": args.idle,
        "rounds": args.rounds,
        "import_runs": args.imports,
        "runs": runs,
        "rss": rss,
        "run_modules": run_modules,
        "imports": imports,
        "targets": targets,
        "machine": finish_machine(started_machine),
        "command": (
            f"bench/footprint.py --channels {args.channels} --idle {args.idle:.0f} "
            f"--rounds {args.rounds} --imports {args.imports}"
        ),
    }
    out = write_result("footprint", result)
    if not args.no_docs and not args.quick:
        refresh_docs("footprint", docs_section(result))
    print(
        f"RSS {rss['many']['rss_mb']:.1f} MB with {args.channels} channels "
        f"({rss['one']['rss_mb']:.1f} MB with 1); import cli+service "
        f"{imports['cli_service_ms']:.0f} ms, run path {imports['run_path_ms']:.0f} ms "
        f"(+{imports['baseline_ms']:.0f} ms interpreter)"
    )
    for name, target in targets.items():
        print(f"target {name}: {'met' if target['met'] else 'NOT met'} ({target['value']:.1f})")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
