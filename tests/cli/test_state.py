"""`sfstream state show|set|reset` as an operator uses them, with runs in between.

Runs use the connector in-process against the emulator, with SQLite state and a file sink;
the commands run as `python -m sfstream.cli`. The storage failures (a read-only or full file
system) run the command in a private mount namespace (`unshare --mount`), where a tmpfs or a
read-only bind mount can be made without touching the machine's own mounts; they are
skipped, saying why, where that is not permitted.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from structlog.testing import capture_logs

from sfstream.engine.config import Config
from sfstream.engine.pipeline import RunResult
from sfstream.runners.connector import Connector
from sfstream.runners.wiring import open_state
from sfstream_emulator import Emulator, EmulatorSettings
from tests.cli.test_commands import sfstream
from tests.conftest import MakeConfig

ACCOUNTS = "/data/AccountChangeEvent"
STREAM = "sf.event.account_changes"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=5)


def lines(config: Config) -> list[dict[str, Any]]:
    assert config.sink.path is not None
    if not config.sink.path.exists():
        return []
    return [orjson.loads(line) for line in config.sink.path.read_bytes().splitlines()]


def names(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["Name"] for m in messages if m["type"] == "RECORD"]


def after_gap(config: Config) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The last GAP line of the sink, and the lines after it."""
    messages = lines(config)
    at = max(i for i, m in enumerate(messages) if m["type"] == "GAP")
    return messages[at], messages[at + 1 :]


def published_ids(emu: Emulator) -> list[int]:
    return [m["data"]["event"]["replayId"] for m in emu.published(ACCOUNTS)]


async def checkpoints(config: Config) -> dict[str, int]:
    store = open_state(config)
    try:
        return {k: v.replay_id for k, v in (await store.load(None)).items()}
    finally:
        await store.close()


async def run_until(
    config: Config,
    done: Callable[[], bool],
    *,
    when_started: Callable[[], None] | None = None,
    timeout_s: float = 30.0,
) -> RunResult:
    """Run the connector until `done()` (or `timeout_s`: the caller's checks say what is
    missing); `when_started` runs once its stream is subscribed."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    with capture_logs() as logs:
        async with Connector(config, run_id="cli-state") as connector:
            task = asyncio.create_task(connector.run(stop))
            async with asyncio.timeout(timeout_s):
                while not any(e["event"] == "stream_started" for e in logs):
                    assert not task.done(), task.result()
                    await asyncio.sleep(0.02)
            if when_started is not None:
                when_started()
            while not done() and not task.done() and loop.time() < deadline:
                await asyncio.sleep(0.05)
            stop.set()
            result = await task
    assert result.ok, result.error
    ahead = [e for e in logs if e["event"] == "sink_ahead_of_checkpoint"]
    assert not ahead, f"the sink's high-water mark overrode the checkpoint: {ahead}"
    return result


async def test_state_set_rewinds_past_what_the_file_sink_holds(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)
    path = str(tmp_path / "sfstream.yaml")
    for name in ("a", "b", "c"):
        emu.create_record("Account", {"Name": name})
    await run_until(config, lambda: len(names(lines(config))) >= 3)
    ids = published_ids(emu)
    code, said, err = await sfstream("state", "set", STREAM, str(ids[0]), "--config", path)
    assert code == 0, err
    emu.create_record("Account", {"Name": "d"})
    # The sink holds up to c, but the operator's position wins: b and c come again.
    await run_until(config, lambda: len(names(lines(config))) >= 6)
    gap, later = after_gap(config)
    assert (gap["stream"], gap["reason"], gap["from_replay_id"], gap["to"]) == (
        STREAM,
        "operator_set",
        ids[2],
        str(ids[0]),
    )
    assert names(later) == ["b", "c", "d"]
    assert names(lines(config)) == ["a", "b", "c", "b", "c", "d"]
    assert await checkpoints(config) == {STREAM: published_ids(emu)[3]}
    code, out, _ = await sfstream("state", "show", "--json", "--config", path)
    assert orjson.loads(out)["checkpoints"][0]["pending"] is None
    assert f"checkpoint set to {ids[0]} (was {ids[2]}); the next run resumes after" in said


async def test_state_reset_with_earliest_replays_everything(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu)  # initial_replay: earliest
    for name in ("a", "b"):
        emu.create_record("Account", {"Name": name})
    await run_until(config, lambda: len(names(lines(config))) >= 2)
    ids = published_ids(emu)
    code, said, err = await sfstream(
        "state", "reset", STREAM, "--config", str(tmp_path / "sfstream.yaml")
    )
    assert code == 0, err
    await run_until(config, lambda: len(names(lines(config))) >= 4)
    gap, later = after_gap(config)
    assert (gap["reason"], gap["from_replay_id"], gap["to"]) == (
        "operator_reset",
        ids[1],
        "earliest",
    )
    assert names(later) == ["a", "b"]
    assert await checkpoints(config) == {STREAM: ids[1]}
    assert f"checkpoint removed (was {ids[1]})" in said
    assert "the next run starts from its initial replay (earliest)" in said


async def test_state_reset_with_latest_is_not_undone_by_the_sink(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, [{"channel": ACCOUNTS, "initial_replay": "latest"}])
    path = str(tmp_path / "sfstream.yaml")
    await run_until(
        config,
        lambda: len(names(lines(config))) >= 1,
        when_started=lambda: emu.create_record("Account", {"Name": "a"}),
    )
    emu.create_record("Account", {"Name": "b"})  # while stopped: the reset skips it
    code, said, err = await sfstream("state", "reset", STREAM, "--config", path)
    assert code == 0, err
    await run_until(config, lambda: True)  # started, and stopped before any event
    gap, later = after_gap(config)
    assert (gap["reason"], gap["to"]) == ("operator_reset", "latest")
    # Nothing of the skipped event; a tip stream announces its schema at start.
    assert [m for m in later if m["type"] != "SCHEMA"] == []
    assert await checkpoints(config) == {}
    code, _, err = await sfstream("state", "reset", STREAM, "--config", path)
    assert code == 1
    assert f"{STREAM} has no checkpoint: nothing to reset" in err
    await run_until(
        config,
        lambda: "c" in names(lines(config)),
        when_started=lambda: emu.create_record("Account", {"Name": "c"}),
    )
    assert names(lines(config)) == ["a", "c"]
    assert "the next run starts from its initial replay (latest)" in said


async def test_state_set_accepts_earliest_and_latest(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    config = await make_config(sfstream_emulator)
    path = str(tmp_path / "sfstream.yaml")
    store = open_state(config)
    try:
        await store.commit({STREAM: 500})  # as a run leaves it
    finally:
        await store.close()
    for value, where in [("-2", "earliest"), ("latest", "latest"), ("-1", "latest")]:
        code, out, err = await sfstream("state", "set", STREAM, value, "--config", path)
        assert code == 0, err
        assert f"{STREAM}: checkpoint removed" in out
        assert f"the next run starts from {where}" in out
    code, out, err = await sfstream("state", "set", "--config", path, STREAM, "earliest")
    assert code == 0, err
    assert "checkpoint removed (it had none)" in out
    code, out, _ = await sfstream("state", "show", "--json", "--config", path)
    (row,) = orjson.loads(out)["checkpoints"]
    assert row["replay_id"] is None
    assert (row["pending"]["start"], row["pending"]["previous"]) == ("earliest", 500)
    code, out, _ = await sfstream("state", "show", "--config", path)
    assert "start earliest (was 500)" in out
    for value in ("-3", "soon"):
        code, _, err = await sfstream("state", "set", STREAM, value, "--config", path)
        assert code == 2
        assert f"'{value}' is not a valid integer" in err
        assert "earliest (or -2) or latest (or -1)" in err


async def test_state_set_refuses_a_stream_that_is_not_configured(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    path = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream(
        "state", "set", "sf.event.acount_changes", "5", "--config", path
    )
    assert code == 2
    assert "sf.event.acount_changes is not one of the streams of this configuration" in err
    assert f"(known: {STREAM})" in err
    assert "--force" in err
    code, out, _ = await sfstream("state", "show", "--config", path)
    assert out.strip() == "no checkpoints yet"
    code, out, err = await sfstream(
        "state", "set", "sf.event.acount_changes", "5", "--force", "--config", path
    )
    assert code == 0, err
    assert "checkpoint set to 5" in out


async def test_state_set_and_reset_refuse_a_stream_a_run_owns(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    config = await make_config(sfstream_emulator)
    path = str(tmp_path / "sfstream.yaml")
    code, _, err = await sfstream("state", "set", STREAM, "40", "--config", path)
    assert code == 0, err
    store = open_state(config)
    try:
        # What a running connector holds for its lifetime.
        async with store.owner([STREAM]):
            for command in (["set", STREAM, "10"], ["reset", STREAM]):
                code, out, err = await sfstream("state", *command, "--config", path)
                assert code == 1, out
                assert (
                    f"stream {STREAM} is being streamed by a running `sfstream run` "
                    f"(pid {os.getpid()} on host "
                ) in err
                assert "stop it first or use --force" in err
                assert "Traceback" not in err
            assert await checkpoints(config) == {STREAM: 40}
            code, out, err = await sfstream(
                "state", "set", STREAM, "10", "--force", "--config", path
            )
            assert code == 0, err
            assert "checkpoint set to 10 (was 40)" in out
            assert "warning" in err
            assert "overwrites the change with its next checkpoint" in err
    finally:
        await store.close()
    assert await checkpoints(config) == {STREAM: 10}


# -- storage failures, in a private mount namespace ----------------------------------------


def _mount_namespace_problem() -> str | None:
    """Why a private mount namespace with tmpfs and bind mounts cannot be used, or None."""
    unshare = shutil.which("unshare")
    if not sys.platform.startswith("linux"):
        return "mount namespaces are a Linux feature"
    if os.geteuid() != 0:
        return "mounting a read-only or a full file system needs root"
    if unshare is None:
        return "unshare(1) (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as directory:
        probe = subprocess.run(
            [unshare, "--mount", "--propagation", "private", "sh", "-c", _full_tmpfs(directory)],
            capture_output=True,
            check=False,
        )
    if probe.returncode != 0:
        return f"mounting in a private mount namespace is not permitted here ({probe.stderr!r})"
    return None


@pytest.fixture(scope="module")
def mount_namespace() -> str:
    problem = _mount_namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    unshare = shutil.which("unshare")
    assert unshare is not None
    return unshare


def _read_only(directory: Path | str) -> str:
    quoted = shlex.quote(str(directory))
    return f"mount --bind {quoted} {quoted} && mount -o remount,bind,ro {quoted}"


def _full_tmpfs(directory: Path | str) -> str:
    """A 64 KiB tmpfs on `directory`, filled up to 20 KiB: too little for SQLite's WAL index."""
    quoted = shlex.quote(str(directory))
    return (
        f"mount -t tmpfs -o size=64k tmpfs {quoted} && "
        f"dd if=/dev/zero of={quoted}/fill bs=4k count=11 2>/dev/null"
    )


async def sfstream_mounted(unshare: str, setup: str, *args: str) -> tuple[int, str, str]:
    """`sfstream ARGS` in a private mount namespace, after the shell commands `setup`."""
    process = await asyncio.create_subprocess_exec(
        unshare,
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        f'set -e; {setup}; exec "$@"',
        "sh",
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def run_failed(err: str) -> str:
    """The error of the `run_failed` log line of `sfstream run`."""
    for line in err.splitlines():
        if line.startswith("{") and orjson.loads(line).get("event") == "run_failed":
            return str(orjson.loads(line)["error"])
    raise AssertionError(f"no run_failed line in: {err}")


async def test_state_show_reads_a_read_only_store(
    mount_namespace: str, sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    frozen = tmp_path / "frozen"
    await make_config(sfstream_emulator, state={"path": "frozen/state.db"})
    path = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream_mounted(
        mount_namespace,
        "mkdir -p " + shlex.quote(str(frozen)) + " && " + _read_only(frozen),
        "state",
        "show",
        "--config",
        path,
    )
    assert (code, out.strip()) == (0, "no checkpoints yet"), err
    code, _, err = await sfstream("state", "set", STREAM, "77", "--config", path)
    assert code == 0, err
    before = sorted(p.name for p in frozen.iterdir())
    code, out, err = await sfstream_mounted(
        mount_namespace, _read_only(frozen), "state", "show", "--json", "--config", path
    )
    assert code == 0, err
    (row,) = orjson.loads(out)["checkpoints"]
    assert (row["stream"], row["replay_id"]) == (STREAM, 77)
    assert sorted(p.name for p in frozen.iterdir()) == before  # nothing created
    code, out, err = await sfstream_mounted(
        mount_namespace, _read_only(frozen), "state", "set", STREAM, "5", "--config", path
    )
    assert code == 1
    assert (
        f"cannot write the state database {frozen / 'state.db'}: the file system is "
        "read-only; point state.path at a writable place"
    ) in err
    assert "cannot read" not in err


async def test_a_full_disk_at_start_is_named_as_such(
    mount_namespace: str, sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    full = tmp_path / "full"
    full.mkdir()
    await make_config(
        sfstream_emulator,
        state={"path": "full/state.db"},
        schema_registry={"path": "schemas.db"},
    )
    code, _, err = await sfstream_mounted(
        mount_namespace, _full_tmpfs(full), "run", "--config", str(tmp_path / "sfstream.yaml")
    )
    assert code == 1, err
    error = run_failed(err)
    assert f"the disk holding the state database {full / 'state.db'} is full" in error
    assert "free space and restart" in error


async def test_a_read_only_sink_is_reported_as_a_write(
    mount_namespace: str, sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    frozen = tmp_path / "frozen"
    frozen.mkdir()
    await make_config(sfstream_emulator, sink={"type": "file", "path": "frozen/records.jsonl"})
    code, _, err = await sfstream_mounted(
        mount_namespace, _read_only(frozen), "run", "--config", str(tmp_path / "sfstream.yaml")
    )
    assert code == 1, err
    error = run_failed(err)
    assert (
        f"cannot open {frozen / 'records.jsonl'} for writing: Read-only file system [EROFS]"
    ) in error
    assert "the file system is read-only: point sink.path at a writable place" in error
    assert "cannot read" not in error


async def test_set_refuses_a_stream_whose_lease_a_worker_holds(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    import uuid

    import psycopg
    from psycopg import sql

    from sfstream.state import PostgresStateStore
    from tests.state.test_postgres import DSN

    name = f"sfstream_state_{uuid.uuid4().hex[:10]}"
    stream = "sf.event.account_changes"
    await make_config(sfstream_emulator, state={"backend": "postgres", "dsn": DSN, "table": name})
    config = str(tmp_path / "sfstream.yaml")
    try:
        async with PostgresStateStore(DSN, table=name) as store:
            held = await store.acquire([stream], "worker-a", 30)
            code, _, err = await sfstream("state", "set", stream, "7", "--config", config)
            assert code == 1, err
            assert "being streamed by a running `sfstream run` (worker worker-a)" in err
            assert await store.load([stream]) == {}
            await store.release({stream: held[stream].token}, "worker-a")
            code, _, err = await sfstream("state", "set", stream, "7", "--config", config)
            assert code == 0, err
            assert (await store.load([stream]))[stream].replay_id == 7
            lease = (await store.leases([stream]))[stream]
            # The command held the lease meanwhile: a new token, given back.
            assert lease.token == held[stream].token + 1
            assert not lease.held
    finally:
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as admin:
            for suffix in ("", "_overrides", "_leases", "_members"):
                await admin.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name + suffix))
                )
