"""`sfstream status` against a real run: the checkpoints from the state store, with and
without the run, and its live figures from the metrics endpoint with `--url`."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families
from psycopg import sql

from sfstream.errors import LeaseLostError
from sfstream.state import PostgresStateStore
from sfstream.state.base import Fence
from sfstream_emulator import Emulator, EmulatorSettings
from tests.cli.test_commands import sfstream
from tests.conftest import MakeConfig
from tests.runners.process import start_run
from tests.state.test_postgres import DSN

ACCOUNTS = "/data/AccountChangeEvent"
STREAM = "sf.event.account_changes"
LAG = re.compile(r"^(\d+\.\d+s|\d+m \d+s|\d+h \d+m|\d+d \d+h)$")


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=11)


async def endpoint_port(log: Path) -> int:
    """The metrics port the run logged (it asked for any free one)."""
    async with asyncio.timeout(30):
        while True:
            for line in (await asyncio.to_thread(log.read_bytes)).splitlines():
                if b'"metrics_endpoint"' in line:
                    return int(orjson.loads(line)["port"])
            await asyncio.sleep(0.05)


async def sample(port: int, name: str) -> float | None:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and found.labels.get("stream") == STREAM:
                return float(found.value)
    return None


def last_event(emu: Emulator) -> tuple[int, float]:
    """The replayId and the event time (epoch seconds) of the last event published."""
    data = emu.published(ACCOUNTS)[-1]["data"]
    commit_ms = data["payload"]["ChangeEventHeader"]["commitTimestamp"]
    return int(data["event"]["replayId"]), commit_ms / 1000


def tables(out: str) -> list[list[list[str]]]:
    """The tables of the output (header first), their rows split on the column gaps."""
    found: list[list[list[str]]] = []
    inside = False
    for line in out.splitlines():
        if line.startswith("STREAM "):
            found.append([])
            inside = True
        elif not line.strip() or not line.startswith("sf."):
            inside = False
        if inside:
            found[-1].append(re.split(r"\s{2,}", line.strip()))
    return found


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_status_of_a_run_live_and_after_it_stopped(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    await make_config(
        emu,
        observability={"metrics_port": 0, "metrics_host": "127.0.0.1"},
        logging={"format": "json"},
    )
    config = str(tmp_path / "sfstream.yaml")
    for name in ("a", "b", "c"):
        emu.create_record("Account", {"Name": name})
    last_id, event_time = last_event(emu)
    log = tmp_path / "run.log"
    process = await start_run(tmp_path / "sfstream.yaml", log)
    try:
        port = await endpoint_port(log)
        url = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(30):
            while await sample(port, "sfstream_checkpoint_replay_id") != last_id:
                await asyncio.sleep(0.1)

        code, out, err = await sfstream("status", "--config", config, "--url", url, "--json")
        assert code == 0, err
        document: dict[str, Any] = orjson.loads(out)
        (row,) = document["streams"]
        assert row["stream"] == STREAM
        assert row["replay_id"] == last_id
        assert row["last_event_epoch_s"] == event_time
        assert datetime.fromisoformat(row["last_event_time"]).timestamp() == pytest.approx(
            event_time, abs=0.001
        )
        assert isinstance(row["lag_s"], float)
        assert row["lag_s"] >= 0
        datetime.fromisoformat(row["committed_at"])
        live = row["live"]
        assert {
            key: live[key]
            for key in (
                "events_received",
                "records_written",
                "duplicates_dropped",
                "subscription_up",
                "checkpoint",
            )
        } == {
            "events_received": 3,
            "records_written": 3,
            "duplicates_dropped": 0,
            "subscription_up": True,
            "checkpoint": last_id,
        }
        assert isinstance(live["lag_s"], float)
        assert live["lag_s"] >= 0
        endpoint = document["endpoint"]
        assert endpoint["url"] == url
        assert endpoint["health"]["ok"] is True
        assert endpoint["health"]["status"] == 200
        assert endpoint["health"]["body"]["status"] == "ok"
        assert endpoint["readiness"]["ok"] is True
        assert endpoint["readiness"]["body"]["status"] == "ready"

        # A path of the endpoint is taken as its base; the table for people.
        code, out, err = await sfstream("status", "--config", config, "--url", f"{url}/metrics/")
        assert code == 0, err
        assert f"live from {url}:" in out
        (header, stored), live_rows = tables(out)
        assert header == ["STREAM", "CHECKPOINT", "COMMITTED AT", "LAST EVENT", "LAG"]
        assert stored[:2] == [STREAM, str(last_id)]
        assert LAG.match(stored[4]), stored
        assert live_rows[0] == [
            "STREAM",
            "RECEIVED",
            "WRITTEN",
            "DUPLICATES",
            "SUBSCRIBED",
            "CHECKPOINT",
            "LAG",
        ]
        assert len(live_rows) == 2
        assert live_rows[1][:6] == [STREAM, "3", "3", "0", "yes", str(last_id)]
        assert LAG.match(live_rows[1][6]), live_rows
        assert re.search(r'^/healthz\s+200\s+\{"status":"ok"', out, re.MULTILINE), out
        assert re.search(r'^/readyz\s+200\s+\{"status":"ready"', out, re.MULTILINE), out
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0

    # Without the run: the same checkpoint and event time, from the state store alone.
    code, out, err = await sfstream("status", "--json", "--config", config)
    assert code == 0, err
    (row,) = orjson.loads(out)["streams"]
    assert (row["stream"], row["replay_id"]) == (STREAM, last_id)
    assert row["last_event_epoch_s"] == event_time
    assert isinstance(row["lag_s"], float)
    assert "live" not in row
    code, out, err = await sfstream("status", "--config", config)
    assert code == 0, err
    ((header, stored),) = tables(out)
    assert header[0] == "STREAM"
    assert stored[:2] == [STREAM, str(last_id)]
    assert LAG.match(stored[4]), stored
    assert "live from" not in out

    # The run's endpoint is gone with it.
    code, out, err = await sfstream("status", "--config", config, "--url", url)
    assert code == 1
    assert f"cannot reach the connector's metrics endpoint at {url}/metrics" in err
    assert "Traceback" not in err
    assert out == ""


async def test_a_stream_without_checkpoint_and_no_streams(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    config = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream("status", "--json", "--config", config)
    assert code == 0, err
    assert orjson.loads(out) == {
        "streams": [
            {
                "stream": STREAM,
                "replay_id": None,
                "committed_at": None,
                "last_event_time": None,
                "last_event_epoch_s": None,
                "lag_s": None,
            }
        ]
    }
    code, out, err = await sfstream("status", "--config", config)
    assert code == 0, err
    assert re.split(r"\s{2,}", out.splitlines()[1].strip()) == [STREAM, "-", "-", "-", "-"]
    # The state store was only read: nothing was created.
    assert not (tmp_path / "state.db").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--config", "missing.yaml"], 2, "configuration error: cannot read config file"),
        (["--url", "ftp://127.0.0.1:9464"], 2, "is not an http:// or https:// URL"),
        (["--url", "http://127.0.0.1:port"], 2, "is not a valid URL"),
        (["--url", "http://127.0.0.1:{closed}"], 1, "cannot reach the connector's metrics"),
    ],
)
async def test_bad_input(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    args: list[str],
    code: int,
    message: str,
) -> None:
    await make_config(sfstream_emulator)
    args = [arg.format(closed=closed_port()) for arg in args]
    if "--config" not in args:
        args += ["--config", str(tmp_path / "sfstream.yaml")]
    got, out, err = await sfstream("status", *args)
    assert (got, out) == (code, ""), err
    assert message in err
    assert "Traceback" not in err


async def test_an_unreachable_state_store(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator,
        state={"backend": "postgres", "dsn": f"postgresql://sfstream@127.0.0.1:{closed_port()}/x"},
    )
    code, out, err = await sfstream("status", "--config", str(tmp_path / "sfstream.yaml"))
    assert (code, out) == (1, "")
    assert "PostgreSQL state store postgresql://sfstream@127.0.0.1:" in err
    assert "Traceback" not in err


async def test_url_without_the_metrics_extra(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator)
    # An interpreter where prometheus-client cannot be imported, as without the extra.
    code = (
        "import sys; sys.modules['prometheus_client'] = None\n"
        "from sfstream.cli import main\n"
        "main(prog_name='sfstream')\n"
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        "status",
        "--config",
        str(tmp_path / "sfstream.yaml"),
        "--url",
        f"http://127.0.0.1:{closed_port()}",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await process.communicate()
    assert process.returncode == 2
    assert out == b""
    assert b"pip install 'sfstream[metrics]'" in err
    assert b"Traceback" not in err


async def test_leases_show_owner_token_expiry_and_fenced_commits(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    table_name = f"sfstream_status_{uuid.uuid4().hex[:10]}"
    await make_config(
        sfstream_emulator,
        [{"channel": ACCOUNTS}, {"channel": "/event/Order_Placed__e"}],
        state={"backend": "postgres", "dsn": DSN, "table": table_name},
    )
    orders = "sf.event.order_placed"
    try:
        async with PostgresStateStore(DSN, table=table_name) as store:
            first = await store.acquire([STREAM, orders], "worker-a", 30)
            await store.join("worker-a", 30)
            await store.join("worker-b", 30)
            await store.release({orders: first[orders].token}, "worker-a")
            second = await store.acquire([orders], "worker-b", 30)
            await store.commit({STREAM: 5}, fence=Fence("worker-a", {STREAM: 1}))
            with pytest.raises(LeaseLostError):
                await store.commit({orders: 9}, fence=Fence("worker-a", {orders: 1}))
        config = str(tmp_path / "sfstream.yaml")
        code, out, err = await sfstream("status", "--json", "--config", config)
        assert code == 0, err
        document = orjson.loads(out)
        assert [w["worker"] for w in document["workers"]] == ["worker-a", "worker-b"]
        rows = {row["stream"]: row for row in document["streams"]}
        assert rows[STREAM]["replay_id"] == 5
        assert rows[STREAM]["lease"]["owner"] == "worker-a"
        assert rows[STREAM]["lease"]["token"] == 1
        assert rows[STREAM]["lease"]["fenced_commits"] == 0
        until = datetime.fromisoformat(rows[STREAM]["lease"]["expires_at"])
        assert 20 < until.timestamp() - time.time() <= 31
        assert rows[orders]["replay_id"] is None
        assert rows[orders]["lease"]["owner"] == "worker-b"
        assert rows[orders]["lease"]["token"] == second[orders].token == 2
        assert rows[orders]["lease"]["fenced_commits"] == 1
        assert rows[orders]["lease"]["last_fenced_worker"] == "worker-a"
        code, out, err = await sfstream("status", "--config", config)
        assert code == 0, err
        (found,) = tables(out)
        assert found[0][-4:] == ["OWNER", "TOKEN", "LEASE UNTIL", "FENCED"]
        by_stream = {row[0]: row for row in found[1:]}
        assert by_stream[orders][-4] == "worker-b"
        assert by_stream[orders][-3] == "2"
        assert by_stream[orders][-1] == "1"
        assert "workers (2 live): worker-a, worker-b" in out
    finally:
        async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as admin:
            for suffix in ("", "_overrides", "_leases", "_members"):
                await admin.execute(
                    sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(table_name + suffix))
                )
