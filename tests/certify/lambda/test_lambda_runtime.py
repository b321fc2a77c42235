"""Certification of the AWS Lambda handler under the real Lambda runtime interface client.

`sfstream.runners.aws_lambda.handler` runs in `python -m awslambdaric` (the unmodified
runtime client, as in a Lambda image), driven by the local Runtime API of `runtime_api.py`:
the deadline header, a freeze of the process whenever it is idle, cold starts (the process
killed before an invocation, or in the middle of one). Fifty invocations with change events
published to the emulator before and during them, PostgreSQL state (127.0.0.1:5432, database
`test`, or `SFSTREAM_TEST_POSTGRES_DSN`) and a file sink; among them a configuration Lambda
refuses (SQLite state), a token endpoint and a REST call that stall past the invocation's
stop. The suite checks every event once in the sink, the checkpoints resumed, no answer past
its deadline, the EMF metrics on stdout, the access token reused while warm and nothing left
running between invocations; it writes a JSON certificate with the versions, the checks and
the cold and warm start timings, and prints its summary.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import os
import platform
import random
import statistics
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from psycopg import sql

from sfstream_emulator import Emulator, Fault, FaultKind
from tests.conftest import MakeConfig

from .runtime_api import Invocation, LocalLambda

HANDLER = "sfstream.runners.aws_lambda.handler"
STREAM = "sf.event.account_changes"
CHANNEL = "/data/AccountChangeEvent"
DSN = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
TIMEOUT_S = 1.5
"""The function's timeout: short, so that fifty invocations take about a minute."""
MARGIN_S = 0.5
KILL_AFTER_S = 0.7
"""A crash: the runtime is killed this long into an invocation (while it streams)."""


@dataclass
class Step:
    """One invocation of the plan.

    `kind`: `run` (streams; a cold start when no runtime runs), `cold` (the runtime is
    killed first), `crash` (killed in the middle), `sqlite` (the event names a configuration
    with SQLite state), `stall_token` (a cold start whose token endpoint stalls past the
    stop), `stall_rest` (a REST call stalls past the stop).
    """

    kind: str
    before: int
    during: int
    timeout_s: float


LEASE_TTL_S = 5
"""The certification's lease TTL: how long invocations after a crashed one wait."""


def plan(count: int = 50, seed: int = 15) -> list[Step]:
    rng = random.Random(seed)
    special = {5: "sqlite", 9: "cold", 14: "crash", 17: "stall_token", 21: "cold", 28: "crash"}
    special |= {33: "cold", 40: "stall_rest"}
    steps = []
    for index in range(count):
        kind = special.get(index, "run")
        last = index >= count - 2  # the last invocations only catch up
        steps.append(
            Step(
                kind,
                before=0 if last else rng.randint(0, 3),
                during=0 if last or index % 4 else 2,
                timeout_s=2.0 if index % 7 == 3 else TIMEOUT_S,
            )
        )
    return steps


@pytest.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A database of its own on the test server (advisory locks, which the state store's
    run lock uses, are per database), dropped after the test."""
    try:
        admin = await psycopg.AsyncConnection.connect(DSN, autocommit=True, connect_timeout=10)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is not reachable ({exc}); start it or set SFSTREAM_TEST_POSTGRES_DSN"
        )
    name = f"sfstream_certify_{uuid.uuid4().hex[:10]}"
    async with admin:
        await admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield psycopg.conninfo.make_conninfo(DSN, dbname=name)
        finally:
            await admin.execute(
                sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name))
            )


async def checkpoint(dsn: str) -> int | None:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute("SELECT to_regclass('sfstream_checkpoints') IS NOT NULL")
        found = await cursor.fetchone()
        if found is None or not found[0]:
            return None
        cursor = await conn.execute(
            "SELECT replay_id FROM sfstream_checkpoints WHERE stream = %s", (STREAM,)
        )
        row = await cursor.fetchone()
        return None if row is None else int(row[0])


def sink_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    messages = map(orjson.loads, path.read_bytes().splitlines())
    return [m for m in messages if m["type"] == "RECORD"]


def json_lines(lam: LocalLambda, stream: str) -> list[dict[str, Any]]:
    found = []
    for _, name, line in lam.lines:
        if name == stream and line.startswith("{"):
            found.append(orjson.loads(line))
    return found


def emf_by_run(documents: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    runs: dict[str, list[dict[str, Any]]] = {}
    for document in documents:
        if "CloudWatchMetrics" in document.get("_aws", {}):
            runs.setdefault(document.get("run_id", ""), []).append(document)
    return runs


def figures(document: dict[str, Any]) -> dict[str, float]:
    (directive,) = document["_aws"]["CloudWatchMetrics"]
    return {m["Name"]: document[m["Name"]][0] for m in directive["Metrics"]}


def sqlite_config(path: Path, good: Path) -> Path:
    """The configuration at `good`, with SQLite state: what Lambda must refuse."""
    document = yaml.safe_load(good.read_text())
    document["state"] = {"path": str(path.parent / "state.db")}
    document["secrets"]["file"] = str(good.parent / document["secrets"]["file"])
    document["sink"]["path"] = str(path.parent / "records.jsonl")
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(document))
    return path


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


@pytest.mark.timeout(300)
async def test_the_handler_certified_under_the_lambda_runtime(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    postgres_dsn: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    emu = sfstream_emulator
    dsn = postgres_dsn
    # Leases (the default on PostgreSQL): a crashed invocation's lease runs out after 5 s.
    config = await make_config(
        emu, state={"backend": "postgres", "dsn": dsn, "lease_ttl_s": LEASE_TTL_S}
    )
    good = tmp_path / "sfstream.yaml"
    refused = sqlite_config(tmp_path / "sqlite" / "sfstream.yaml", good)
    assert config.sink.path is not None
    sink = config.sink.path
    loop = asyncio.get_running_loop()
    created = 0

    def publish(count: int) -> None:
        nonlocal created
        for _ in range(count):
            emu.create_record("Account", {"Name": f"E{created}"})
            created += 1

    steps = plan()
    runs: list[tuple[Step, Invocation, int | None]] = []
    frozen_states: list[str | None] = []
    began = time.monotonic()
    environment = {"SFSTREAM_CONFIG": str(good), "SFSTREAM_LAMBDA_MARGIN_S": str(MARGIN_S)}
    with LocalLambda(HANDLER, environment, cwd=tmp_path) as lam:
        for index, step in enumerate(steps):
            held = [m["replay_id"] for m in sink_records(sink)]
            stored = await checkpoint(dsn)
            resume = max([*held, *([] if stored is None else [stored])], default=None)
            publish(step.before)
            if step.kind in ("cold", "stall_token"):
                lam.kill()
            if step.kind == "stall_token":
                emu.faults.add(Fault(kind=FaultKind.STALL, target="oauth", seconds=5.0))
            if step.kind == "stall_rest":
                emu.faults.add(Fault(kind=FaultKind.STALL, target="rest", seconds=5.0))
            if step.during:
                loop.call_later(0.3, publish, step.during)
            event: dict[str, Any] = {"config": str(refused)} if step.kind == "sqlite" else {}
            kill_after = KILL_AFTER_S if step.kind == "crash" else None
            invocation = await asyncio.to_thread(
                lam.invoke, event, step.timeout_s, kill_after_s=kill_after
            )
            await asyncio.sleep(0.35 if step.during else 0.0)  # what is published during
            runs.append((step, invocation, resume))
            if index == 10:
                async with asyncio.timeout(2):
                    while lam.state() != "T":
                        await asyncio.sleep(0.01)
                frozen_states.append(lam.state())
    elapsed_s = time.monotonic() - began
    assert created > 0
    assert not emu.faults.queue

    output = tmp_path / "runtime-output.txt"
    output.write_text("".join(f"{pid} {name} {line}\n" for pid, name, line in lam.lines))
    stdout = json_lines(lam, "stdout")
    stderr = json_lines(lam, "stderr")
    checks: dict[str, dict[str, Any]] = {}

    def check(name: str, passed: bool, **detail: Any) -> None:
        checks[name] = {"passed": bool(passed), **detail}

    answered = [inv for step, inv, _ in runs if step.kind != "crash"]
    check(
        "every invocation answered with /response",
        all(inv.status == "success" for inv in answered)
        and all(inv.status == "killed" for step, inv, _ in runs if step.kind == "crash"),
        statuses=sorted({inv.status or "" for _, inv, _ in runs}),
        others=[
            (index, inv.status, inv.body)
            for index, (step, inv, _) in enumerate(runs)
            if inv.status != ("killed" if step.kind == "crash" else "success")
        ][:3],
    )
    early_ms = [inv.deadline_ms - inv.answered_ms for inv in answered if inv.within_deadline]
    check(
        "no answer past its deadline",
        all(inv.within_deadline for inv in answered),
        closest_to_deadline_ms=round(min(early_ms), 1) if early_ms else None,
    )

    def outcome(step: Step, body: dict[str, Any]) -> bool:
        error = body.get("error") or ""
        if step.kind == "sqlite":
            return not body["ok"] and not body["retryable"] and "state.backend is sqlite" in error
        if step.kind == "stall_token":
            return not body["ok"] and body["retryable"] and "waiting for token endpoint" in error
        if step.kind == "stall_rest":
            return not body["ok"] and body["retryable"] and "waiting for REST API" in error
        return bool(body["ok"])

    wrong = [
        (index, step.kind, inv.body)
        for index, (step, inv, _) in enumerate(runs)
        if inv.status == "success" and not outcome(step, inv.body)
    ]
    check("each invocation ends as its plan says", not wrong, wrong=wrong[:3])

    published = [m["data"]["event"]["replayId"] for m in emu.published(CHANNEL)]
    held = [m["replay_id"] for m in sink_records(sink)]
    names = [m["data"]["Name"] for m in sink_records(sink)]
    check(
        "every event exactly once in the sink",
        held == published and names == [f"E{n}" for n in range(created)],
        events=len(published),
        records=len(held),
        duplicates=len(held) - len(set(held)),
        missing=len(set(published) - set(held)),
    )
    final = await checkpoint(dsn)
    check(
        "the checkpoint is the last event",
        final == published[-1],
        checkpoint=final,
        last=published[-1],
    )

    started = {
        line["run_id"]: line["replay_id"]
        for line in stderr
        if line.get("event") == "stream_started"
    }
    streamed = [
        (index, started.get(inv.request_id), -2 if resume is None else resume)
        for index, (step, inv, resume) in enumerate(runs)
        if inv.status == "success" and inv.body["ok"]
    ]
    resumed = [(found, expected) for _, found, expected in streamed if found is not None]
    check(
        "each invocation that streams resumes from the checkpoint (or the sink's last record)",
        all(found == expected for found, expected in resumed),
        mismatches=[pair for pair in resumed if pair[0] != pair[1]][:3],
    )
    # An invocation after a crashed one waits (ready, idle) while the crashed sandbox's
    # lease runs out: only then, and only until one takes the stream over.
    crashes = [index for index, (step, _, _) in enumerate(runs) if step.kind == "crash"]
    waited = [index for index, found, _ in streamed if found is None]
    since_crash = [
        index
        for index in waited
        if any(
            crash < index
            and all(found is None for other, found, _ in streamed if crash < other < index)
            for crash in crashes
        )
    ]
    taken_over = [line for line in stderr if line.get("event") == "lease_taken_over"]
    check(
        "only invocations right after a crash wait for its lease, and then one takes it over",
        waited == since_crash and len(taken_over) == len(crashes),
        waited=waited,
        crashes=crashes,
        takeovers=len(taken_over),
    )

    cold = [inv.cold for _, inv, _ in runs]
    check(
        "cold starts are the ones the plan made, reported by the handler",
        all(inv.body.get("cold_start") == inv.cold for inv in answered)
        and sum(cold) == len(lam.spawns),
        cold_starts=sum(cold),
    )
    logins = []
    previous_ok = False
    for step, inv, _ in runs:
        if inv.status == "success":
            warm = previous_ok and not inv.cold
            if step.kind not in ("sqlite", "stall_rest"):
                logins.append((warm, inv.body.get("logins")))
            previous_ok = bool(inv.body["ok"])
        else:
            previous_ok = False
    check(
        "a warm invocation reuses the access token",
        all(count == (0 if warm else 1) for warm, count in logins),
        token_grants=emu.tokens.grants_issued,
        invocations=len(runs),
    )

    before = {spawn.pid: spawn.threads for spawn in lam.spawns}
    warm_runs = sum(not inv.cold for _, inv, _ in runs)
    check(
        "the runtime is frozen whenever idle, with no thread left from an invocation",
        len(lam.freezes) >= warm_runs
        and all(freeze.threads == before[freeze.pid] for freeze in lam.freezes)
        and frozen_states == ["T"],
        freezes=len(lam.freezes),
        threads_before_any_invocation=sorted({n for n in before.values() if n is not None}),
        threads_when_frozen=sorted({freeze.threads for freeze in lam.freezes}),
    )
    ended = [line for line in stderr if line.get("event") == "invocation_ended"]
    check(
        "no task left on the event loop after an invocation",
        len(ended) == len(answered) and all(line["tasks_left"] == 0 for line in ended),
        ended=len(ended),
    )

    emf = emf_by_run(stdout)
    emf_problems = []
    for step, inv, _ in runs:
        if inv.status != "success" or step.kind == "sqlite":
            continue
        documents = emf.get(inv.request_id, [])
        namespaces = {d["_aws"]["CloudWatchMetrics"][0]["Namespace"] for d in documents}
        streams = [d for d in documents if d.get("stream") == STREAM]
        errors = [d for d in documents if "error" in d]
        if namespaces != {"sfstream"}:
            emf_problems.append((inv.request_id, "namespace", sorted(namespaces)))
        elif inv.body["ok"] and len(streams) != 1:
            emf_problems.append((inv.request_id, "stream documents", len(streams)))
        elif inv.body["ok"]:
            summary = inv.body["streams"][STREAM]
            found = figures(streams[0])
            if found["records_written"] != summary["emitted"] or (
                summary["checkpoint"] is not None
                and found["checkpoint_replay_id"] != summary["checkpoint"]
            ):
                emf_problems.append((inv.request_id, found, summary))
        elif not any(d["error"] == "InvocationDeadlineError" for d in errors):
            emf_problems.append((inv.request_id, "no InvocationDeadlineError count", errors))
    check("EMF metrics on stdout match each invocation", not emf_problems, problems=emf_problems)

    secrets = [emu.credentials["client_secret"], emu.credentials["refresh_token"]]
    leaked = [line for _, _, line in lam.lines if any(secret in line for secret in secrets)]
    check("no secret in the runtime's output", not leaked, lines=len(lam.lines))

    init_ms = [spawn.init_ms for spawn in lam.spawns if spawn.init_ms is not None]
    startup = [
        (inv.cold, inv.body.get("logins"), inv.body["startup_ms"])
        for _, inv, _ in runs
        if inv.status == "success" and inv.body.get("startup_ms") is not None
    ]
    cold_startup = [ms for is_cold, _, ms in startup if is_cold]
    warm_startup = [ms for is_cold, count, ms in startup if not is_cold and count == 0]
    timings = {
        "init_ms": {"median": median(init_ms), "max": round(max(init_ms), 1), "n": len(init_ms)},
        "cold_startup_ms": {"median": median(cold_startup), "n": len(cold_startup)},
        "warm_startup_ms": {
            "median": median(warm_startup),
            "p95": round(sorted(warm_startup)[int(len(warm_startup) * 0.95)], 1),
            "n": len(warm_startup),
        },
        "cold_start_to_streaming_ms": round(
            (median(init_ms) or 0) + (median(cold_startup) or 0), 1
        ),
        "suite_s": round(elapsed_s, 1),
    }
    versions = {
        name: importlib.metadata.version(name)
        for name in ("sfstream", "awslambdaric", "aws-lambda-powertools", "psycopg", "aiohttp")
    }
    certificate = {
        "certificate": "sfstream on AWS Lambda (real runtime interface client, local Runtime API)",
        "handler": HANDLER,
        "command": f"python -m awslambdaric {HANDLER}",
        "versions": {"python": platform.python_version(), **versions},
        "function": {"timeout_s": TIMEOUT_S, "margin_s": MARGIN_S, "state": "postgres"},
        "invocations": len(runs),
        "cold_starts": sum(cold),
        "events": len(published),
        "checks": checks,
        "runtime_output": str(output),
        "timings": timings,
        "passed": all(c["passed"] for c in checks.values()),
    }
    path = tmp_path / "lambda-certificate.json"
    path.write_text(json.dumps(certificate, indent=2, default=str))
    written = json.loads(path.read_text())
    with capsys.disabled():
        print(f"\nLambda certificate: {path}")
        for name, result in written["checks"].items():
            print(f"  {'ok  ' if result['passed'] else 'FAIL'} {name}")
        print(f"  timings: {json.dumps(written['timings'])}")
    failed = {name: c for name, c in written["checks"].items() if not c["passed"]}
    assert not failed, json.dumps(failed, indent=2, default=str)
    assert written["passed"] is True
    assert written["invocations"] == 50
    assert written["versions"]["awslambdaric"] == "4.2.2"
