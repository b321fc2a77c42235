"""`sfstream check` only looks, and `sfstream run` refuses at start what `check` refuses.

Every command runs as the operator runs it: `python -m sfstream.cli ...` against the
emulator, with the configuration written by `make_config`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from sfstream_emulator import Emulator
from tests.conftest import MakeConfig
from tests.runners.process import start_run

JSON_LOGS = {"level": "info", "format": "json"}


async def sfstream(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


def log_lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


async def run_until_it_ends(config: Path, log: Path, timeout_s: float = 60) -> int:
    """`sfstream run`, expected to end by itself (a refusal at start)."""
    process = await start_run(config, log)
    try:
        async with asyncio.timeout(timeout_s):
            return await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def run_until_streaming(config: Path, log: Path) -> int:
    """`sfstream run` until its streams have started, then SIGTERM; the exit code."""
    process = await start_run(config, log)
    try:
        async with asyncio.timeout(60):
            while not any(line["event"] == "stream_started" for line in log_lines(log)):
                assert process.returncode is None, log_lines(log)
                await asyncio.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            return await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def tree(root: Path) -> set[Path]:
    return {path.relative_to(root) for path in root.rglob("*")}


# -- check has no side effects ---------------------------------------------------------------


async def test_check_creates_nothing_and_says_what_a_run_would_create(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    before = tree(tmp_path)
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 0, out + err
    assert tree(tmp_path) == before  # no state database, no sink file
    assert f"ok    state store (sqlite): {tmp_path / 'state.db'} would be created" in out
    assert f"ok    sink ({tmp_path / 'records.jsonl'}): would be created" in out


async def test_check_names_the_missing_directory_and_creates_none(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    missing = tmp_path / "nonexistent"
    await make_config(
        sfstream_emulator,
        state={"path": str(missing / "deep" / "dir" / "state.db")},
        sink={"type": "file", "path": str(missing / "deep" / "dir" / "records.jsonl")},
    )
    code, out, _ = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1
    assert not missing.exists()
    lines = out.splitlines()
    assert (
        f"FAIL  state store (sqlite): {missing}/deep/dir/state.db cannot be created: "
        f"{missing} does not exist"
    ) in lines
    assert (
        f"FAIL  sink ({missing}/deep/dir/records.jsonl): cannot be created: "
        f"{missing} does not exist"
    ) in lines


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
async def test_check_reports_a_directory_it_may_not_write(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    await make_config(sfstream_emulator, sink={"type": "file", "path": str(locked / "r.jsonl")})
    code, out, _ = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1
    assert f"FAIL  sink ({locked}/r.jsonl): cannot be created: {locked} is not writable" in out


async def test_check_reads_an_existing_state_database_without_changing_it(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    config = str(tmp_path / "sfstream.yaml")
    code, _, err = await sfstream(
        "state", "set", "sf.event.account_changes", "42", "--config", config
    )
    assert code == 0, err
    (tmp_path / "records.jsonl").write_bytes(b"")
    database = tmp_path / "state.db"
    content, stat = database.read_bytes(), database.stat()
    before = tree(tmp_path)
    code, out, err = await sfstream("check", "--config", config)
    assert code == 0, out + err
    assert f"ok    state store (sqlite): {database}: 1 checkpoint(s)" in out
    assert f"ok    sink ({tmp_path / 'records.jsonl'}): appends to the existing file" in out
    assert tree(tmp_path) == before  # no -wal or -shm left behind
    assert database.read_bytes() == content
    assert database.stat().st_mtime_ns == stat.st_mtime_ns


async def test_check_reports_a_corrupt_state_database(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    (tmp_path / "state.db").write_bytes(b"this is not a database" * 100)
    code, out, _ = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1
    assert f"FAIL  state store (sqlite): {tmp_path / 'state.db'} is corrupt or not an SQLite" in out


async def test_check_does_not_create_the_postgres_table(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    psycopg = pytest.importorskip("psycopg")
    dsn = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    try:
        admin = await psycopg.AsyncConnection.connect(dsn, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"PostgreSQL is not reachable: {exc}")
    async with admin:
        schema = f"sfstream_check_{uuid.uuid4().hex[:10]}"
        await admin.execute(f"CREATE SCHEMA {schema}")
        try:
            scoped = psycopg.conninfo.make_conninfo(dsn, options=f"-c search_path={schema}")
            await make_config(sfstream_emulator, state={"backend": "postgres", "dsn": scoped})
            code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
            assert code == 0, out + err
            assert "ok    state store (postgres): table sfstream_checkpoints would be created" in (
                out
            )
            cursor = await admin.execute(
                "SELECT count(*) FROM pg_tables WHERE schemaname = %s", (schema,)
            )
            assert await cursor.fetchone() == (0,)
        finally:
            await admin.execute(f"DROP SCHEMA {schema} CASCADE")


# -- stream id collisions are configuration errors, worded the same everywhere -----------------


async def test_a_stream_id_collision_is_a_configuration_error_everywhere(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [
            {"channel": "/event/Order_Placed__e"},
            {"channel": "/u/Orders", "id": "sf.event.order_placed"},
        ],
        logging=JSON_LOGS,
    )
    config = str(tmp_path / "sfstream.yaml")
    words = (
        "channels /event/Order_Placed__e and /u/Orders both map to stream id "
        "'sf.event.order_placed': /u/Orders has the explicit `id: sf.event.order_placed`, "
        "which is the id derived from /event/Order_Placed__e; change that `id:`"
    )
    code, out, _ = await sfstream("check", "--config", config)
    assert code == 2
    assert f"FAIL  configuration: {words}" in out.splitlines()
    assert "ok    configuration" not in out
    assert "explicit `id:` in `streams`" not in out

    code, _, err = await sfstream("discover", "--config", config)
    assert code == 2
    assert f"sfstream: configuration error: {words}" in err

    log = tmp_path / "run.log"
    code = await run_until_it_ends(Path(config), log)
    assert code == 2
    (line,) = [line for line in log_lines(log) if line["level"] == "error"]
    assert line["error"] == words


async def test_a_collision_of_derived_ids_suggests_an_explicit_id(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/event/SalesEvents__chn"}],
        discovery={"mode": "metadata", "include": ["/data/*__chn"]},
    )
    code, out, _ = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 2
    assert (
        "FAIL  configuration: channels /data/SalesEvents__chn and /event/SalesEvents__chn both "
        "map to stream id 'sf.event.sales_events_channel'; give /event/SalesEvents__chn an "
        "explicit `id:` in `streams` (or exclude /data/SalesEvents__chn from discovery)"
    ) in out.splitlines()


# -- run checks what check checks -------------------------------------------------------------


async def test_run_refuses_a_key_field_the_event_lacks_with_checks_words(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/event/Order_Placed__e", "key_field": "Order_Numbr__c"}],
        logging=JSON_LOGS,
    )
    config = tmp_path / "sfstream.yaml"
    words = (
        "stream sf.event.order_placed (/event/Order_Placed__e): key field Order_Numbr__c is "
        "not a field of Order_Placed__e"
    )
    code, out, _ = await sfstream("check", "--config", str(config))
    assert code == 1
    assert f"FAIL  {words}" in out.splitlines()

    log = tmp_path / "run.log"
    code = await run_until_it_ends(config, log)
    assert code == 1, log.read_text()
    (failed,) = [line for line in log_lines(log) if line["event"] == "run_failed"]
    assert failed["error"] == words
    assert "startup_retry" not in {line["event"] for line in log_lines(log)}
    assert not (tmp_path / "records.jsonl").exists()


async def test_check_fails_an_entity_without_change_data_capture_and_run_warns(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    """`check` is the gate before a deployment: it fails the stream. `run` logs a warning
    in the same words and streams on: selecting the entity is an admin's step in Setup, and
    the stream delivers once it is done."""
    await make_config(sfstream_emulator, [{"channel": "/data/CaseChangeEvent"}], logging=JSON_LOGS)
    config = tmp_path / "sfstream.yaml"
    code, out, _ = await sfstream("check", "--config", str(config))
    assert code == 1
    (fail,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    assert "change events are not enabled for Case" in fail
    log = tmp_path / "run.log"
    assert await run_until_streaming(config, log) == 0
    (warned,) = [line for line in log_lines(log) if line["event"] == "stream_not_selected"]
    assert warned["level"] == "warning"
    assert fail.endswith(warned["warning"])
    assert not [line for line in log_lines(log) if line["event"] == "run_failed"]


async def test_a_key_field_on_a_change_event_stream_is_a_warning_in_check_and_run(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/data/AccountChangeEvent", "key_field": "External_Account_ID__c"}],
        logging=JSON_LOGS,
    )
    config = tmp_path / "sfstream.yaml"
    words = (
        "key_field External_Account_ID__c is ignored: change event records are keyed by the "
        "id of the changed record (ChangeEventHeader.recordIds); remove key_field"
    )
    code, out, err = await sfstream("check", "--config", str(config))
    assert code == 0, out + err
    assert f"ok    warning /data/AccountChangeEvent: {words}" in out.splitlines()

    log = tmp_path / "run.log"
    assert await run_until_streaming(config, log) == 0
    (warning,) = [line for line in log_lines(log) if line["event"] == "stream_warning"]
    assert warning["level"] == "warning"
    assert warning["stream"] == "sf.event.account_changes"
    assert warning["channel"] == "/data/AccountChangeEvent"
    assert warning["warning"] == words


async def test_run_starts_a_clean_configuration_and_says_how_long_its_checks_took(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [
            {"channel": "/data/AccountChangeEvent"},
            {"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"},
        ],
        logging=JSON_LOGS,
    )
    log = tmp_path / "run.log"
    assert await run_until_streaming(tmp_path / "sfstream.yaml", log) == 0
    lines = log_lines(log)
    assert not [line for line in lines if line["level"] in ("warning", "error")]
    (checked,) = [line for line in lines if line["event"] == "streams_checked"]
    assert checked["streams"] == 2
    assert checked["elapsed_ms"] >= 0


async def test_with_on_subscription_lost_continue_a_failing_stream_is_logged_and_others_run(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/data/AccountChangeEvent"}, {"channel": "/data/CaseChangeEvent"}],
        runtime={"on_subscription_lost": "continue", "shutdown_timeout_s": 10},
        logging=JSON_LOGS,
    )
    config = tmp_path / "sfstream.yaml"
    code, out, _ = await sfstream("check", "--config", str(config))
    assert code == 1
    (fail,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    log = tmp_path / "run.log"
    assert await run_until_streaming(config, log) == 0
    (logged,) = [line for line in log_lines(log) if line["event"] == "stream_not_selected"]
    assert logged["level"] == "warning"
    assert (logged["stream"], logged["channel"]) == (
        "sf.event.case_changes",
        "/data/CaseChangeEvent",
    )
    assert fail.endswith(logged["warning"])


async def test_a_channel_salesforce_refuses_is_logged_then_left_to_its_subscription(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        [{"channel": "/data/AccountChangeEvent"}, {"channel": "/event/Nope__e"}],
        logging=JSON_LOGS,
    )
    config = tmp_path / "sfstream.yaml"
    code, out, _ = await sfstream("check", "--config", str(config))
    assert code == 1
    (fail,) = [line for line in out.splitlines() if line.startswith("FAIL")]
    log = tmp_path / "run.log"
    assert await run_until_it_ends(config, log) == 1
    lines = log_lines(log)
    (logged,) = [line for line in lines if line["event"] == "stream_check_failed"]
    assert logged["error"] == fail.removeprefix("FAIL  ")
    assert "platform event Nope__e does not exist in this org" in logged["error"]
    # Salesforce's refusal, in its words, ends the run by the on_subscription_lost policy.
    (failed,) = [line for line in lines if line["event"] == "run_failed"]
    assert "/event/Nope__e" in failed["error"]


# -- the Kafka, PostgreSQL and S3 sinks: reached and looked at, never written ---------------


def closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_check_reaches_a_kafka_sink_and_reports_an_unreachable_one(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, kafka_broker: Any
) -> None:
    config = str(tmp_path / "sfstream.yaml")
    await make_config(
        sfstream_emulator, sink={"type": "kafka", "bootstrap_servers": kafka_broker.bootstrap}
    )
    code, out, err = await sfstream("check", "--config", config)
    assert code == 0, out + err
    assert f"ok    sink (kafka {kafka_broker.bootstrap}): 1 broker(s)" in out
    closed = f"127.0.0.1:{closed_port()}"
    await make_config(sfstream_emulator, sink={"type": "kafka", "bootstrap_servers": closed})
    code, out, err = await sfstream("check", "--config", config)
    assert code == 1, out + err
    assert f"FAIL  sink (kafka {closed}): the brokers did not answer" in out
    assert "Traceback" not in err


async def test_check_looks_for_the_postgres_sink_table_without_creating_it(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    dsn = os.environ.get("SFSTREAM_TEST_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/test")
    table = f"sfstream_check_{uuid.uuid4().hex[:10]}"
    await make_config(sfstream_emulator, sink={"type": "postgres", "dsn": dsn, "table": table})
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 0, out + err
    assert f"table {table} would be created" in out
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as admin:
        cursor = await admin.execute("SELECT to_regclass(%s)", (table,))
        assert await cursor.fetchone() == (None,)


async def test_check_finds_the_s3_bucket_or_says_it_is_missing(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, aws: Any
) -> None:
    bucket = aws.name("sfstream-check")
    sink = {"type": "s3", "bucket": bucket, "endpoint_url": aws.endpoint, "region": aws.region}
    await make_config(sfstream_emulator, sink=sink)
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 1, out + err
    assert f"FAIL  sink (s3://{bucket}/sfstream): bucket {bucket} does not exist" in out
    aws.client("s3").create_bucket(
        Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": aws.region}
    )
    code, out, err = await sfstream("check", "--config", str(tmp_path / "sfstream.yaml"))
    assert code == 0, out + err
    assert f"ok    sink (s3://{bucket}/sfstream): the bucket is reachable" in out
