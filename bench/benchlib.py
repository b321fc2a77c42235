"""Shared helpers of the benchmarks in bench/ (not a benchmark itself).

- the emulator in its own process (`python -m sfstream.cli emulator --port 0`), its token,
  and pre-filling a channel through the control API;
- a child process's CPU seconds and peak RSS from `os.wait4` (user + sys of the child and
  its threads), or from /proc while it runs;
- the `sfstream run` configuration the benchmarks generate (file sink, SQLite state);
- py-spy's raw (collapsed) stacks summarised as the hottest functions;
- the machine and versions, and refreshing one section of docs/benchmarks.md.
"""

from __future__ import annotations

import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DOCS = ROOT / "docs" / "benchmarks.md"
PYTHON = sys.executable
SFSTREAM = [PYTHON, "-m", "sfstream.cli"]
CLIENT_ID = "sfstream-emulator-client-id"
CLIENT_SECRET = "sfstream-emulator-client-secret"  # documented emulator defaults
REFRESH_TOKEN = "sfstream-emulator-refresh-token"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- the emulator ---------------------------------------------------------------------------


def start_emulator(
    *, poll_timeout_s: float = 5.0, org: Path | None = None, seed: int = 1
) -> tuple[subprocess.Popen[str], str]:
    """`sfstream emulator` on a free port, in its own process; returns it and its URL."""
    command = [
        *SFSTREAM,
        "emulator",
        "--port",
        "0",
        "--poll-timeout",
        str(poll_timeout_s),
        "--seed",
        str(seed),
    ]
    if org is not None:
        command += ["--org", str(org)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"listening on (\S+)", line)
    if match is None:
        process.kill()
        raise SystemExit(f"emulator did not start: {line!r}")
    return process, match.group(1)


def stop(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def control(base: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """Call the emulator's control API (`/_emulator/v1/<path>`) with the standard library."""
    from urllib.request import Request, urlopen

    data = None if body is None else json.dumps(body).encode()
    request = Request(
        f"{base}/_emulator/v1/{path}",
        data=data,
        method="GET" if body is None else "POST",
        headers={"Content-Type": "application/json"},
    )
    with urlopen(request, timeout=600) as response:
        return json.loads(response.read())


def prefill(base: str, target: str, events: int, payload_bytes: int = 1024) -> tuple[int, float]:
    """Publish `events` synthetic events in chunks of 100,000; returns the last replayId."""
    started = time.perf_counter()
    remaining = events
    last = 0
    while remaining:
        count = min(remaining, 100_000)
        body = control(
            base,
            "events/generate",
            {"target": target, "count": count, "payload_bytes": payload_bytes},
        )
        last = int(body["last_replay_id"])
        remaining -= count
    return last, time.perf_counter() - started


# -- processes ------------------------------------------------------------------------------


@dataclass
class Exited:
    """A reaped child: exit status, CPU seconds, peak RSS and when it ended."""

    status: int
    user_s: float
    sys_s: float
    max_rss_mb: float
    ended: float

    @property
    def cpu_s(self) -> float:
        return self.user_s + self.sys_s


def reap(process: subprocess.Popen[Any], *, block: bool = True) -> Exited | None:
    """`os.wait4` the child: its own rusage (threads included), not ours."""
    pid, status, usage = os.wait4(process.pid, 0 if block else os.WNOHANG)
    if pid == 0:
        return None
    ended = time.perf_counter()
    process.returncode = os.waitstatus_to_exitcode(status)
    return Exited(process.returncode, usage.ru_utime, usage.ru_stime, usage.ru_maxrss / 1024, ended)


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    stderr: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start a process with the sfstream environment; its stderr goes to a file (or nowhere)."""
    environment = sfstream_env() | (env or {})
    if stderr is None:
        return subprocess.Popen(
            argv, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
    with stderr.open("wb") as handle:
        return subprocess.Popen(
            argv, cwd=cwd, env=environment, stdout=subprocess.DEVNULL, stderr=handle
        )


def file_contains(path: Path, marker: bytes) -> bool:
    try:
        return marker in path.read_bytes()
    except FileNotFoundError:
        return False


def proc_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_threads_cpu(pid: int) -> dict[str, dict[str, float]]:
    """User and system CPU seconds of a process's threads, summed by thread name.

    asyncio's default executor names its threads `asyncio_0`, `asyncio_1`...: they are summed
    as `asyncio_*`; the main thread keeps the process's name.
    """
    threads: dict[str, dict[str, float]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except FileNotFoundError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        key = "asyncio_*" if name.startswith("asyncio_") else name
        if task.name == str(pid):
            key = "main"
        entry = threads.setdefault(key, {"user_s": 0.0, "sys_s": 0.0, "threads": 0})
        entry["user_s"] += int(fields[11]) / CLK_TCK
        entry["sys_s"] += int(fields[12]) / CLK_TCK
        entry["threads"] += 1
    return threads


def proc_status_kb(pid: int, key: str) -> int:
    """A `VmRSS:`-style field of /proc/PID/status, in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


class TailWatcher:
    """Cheap polling of a growing file for a marker near its end (one stat per poll)."""

    def __init__(self, path: Path, marker: bytes, window: int = 16384) -> None:
        self.path = path
        self.marker = marker
        self.window = window
        self._size = -1

    def found(self) -> bool:
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            return False
        if size == self._size:
            return False
        self._size = size
        with self.path.open("rb") as handle:
            handle.seek(max(0, size - self.window))
            return self.marker in handle.read()


# -- sfstream configuration -----------------------------------------------------------------


def sfstream_env() -> dict[str, str]:
    """The environment of an `sfstream run`: secrets come from it, as in production."""
    env = dict(os.environ)
    env["SF_CLIENT_SECRET"] = CLIENT_SECRET
    env["SF_REFRESH_TOKEN"] = REFRESH_TOKEN
    env.pop("SFSTREAM_CONFIG", None)
    return env


def write_sfstream_config(
    directory: Path,
    url: str,
    streams: Sequence[dict[str, Any]],
    *,
    batch: dict[str, Any] | None = None,
    runtime: dict[str, Any] | None = None,
    observability: dict[str, Any] | None = None,
    level: str = "info",
) -> Path:
    """An `sfstream run` configuration: file sink and SQLite state in `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    lines = [
        "salesforce:",
        f"  login_url: {url}",
        f"  client_id: {CLIENT_ID}",
        "  client_secret: ${secret:SF_CLIENT_SECRET}",
        "  refresh_token: ${secret:SF_REFRESH_TOKEN}",
        "secrets:",
        "  backend: env",
        "streams:",
    ]
    for stream in streams:
        first = True
        for key, value in stream.items():
            lines.append(f"  {'- ' if first else '  '}{key}: {value}")
            first = False
    lines += [
        "state:",
        "  backend: sqlite",
        "  path: state.db",
        "sink:",
        "  type: file",
        "  path: records.jsonl",
    ]
    if batch:
        lines.append("batch:")
        lines += [f"  {key}: {value}" for key, value in batch.items()]
    if runtime:
        lines.append("runtime:")
        lines += [f"  {key}: {value}" for key, value in runtime.items()]
    if observability:
        lines.append("observability:")
        lines += [f"  {key}: {value}" for key, value in observability.items()]
    lines += ["logging:", f"  level: {level}", "  format: json", ""]
    path = directory / "sfstream.yaml"
    path.write_text("\n".join(lines))
    return path


def clean_run_dir(directory: Path) -> None:
    """Forget the previous run's output and checkpoints (so each run starts from scratch)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in ("records.jsonl", "state.db", "state.db-wal", "state.db-shm", "stderr.log"):
        (directory / name).unlink(missing_ok=True)


# -- profiles -------------------------------------------------------------------------------


def py_spy() -> str | None:
    """The py-spy next to this Python, if installed (`pip install py-spy`)."""
    candidate = Path(PYTHON).parent / "py-spy"
    return str(candidate) if candidate.exists() else None


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """Sample `pid` 250 times a second, only while it holds the GIL (Python CPU)."""
    tool = py_spy()
    assert tool is not None, "--profile needs py-spy: .venv/bin/pip install py-spy"
    return subprocess.Popen(
        [
            *(tool, "record", "--pid", str(pid), "--rate", "250", "--gil", "--function"),
            "--full-filenames",
            *("--format", "raw", "--output", str(output)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _frame_name(frame: str) -> str:
    """`function (path/to/file.py:12)` -> `path/to/file.py:function`, shortened to the package."""
    match = re.match(r"(.*) \((.*?)(?::\d+)?\)$", frame)
    if match is None:
        return frame
    function, filename = match.groups()
    for marker in ("site-packages/", "/src/", "/lib/python3.11/", "/bench/", "/python3.11/"):
        if marker in filename:
            filename = filename.split(marker, 1)[1]
            break
    return f"{filename}:{function}"


def summarize_profile(raw: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive shares of the hottest functions in a py-spy `--format raw` file."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [_frame_name(f) for f in stack.split(";") if f]
        if frames and frames[0].startswith(("process ", "thread ")):
            frames = [f for f in frames if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        own[frames[-1]] += count
        for name in set(frames):
            inclusive[name] += count
        by_area[_area(frames)] += count

    def share(counter: Counter[str]) -> list[dict[str, Any]]:
        return [
            {"function": name, "samples": n, "share": round(n / total, 4)}
            for name, n in counter.most_common(top)
        ]

    return {
        "samples": total,
        "self": share(own),
        "inclusive": share(inclusive),
        "areas": share(by_area),
    }


_AREAS = (
    ("sfstream/protocol.py", "sfstream: encode records (orjson.dumps per line)"),
    ("sfstream/sinks/", "sfstream: file sink (join, hand-off to the writer thread)"),
    ("sfstream/state/", "sfstream: SQLite checkpoint commit"),
    ("sfstream/engine/records.py", "sfstream: map events to records"),
    ("sfstream/engine/pipeline.py", "sfstream: pipeline (receive loop, batching, dedupe)"),
    ("sfstream/schema/", "sfstream: schema tracking"),
    ("sfstream/bayeux/", "sfstream: Bayeux parse and session"),
    ("sfstream/client/", "sfstream: streaming client (HTTP, decode, queue)"),
    ("sfstream/observability/", "logging"),
    ("sfstream/cli/", "asyncio event loop (scheduling, callbacks)"),
    ("sfstream/runners/", "asyncio event loop (scheduling, callbacks)"),
    ("sfstream/", "sfstream: other"),
    ("structlog/", "logging"),
    ("aiohttp/", "aiohttp (outside sfstream frames)"),
    ("asyncio/", "asyncio event loop (outside sfstream frames)"),
    ("selectors.py", "asyncio event loop (outside sfstream frames)"),
    ("concurrent/futures/", "thread pool (outside sfstream frames)"),
    ("<frozen importlib", "imports"),
)


def _area(frames: list[str]) -> str:
    """The innermost sfstream frame names a sample's area (library time is charged to the
    sfstream code that called it); samples without sfstream frames go to the library."""
    for frame in reversed(frames):
        if frame.startswith("sfstream/"):
            return next(area for prefix, area in _AREAS if frame.startswith(prefix))
    for frame in reversed(frames):
        for prefix, area in _AREAS:
            if frame.startswith(prefix):
                return area
    return "other"


def profile_table(
    summary: dict[str, Any], key: str = "self", rows: int = 12, header: str = "function"
) -> list[str]:
    lines = [f"| {header} | share of samples |", "|---|---|"]
    lines += [f"| `{row['function']}` | {row['share'] * 100:.1f}% |" for row in summary[key][:rows]]
    return lines


# -- reporting ------------------------------------------------------------------------------


def median(values: Iterable[float]) -> float:
    return statistics.median(list(values))


def percentile(sorted_values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def machine() -> dict[str, Any]:
    versions = {}
    for name in ("sfstream", "aiohttp", "orjson", "pydantic", "structlog", "aiosfstream-ng"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    memory_kb = 0
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemTotal:"):
                memory_kb = int(line.split()[1])
    return {
        "git_commit": _git("rev-parse", "HEAD"),
        "src_changes_uncommitted": _git("status", "--short", "src") or None,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kb / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "versions": versions,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_average_at_start": os.getloadavg(),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def finish_machine(started: dict[str, Any]) -> dict[str, Any]:
    """`machine()` taken at the start, plus the commit at the end: other sessions share this
    work tree, and a run during which the code changed is flagged."""
    info = dict(started)
    info["git_commit_end"] = _git("rev-parse", "HEAD")
    info["src_changes_uncommitted_end"] = _git("status", "--short", "src") or None
    info["code_changed_during_run"] = (
        info["git_commit_end"] != info["git_commit"]
        or info["src_changes_uncommitted_end"] != info["src_changes_uncommitted"]
    )
    info["load_average_at_end"] = os.getloadavg()
    return info


def machine_line(info: dict[str, Any]) -> str:
    v = info["versions"]
    return (
        f"Machine: {info['cpus']} vCPU {info['machine']}, {info['memory_gib']} GiB, "
        f"{info['platform']}; Python {info['python']}, sfstream {v['sfstream']}, "
        f"aiohttp {v['aiohttp']}, orjson {v['orjson']}, pydantic {v['pydantic']}, "
        f"structlog {v['structlog']}; commit {info['git_commit'][:7]}"
        f"{' + uncommitted src changes' if info['src_changes_uncommitted'] else ''}"
        f"{' (the code changed during the run)' if info.get('code_changed_during_run') else ''}; "
        f"1-minute load average {info['load_average_at_start'][0]:.1f} at the start"
        + (
            f" and {info['load_average_at_end'][0]:.1f} at the end"
            if "load_average_at_end" in info
            else ""
        )
        + f" (other sessions' tests share the 2 cores); measured {info['date']}."
    )


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{name}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    return out


def refresh_docs(section: str, body: str) -> None:
    """Replace (or append) the block between `<!-- bench:SECTION -->` markers."""
    start = f"<!-- bench:{section} start -->"
    end = f"<!-- bench:{section} end -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = DOCS.read_text()
    if start in text and end in text:
        before, rest = text.split(start, 1)
        _, after = rest.split(end, 1)
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    DOCS.write_text(text)
