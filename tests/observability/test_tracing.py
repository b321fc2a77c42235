"""Traces over OTLP/HTTP: `sfstream run` (a subprocess) and the Lambda handler export their
spans to a real OTLP receiver started here, parented by the orchestrator's trace context;
without `OTEL_*` variables nothing of OpenTelemetry is imported and nothing listens."""

from __future__ import annotations

import asyncio
import gzip
import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sfstream.engine.pipeline import _Batch
from sfstream.observability.telemetry import Telemetry
from sfstream.observability.tracing import Tracing, enabled, traced_service
from sfstream.runners import aws_lambda
from sfstream.runners.connector import start
from sfstream_emulator import Emulator, Fault, FaultKind
from tests.conftest import MakeConfig
from tests.runners.process import start_run
from tests.test_imports import RUN_PROBE

STREAM = "sf.event.account_changes"
CHANNEL = "/data/AccountChangeEvent"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    return getattr(value, kind) if kind else None


def _attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass
class Exported:
    span: Span
    attributes: dict[str, Any]
    resource: dict[str, Any]


class Receiver:
    """An OTLP/HTTP trace receiver: the export requests POSTed to /v1/traces, decoded."""

    def __init__(self) -> None:
        self.requests: list[ExportTraceServiceRequest] = []
        self.content_types: set[str] = set()

    async def traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        self.content_types.add(request.content_type)
        self.requests.append(ExportTraceServiceRequest.FromString(body))
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def spans(self) -> list[Exported]:
        found = []
        for request in self.requests:
            for resource_spans in request.resource_spans:
                resource = _attributes(resource_spans.resource.attributes)
                found.extend(
                    Exported(span, _attributes(span.attributes), resource)
                    for scope_spans in resource_spans.scope_spans
                    for span in scope_spans.spans
                )
        return found


@pytest.fixture
async def otlp() -> AsyncIterator[tuple[Receiver, str]]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/v1/traces", receiver.traces)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield receiver, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


def by_name(spans: list[Exported]) -> dict[str, list[Exported]]:
    named: dict[str, list[Exported]] = defaultdict(list)
    for exported in spans:
        named[exported.span.name].append(exported)
    return named


def assert_batches_match(batches: list[Exported], published: list[int], *, parents: set[bytes]):
    """The batches' records add up to what was published, each batch's replayIds bound
    exactly its records, and together they cover every published replayId."""
    assert sum(b.attributes["sfstream.records"] for b in batches) == len(published)
    covered = []
    for batch in batches:
        assert batch.span.parent_span_id in parents
        assert batch.attributes["sfstream.outcome"] == "ok"
        assert batch.span.start_time_unix_nano <= batch.span.end_time_unix_nano
        if not batch.attributes["sfstream.records"]:
            continue
        assert batch.attributes["sfstream.stream"] == STREAM
        assert batch.attributes["sfstream.channel"] == CHANNEL
        first = batch.attributes["sfstream.first_replay_id"]
        last = batch.attributes["sfstream.last_replay_id"]
        inside = [replay_id for replay_id in published if first <= replay_id <= last]
        assert inside[0] == first
        assert inside[-1] == last
        assert len(inside) == batch.attributes["sfstream.records"]
        covered.extend(inside)
    assert sorted(covered) == sorted(published)


def _records_in(path: Path) -> int:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return sum(b'"type":"RECORD"' in line for line in lines)


def _text(path: Path) -> str:
    return path.read_text()


async def records_written(
    path: Path, count: int, process: asyncio.subprocess.Process, log: Path
) -> None:
    async with asyncio.timeout(60):
        while _records_in(path) < count:
            assert process.returncode is None, _text(log)
            await asyncio.sleep(0.05)


async def test_a_run_exports_its_spans_under_the_orchestrators_trace(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    otlp: tuple[Receiver, str],
) -> None:
    emu = sfstream_emulator
    receiver, endpoint = otlp
    config = await make_config(emu, logging={"format": "json"})
    assert config.sink.path is not None
    emu.create_record("Account", {"Name": "T1"})
    emu.create_record("Account", {"Name": "T2"})
    log = tmp_path / "run.log"
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "TRACEPARENT": TRACEPARENT,
        "SFSTREAM_RUN_ID": "traced-run-1",
    }
    process = await start_run(tmp_path / "sfstream.yaml", log, env=env)
    try:
        await records_written(config.sink.path, 2, process, log)
        emu.faults.add(Fault(kind=FaultKind.UNKNOWN_CLIENT, channel="/meta/connect"))
        emu.create_record("Account", {"Name": "T3"})
        await records_written(config.sink.path, 3, process, log)
        async with asyncio.timeout(30):
            while b'"reason":"unknown_client"' not in log.read_bytes():
                await asyncio.sleep(0.05)
        # Spans go out while the run goes on, not only at its end.
        async with asyncio.timeout(30):
            while "sfstream.reconnect" not in by_name(receiver.spans()):
                await asyncio.sleep(0.05)
        emu.create_record("Account", {"Name": "T4"})
        await records_written(config.sink.path, 4, process, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
    assert code == 0, log.read_text()

    assert receiver.content_types == {"application/x-protobuf"}
    spans = receiver.spans()
    named = by_name(spans)
    assert set(named) == {
        "sfstream.run",
        "sfstream.session",
        "sfstream.reconnect",
        "sfstream.batch",
    }
    for exported in spans:
        assert exported.span.trace_id.hex() == TRACE_ID
        assert exported.attributes["sfstream.run_id"] == "traced-run-1"
        assert exported.resource["service.name"] == "sfstream"

    (run,) = named["sfstream.run"]
    assert run.span.parent_span_id.hex() == PARENT_ID
    assert run.attributes["sfstream.runner"] == "service"
    assert run.attributes["sfstream.outcome"] == "ok"
    assert run.attributes["sfstream.exit_code"] == 0

    sessions = named["sfstream.session"]
    assert sessions
    for session in sessions:
        assert session.span.parent_span_id == run.span.span_id
        assert session.attributes["sfstream.outcome"] == "ok"
        assert session.attributes["sfstream.streams"] == [STREAM]
        assert session.attributes["sfstream.channels"] == [CHANNEL]
        assert run.span.start_time_unix_nano <= session.span.start_time_unix_nano
        assert session.span.end_time_unix_nano <= run.span.end_time_unix_nano
    session_ids = {session.span.span_id for session in sessions}

    (reconnect,) = named["sfstream.reconnect"]
    assert reconnect.span.parent_span_id in session_ids
    assert reconnect.attributes["sfstream.reconnect.reason"] == "unknown_client"
    assert reconnect.attributes["error.type"] == "UnknownClientError"

    published = [e["data"]["event"]["replayId"] for e in emu.published(CHANNEL)]
    assert len(published) == 4
    assert_batches_match(
        named["sfstream.batch"], published, parents=session_ids | {run.span.span_id}
    )


async def test_a_lambda_invocation_is_traced_under_its_events_traceparent(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    otlp: tuple[Receiver, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    emu = sfstream_emulator
    receiver, endpoint = otlp
    await make_config(emu)
    for number in range(3):
        emu.create_record("Account", {"Name": f"L{number}"})
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("SFSTREAM_LAMBDA_MARGIN_S", "0")
    aws_lambda._tracing.cache_clear()
    event = {"config": str(tmp_path / "sfstream.yaml"), "traceparent": TRACEPARENT}
    try:
        # The emulator serves on this loop: the handler runs its own, in a thread.
        result = await asyncio.to_thread(aws_lambda.handler, event, Context(2500, "inv-1"))
        # Exported before the handler returned: the runtime freezes the process then.
        spans = receiver.spans()
    finally:
        tracing = aws_lambda._tracing()
        aws_lambda._tracing.cache_clear()
        if tracing is not None:
            tracing.shutdown()
    assert result["ok"], result
    named = by_name(spans)
    (run,) = named["sfstream.run"]
    assert run.span.trace_id.hex() == TRACE_ID
    assert run.span.parent_span_id.hex() == PARENT_ID
    assert run.attributes["sfstream.runner"] == "lambda"
    assert run.attributes["sfstream.outcome"] == "ok"
    (session,) = named["sfstream.session"]
    assert session.span.parent_span_id == run.span.span_id
    for exported in spans:
        assert exported.span.trace_id.hex() == TRACE_ID
        assert exported.attributes["sfstream.run_id"] == "inv-1"
    published = [e["data"]["event"]["replayId"] for e in emu.published(CHANNEL)]
    assert_batches_match(
        named["sfstream.batch"], published, parents={session.span.span_id, run.span.span_id}
    )


@dataclass
class Context:
    """What the Lambda runtime passes (the outside world)."""

    remaining_ms: int
    aws_request_id: str

    def get_remaining_time_in_millis(self) -> int:
        return self.remaining_ms


def test_the_tracing_setup_parents_the_run_with_a_traceparent() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter)
    telemetry = Telemetry()
    try:
        with tracing.run(
            telemetry, "unit-1", runner="lambda", parent={"traceparent": TRACEPARENT}
        ) as trace:
            assert len(telemetry.listeners) == 1
            trace.ended("StreamCheckError")
        assert telemetry.listeners == []
        assert tracing.flush()
        (run,) = exporter.get_finished_spans()
    finally:
        tracing.shutdown()
    assert run.name == "sfstream.run"
    assert run.parent is not None
    assert format(run.parent.span_id, "016x") == PARENT_ID
    assert format(run.context.trace_id, "032x") == TRACE_ID
    assert run.attributes is not None
    assert run.attributes["sfstream.outcome"] == "StreamCheckError"
    assert not run.status.is_ok


@pytest.mark.parametrize(
    ("environ", "on"),
    [
        ({}, False),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}, True),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://collector:4318/v1/traces"}, True),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
        ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, False),
        ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
        ({"OTEL_SDK_DISABLED": "false", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4318"}, True),
    ],
)
def test_tracing_is_on_when_the_environment_configures_an_exporter(
    environ: dict[str, str], on: bool
) -> None:
    assert enabled(environ) is on


def _untraced(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("OTEL_") or name in {"TRACEPARENT", "TRACESTATE"}:
            monkeypatch.delenv(name)


async def test_without_an_exporter_nothing_listens_and_batches_go_unreported(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The event path's cost of tracing when it is off: no listener, so the pipeline builds
    # no batch report (no pass over the batch's records, no report object, no call).
    _untraced(monkeypatch)
    emu = sfstream_emulator
    config = await make_config(emu)
    emu.create_record("Account", {"Name": "U1"})
    telemetry = Telemetry()
    stop = asyncio.Event()
    async with traced_service(telemetry, "untraced-1", tuple) as trace:
        assert trace is None
        assert telemetry.listeners == []
        connector = await start(config, "untraced-1", stop, telemetry=telemetry)
        assert connector is not None
        async with connector:
            task = asyncio.create_task(connector.run(stop))
            pipeline = connector.pipeline
            assert pipeline is not None
            async with asyncio.timeout(30):
                while pipeline.stats[STREAM].written < 1:
                    await asyncio.sleep(0.05)
            assert pipeline._batch_report(_Batch(), time.time(), 0.0) is None
            # The same pipeline with a listener (tracing on) does build them.
            tracing = Tracing(InMemorySpanExporter())
            try:
                with tracing.run(telemetry, "untraced-1", runner="service", parent={}):
                    assert pipeline._batch_report(_Batch(), time.time(), 0.0) is not None
            finally:
                tracing.shutdown()
            assert telemetry.listeners == []
            stop.set()
            result = await task
    assert result.ok


async def test_without_otel_variables_a_run_imports_no_opentelemetry(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, logging={"format": "json"})
    assert config.sink.path is not None
    emu.create_record("Account", {"Name": "P1"})
    out = tmp_path / "modules.txt"
    log = tmp_path / "run.log"
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith("OTEL_") and name not in {"TRACEPARENT", "TRACESTATE"}
    }
    with log.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-c", RUN_PROBE.replace("OUT", repr(str(out)))),
            *("run", "--config", str(tmp_path / "sfstream.yaml")),
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=env,
        )
    try:
        await records_written(config.sink.path, 1, process, log)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
    assert code == 0, log.read_text()
    loaded = set(out.read_text().split())
    assert "sfstream.observability.tracing" in loaded
    assert not {name for name in loaded if name.split(".")[0] == "opentelemetry"}
