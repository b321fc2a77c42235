"""`sfstream run` with `observability.metrics_port`: /metrics, /healthz and /readyz scraped
from a real run (a subprocess) while the emulator injects faults."""

from __future__ import annotations

import asyncio
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sfstream_emulator import Emulator, Fault, FaultKind, FieldDef
from tests.conftest import MakeConfig
from tests.runners.process import start_run

STREAM = "sf.event.account_changes"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def _get(port: int, path: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}{path}", timeout=aiohttp.ClientTimeout(total=10)) as r,
    ):
        return r.status, await r.text()


async def scrape(port: int) -> Samples:
    status, text = await _get(port, "/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def until(check: Callable[[], Awaitable[bool]], what: str, timeout_s: float = 30.0) -> None:
    try:
        async with asyncio.timeout(timeout_s):
            while not await check():
                await asyncio.sleep(0.1)
    except TimeoutError:
        raise AssertionError(f"not within {timeout_s:g} s: {what}") from None


def _logged_port(log: Path) -> int | None:
    for line in log.read_bytes().splitlines():
        if b'"metrics_endpoint"' in line:
            return int(orjson.loads(line)["port"])
    return None


async def endpoint_port(log: Path) -> int:
    async with asyncio.timeout(30):
        while (port := _logged_port(log)) is None:
            await asyncio.sleep(0.05)
    return port


@pytest.fixture
async def metered_run(sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path) -> Any:
    await make_config(
        sfstream_emulator,
        observability={"metrics_port": 0, "metrics_host": "127.0.0.1", "connect_grace_s": 1},
        runtime={"summary_interval_s": 3600, "shutdown_timeout_s": 10, "connect_margin_s": 1},
        logging={"format": "json"},
    )
    log = tmp_path / "run.log"
    process = await start_run(tmp_path / "sfstream.yaml", log)
    try:
        yield process, log
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await process.wait()


async def test_counters_and_health_follow_a_run_with_faults(
    sfstream_emulator: Emulator, metered_run: Any
) -> None:
    emu = sfstream_emulator
    process, log = metered_run
    emu.create_record("Account", {"Name": "before-1"})
    emu.create_record("Account", {"Name": "before-2"})
    port = await endpoint_port(log)

    async def ready() -> bool:
        return (await _get(port, "/readyz"))[0] == 200

    await until(ready, "ready")
    assert (await _get(port, "/healthz"))[0] == 200
    # What a container's HEALTHCHECK runs.
    assert await healthcheck("--url", f"http://127.0.0.1:{port}/healthz") == (0, "healthy")
    assert await healthcheck("--url", f"http://127.0.0.1:{port}/readyz") == (0, "healthy")

    async def written(count: int) -> bool:
        samples = await scrape(port)
        return value(samples, "sfstream_records_written_total", stream=STREAM) >= count

    await until(lambda: written(2), "the first records")
    samples = await scrape(port)
    assert value(samples, "sfstream_events_received_total", stream=STREAM) == 2
    assert value(samples, "sfstream_subscription_up", stream=STREAM) == 1
    assert value(samples, "sfstream_checkpoint_replay_id", stream=STREAM) > 0
    event_time = value(samples, "sfstream_last_event_timestamp_seconds", stream=STREAM)
    assert event_time > 1_600_000_000
    assert value(samples, "sfstream_lag_seconds", stream=STREAM) >= 0
    assert value(samples, "sfstream_token_refreshes_total") >= 1
    assert value(samples, "sfstream_sink_write_seconds_count") >= 1
    assert value(samples, "sfstream_checkpoint_commit_seconds_count") >= 1
    assert value(samples, "process_cpu_seconds_total") > 0

    faults = [
        ("drop", Fault(kind=FaultKind.DROP, channel="/meta/connect"), "TransportError"),
        (
            "unknown_client",
            Fault(kind=FaultKind.UNKNOWN_CLIENT, channel="/meta/connect"),
            "UnknownClientError",
        ),
        ("auth", Fault(kind=FaultKind.AUTH_INVALID, channel="/meta/connect"), "AuthExpiredError"),
        ("http_5xx", Fault(kind=FaultKind.HTTP_503, channel="/meta/connect"), "ServerBusyError"),
        # The advised timeout is 2 s and the margin 1 s: a 5 s stall is abandoned.
        (
            "stall",
            Fault(kind=FaultKind.STALL, channel="/meta/connect", seconds=5),
            "ConnectStalledError",
        ),
    ]
    total = 2
    for reason, fault, error in faults:
        before = await scrape(port)
        if fault.kind is FaultKind.STALL:
            # The first connect after a handshake has the request timeout (30 s), not the
            # long poll's: let the session settle into its long polls first.
            await asyncio.sleep(2.5)
        emu.faults.add(fault)
        emu.create_record("Account", {"Name": f"during-{reason}"})
        total += 1

        async def moved(
            reason: str = reason, error: str = error, total: int = total, before: Samples = before
        ) -> bool:
            samples = await scrape(port)
            return (
                value(samples, "sfstream_reconnects_total", reason=reason)
                > value(before, "sfstream_reconnects_total", reason=reason)
                and value(samples, "sfstream_errors_total", error=error, retryable="true")
                > value(before, "sfstream_errors_total", error=error, retryable="true")
                and value(samples, "sfstream_records_written_total", stream=STREAM) >= total
            )

        await until(moved, f"the {reason} fault counted", timeout_s=40)
        assert not emu.faults.queue
    samples = await scrape(port)
    assert value(samples, "sfstream_events_received_total", stream=STREAM) == total
    assert value(samples, "sfstream_records_written_total", stream=STREAM) == total
    checkpoint = value(samples, "sfstream_checkpoint_replay_id", stream=STREAM)
    assert checkpoint == max(
        e["data"]["event"]["replayId"] for e in emu.published("/data/AccountChangeEvent")
    )
    assert value(samples, "sfstream_last_event_timestamp_seconds", stream=STREAM) >= event_time

    # A gap event and a schema change.
    emu.emit_gap("Account", "GAP_UPDATE", ["001000000000001AAA"])
    emu.alter_fields("Account", add=[FieldDef(name="Tier__c", type="string")])
    emu.create_record("Account", {"Name": "after-schema"})

    async def gap_and_schema() -> bool:
        samples = await scrape(port)
        return (
            value(samples, "sfstream_gaps_total", stream=STREAM, reason="gap_update") == 1
            and value(samples, "sfstream_schema_changes_total", stream=STREAM) >= 1
        )

    await until(gap_and_schema, "the gap and the schema change counted")

    # Health: the connect stalls and so does the handshake after it: no round trip for
    # longer than the advised timeout + margin + grace (2 + 1 + 1 s): /healthz fails,
    # /readyz too (reconnecting); both pass again once the session is back.
    await asyncio.sleep(2.5)  # into the long polls, as above
    emu.faults.add(Fault(kind=FaultKind.STALL, channel="/meta/connect", seconds=4))
    emu.faults.add(Fault(kind=FaultKind.STALL, channel="/meta/handshake", seconds=6))

    async def unhealthy() -> bool:
        return (await _get(port, "/healthz"))[0] == 503

    await until(unhealthy, "/healthz fails while stalled")
    status, body = await _get(port, "/readyz")
    assert status == 503, body
    assert orjson.loads(body)["status"] == "not_ready"

    async def healthy_again() -> bool:
        return (await _get(port, "/healthz"))[0] == 200 and await ready()

    await until(healthy_again, "healthy once the session is back", timeout_s=40)
    emu.create_record("Account", {"Name": "last"})

    async def all_written() -> bool:
        samples = await scrape(port)
        return value(samples, "sfstream_records_written_total", stream=STREAM) >= total + 3

    await until(all_written, "the last record")
    assert process.returncode is None


async def healthcheck(*args: str) -> tuple[int, str]:
    """`sfstream healthcheck ARGS`: (exit code, first word of its line)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        "healthcheck",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output, _ = await process.communicate()
    words = output.decode().split()
    return process.returncode or 0, words[0].rstrip(":") if words else ""


async def test_healthcheck_fails_without_an_answer_and_on_bad_input() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    assert await healthcheck("--url", f"http://127.0.0.1:{port}/healthz") == (1, "unhealthy")
    code, word = await healthcheck("--url", "ftp://example.com/healthz")
    assert (code, word) == (2, "Usage")


async def test_a_port_in_use_is_a_configuration_error(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await make_config(
                sfstream_emulator,
                observability={"metrics_port": port, "metrics_host": "127.0.0.1"},
                logging={"format": "json"},
            )
            log = tmp_path / "run.log"
            process = await start_run(tmp_path / "sfstream.yaml", log)
            async with asyncio.timeout(30):
                code = await process.wait()
        finally:
            server.close()
    assert code == 2
    text = log.read_text()
    assert f"cannot serve metrics on 127.0.0.1:{port}" in text
    assert "Traceback" not in text
