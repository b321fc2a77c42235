"""The ECS task metadata (v4): read once at start from a real local endpoint serving a task
document; its task ARN, cluster and family on every log line of `sfstream run` and in the
traces' resource; an endpoint that fails is a warning, never fatal."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import signal
import socket
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
import structlog
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sfstream.observability.tracing import Tracing, set_platform_attributes
from sfstream.runners import ecs
from sfstream_emulator import Emulator
from tests.conftest import MakeConfig
from tests.observability.test_tracing import Receiver, by_name, otlp  # noqa: F401 - a fixture
from tests.runners.process import start_run

TASK_ARN = "arn:aws:ecs:us-west-2:111122223333:task/default/e9028f8d5d8e4f258373e7b93ce9a3c3"
CLUSTER_ARN = "arn:aws:ecs:us-west-2:111122223333:cluster/default"

TASK_DOCUMENT: dict[str, Any] = {
    "Cluster": CLUSTER_ARN,
    "TaskARN": TASK_ARN,
    "Family": "sfstream",
    "Revision": "3",
    "DesiredStatus": "RUNNING",
    "KnownStatus": "RUNNING",
    "Limits": {"CPU": 0.25, "Memory": 512},
    "PullStartedAt": "2025-10-08T20:47:16.053330955Z",
    "PullStoppedAt": "2025-10-08T20:47:19.592684631Z",
    "AvailabilityZone": "us-west-2a",
    "LaunchType": "FARGATE",
    "Containers": [
        {
            "DockerId": "e9028f8d5d8e4f258373e7b93ce9a3c3-2495160603",
            "Name": "sfstream",
            "Image": "111122223333.dkr.ecr.us-west-2.amazonaws.com/sfstream:0.1.0",
            "Labels": {
                "com.amazonaws.ecs.cluster": CLUSTER_ARN,
                "com.amazonaws.ecs.container-name": "sfstream",
                "com.amazonaws.ecs.task-arn": TASK_ARN,
                "com.amazonaws.ecs.task-definition-family": "sfstream",
                "com.amazonaws.ecs.task-definition-version": "3",
            },
            "DesiredStatus": "RUNNING",
            "KnownStatus": "RUNNING",
            "Limits": {"CPU": 0},
            "Type": "NORMAL",
            "Networks": [
                {
                    "NetworkMode": "awsvpc",
                    "IPv4Addresses": ["10.0.0.108"],
                    "AttachmentIndex": 0,
                    "PrivateDNSName": "ip-10-0-0-108.us-west-2.compute.internal",
                    "SubnetGatewayIpv4Address": "10.0.0.1/24",
                }
            ],
        }
    ],
    "ClockDrift": {
        "ClockErrorBound": 0.5458234999999999,
        "ReferenceTimestamp": "2025-10-08T20:47:59Z",
        "ClockSynchronizationStatus": "SYNCHRONIZED",
    },
    "EphemeralStorageMetrics": {"Utilized": 261, "Reserved": 20496},
}
"""A Fargate task's metadata document, in the v4 endpoint's shape."""

LOG_FIELDS = {"ecs_task_arn": TASK_ARN, "ecs_cluster": CLUSTER_ARN, "ecs_family": "sfstream"}


@dataclass
class MetadataEndpoint:
    """A task metadata endpoint v4 on a local port: `url` is what ECS puts in
    `ECS_CONTAINER_METADATA_URI_V4`; `/task` answers `document` (or `status`, after
    `delay_s`)."""

    url: str = ""
    document: Any = field(default_factory=lambda: copy.deepcopy(TASK_DOCUMENT))
    status: int = 200
    delay_s: float = 0.0
    body: bytes | None = None
    requests: list[str] = field(default_factory=list)

    async def task(self, request: web.Request) -> web.Response:
        self.requests.append(request.path)
        await asyncio.sleep(self.delay_s)
        if self.status != 200:
            return web.Response(status=self.status, text="internal error")
        body = self.body if self.body is not None else orjson.dumps(self.document)
        return web.Response(body=body, content_type="application/json")


@contextlib.asynccontextmanager
async def metadata_endpoint(host: str = "127.0.0.1") -> AsyncIterator[MetadataEndpoint]:
    """Serve a task metadata endpoint for the block."""
    endpoint = MetadataEndpoint()
    app = web.Application()
    app.router.add_get("/v4/{container}/task", endpoint.task)
    # A client that gives up (a timeout) cancels its request's handler.
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    endpoint.url = f"http://{host}:{port}/v4/e9028f8d5d8e4f258373e7b93ce9a3c3-2495160603"
    try:
        yield endpoint
    finally:
        await runner.cleanup()


@pytest.fixture
async def endpoint() -> AsyncIterator[MetadataEndpoint]:
    async with metadata_endpoint() as served:
        yield served


@pytest.fixture
def platform_reset() -> Iterator[None]:
    """Forget the resource attributes a lookup handed to the traces, after the test."""
    yield
    set_platform_attributes({})


async def test_the_task_is_read_from_the_v4_endpoint(endpoint: MetadataEndpoint) -> None:
    task = await ecs.fetch_task(endpoint.url)
    assert endpoint.requests == [
        "/v4/e9028f8d5d8e4f258373e7b93ce9a3c3-2495160603/task",
    ]
    assert task == ecs.EcsTask(
        arn=TASK_ARN,
        cluster=CLUSTER_ARN,
        family="sfstream",
        revision="3",
        availability_zone="us-west-2a",
        launch_type="FARGATE",
    )
    assert task.log_fields() == LOG_FIELDS
    assert task.resource_attributes() == {
        "cloud.provider": "aws",
        "cloud.platform": "aws_ecs",
        "cloud.region": "us-west-2",
        "cloud.account.id": "111122223333",
        "cloud.availability_zone": "us-west-2a",
        "aws.ecs.task.arn": TASK_ARN,
        "aws.ecs.task.family": "sfstream",
        "aws.ecs.task.revision": "3",
        "aws.ecs.cluster.arn": CLUSTER_ARN,
        "aws.ecs.launchtype": "fargate",
    }


async def test_a_cluster_named_without_its_arn_gets_one_from_the_tasks(
    endpoint: MetadataEndpoint,
) -> None:
    # EC2 container agents name the cluster by its short name.
    endpoint.document["Cluster"] = "default"
    del endpoint.document["LaunchType"]
    task = await ecs.fetch_task(endpoint.url + "/")
    assert task.cluster == "default"
    assert task.log_fields()["ecs_cluster"] == "default"
    attributes = task.resource_attributes()
    assert attributes["aws.ecs.cluster.arn"] == CLUSTER_ARN
    assert "aws.ecs.launchtype" not in attributes


async def test_on_ecs_the_traces_resource_carries_the_task(
    endpoint: MetadataEndpoint, platform_reset: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", "cloud.availability_zone=set-by-the-user")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    with structlog.testing.capture_logs() as logs:
        fields = await ecs.identify({ecs.METADATA_VARIABLE: endpoint.url})
    assert fields == LOG_FIELDS
    (found,) = logs
    assert found == {
        **LOG_FIELDS,
        "event": "ecs_task",
        "log_level": "info",
        "revision": "3",
        "zone": "us-west-2a",
    }
    tracing = Tracing(InMemorySpanExporter())
    try:
        resource = dict(tracing.provider.resource.attributes)
    finally:
        tracing.shutdown()
    assert resource["aws.ecs.task.arn"] == TASK_ARN
    assert resource["aws.ecs.cluster.arn"] == CLUSTER_ARN
    assert resource["aws.ecs.task.family"] == "sfstream"
    assert resource["cloud.platform"] == "aws_ecs"
    assert resource["service.name"] == "sfstream"
    # OTEL_RESOURCE_ATTRIBUTES wins over what the endpoint said.
    assert resource["cloud.availability_zone"] == "set-by-the-user"


async def test_off_ecs_nothing_is_asked(endpoint: MetadataEndpoint) -> None:
    with structlog.testing.capture_logs() as logs:
        assert await ecs.identify({}) == {}
        assert await ecs.identify({ecs.METADATA_VARIABLE: "  "}) == {}
    assert endpoint.requests == []
    assert logs == []


@pytest.mark.parametrize(
    ("problem", "message"),
    [
        ("status", "answered HTTP 500"),
        ("slow", "did not answer within 0.3 s"),
        ("not json", "/task:"),
        ("not a task", "has no TaskARN, Family"),
        ("a list", "is not an object (list)"),
        ("closed port", "/task:"),
    ],
)
async def test_a_failing_endpoint_is_a_warning_and_the_lookup_goes_on_without_it(
    endpoint: MetadataEndpoint, problem: str, message: str
) -> None:
    url = endpoint.url
    if problem == "status":
        endpoint.status = 500
    elif problem == "slow":
        endpoint.delay_s = 3.0
    elif problem == "not json":
        endpoint.body = b"<html>not json</html>"
    elif problem == "not a task":
        endpoint.document = {"Cluster": CLUSTER_ARN, "TaskARN": "", "Revision": "3"}
    elif problem == "a list":
        endpoint.document = [TASK_DOCUMENT]
    # A port bound but not listening refuses connections.
    with socket.socket() as closed, structlog.testing.capture_logs() as logs:
        if problem == "closed port":
            closed.bind(("127.0.0.1", 0))
            url = f"http://127.0.0.1:{closed.getsockname()[1]}/v4/gone"
        loop = asyncio.get_running_loop()
        began = loop.time()
        fields = await ecs.identify({ecs.METADATA_VARIABLE: url}, timeout_s=0.3)
    assert loop.time() - began < 2.0
    assert fields == {}
    (warning,) = logs
    assert warning["event"] == "ecs_metadata_unavailable"
    assert warning["log_level"] == "warning"
    assert message in warning["error"]


async def test_a_run_on_ecs_puts_the_task_on_every_log_line_and_in_its_traces(
    sfstream_emulator: Emulator,
    make_config: MakeConfig,
    tmp_path: Path,
    endpoint: MetadataEndpoint,
    otlp: tuple[Receiver, str],  # noqa: F811 - the fixture imported above
) -> None:
    emu = sfstream_emulator
    receiver, otlp_url = otlp
    config = await make_config(emu, logging={"format": "json"})
    assert config.sink.path is not None
    sink = config.sink.path
    for number in range(3):
        emu.create_record("Account", {"Name": f"E{number}"})
    log = tmp_path / "run.log"
    env = {
        ecs.METADATA_VARIABLE: endpoint.url,
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_url,
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "SFSTREAM_RUN_ID": "ecs-run-1",
    }
    process = await start_run(tmp_path / "sfstream.yaml", log, env=env)
    try:
        async with asyncio.timeout(60):
            while not (sink.exists() and sink.read_bytes().count(b'"type":"RECORD"') >= 3):
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
    text = log.read_text()
    assert code == 0, text
    assert len(endpoint.requests) == 1  # once, at start
    lines = [orjson.loads(line) for line in text.splitlines()]
    events = [line["event"] for line in lines]
    assert events[0] == "ecs_task"
    assert {"stopping", "run_started", "run_stopped"} <= set(events)
    for line in lines:
        assert line["run_id"] == "ecs-run-1", line
        assert {key: line.get(key) for key in LOG_FIELDS} == LOG_FIELDS, line

    spans = receiver.spans()
    assert "sfstream.run" in by_name(spans)
    for exported in spans:
        assert exported.resource["aws.ecs.task.arn"] == TASK_ARN
        assert exported.resource["aws.ecs.cluster.arn"] == CLUSTER_ARN
        assert exported.resource["aws.ecs.task.family"] == "sfstream"
        assert exported.resource["cloud.platform"] == "aws_ecs"
        assert exported.resource["service.name"] == "sfstream"


async def test_a_run_whose_metadata_endpoint_fails_streams_all_the_same(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path, endpoint: MetadataEndpoint
) -> None:
    emu = sfstream_emulator
    endpoint.status = 503
    config = await make_config(emu, logging={"format": "json"})
    assert config.sink.path is not None
    sink = config.sink.path
    emu.create_record("Account", {"Name": "F1"})
    log = tmp_path / "run.log"
    process = await start_run(
        tmp_path / "sfstream.yaml", log, env={ecs.METADATA_VARIABLE: endpoint.url}
    )
    try:
        async with asyncio.timeout(60):
            while not (sink.exists() and b'"type":"RECORD"' in sink.read_bytes()):
                assert process.returncode is None, log.read_text()
                await asyncio.sleep(0.05)
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            code = await process.wait()
    text = log.read_text()
    assert code == 0, text
    lines = [orjson.loads(line) for line in text.splitlines()]
    (warning,) = [line for line in lines if line["event"] == "ecs_metadata_unavailable"]
    assert "HTTP 503" in warning["error"]
    assert not any("ecs_task_arn" in line for line in lines)
    assert "run_stopped" in [line["event"] for line in lines]
