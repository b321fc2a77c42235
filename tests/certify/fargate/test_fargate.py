"""Certification on AWS Fargate: the service image (or its entry point as a process, see
`tests.certify.fargate.task`) against the emulator, configured and stopped as ECS does.

A task starts, becomes ready (`/readyz`), passes its health check and streams; SIGTERM at
random moments drains it (flush, commit, disconnect) and it exits 0 within ECS's 30 s
stopTimeout; SIGKILL loses nothing. Twenty stops and kills at seeded random moments while
events are published, then an audit of the file sink: every published event exactly once
and in order (the file sink's high-water marks make it exactly-once per replayId, even
after a SIGKILL), and the checkpoints at the last replayIds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Final

import aiohttp
import orjson
import pytest

from sfstream import __version__
from sfstream.state import SqliteStateStore
from sfstream.streams import stream_id
from sfstream_emulator import Emulator, EmulatorSettings
from tests.certify.fargate.task import (
    IMAGE,
    IMAGE_CONFIG,
    PODMAN,
    STOP_TIMEOUT_S,
    Mode,
    Task,
    hand_back,
    image_user,
    kill_codes,
    launch_mode,
)
from tests.runners.test_ecs import LOG_FIELDS, MetadataEndpoint, metadata_endpoint

CHANNELS: Final = ("/data/AccountChangeEvent", "/event/Order_Placed__e")
STREAMS: Final = {channel: stream_id(channel) for channel in CHANNELS}
SEED: Final = int(os.environ.get("SFSTREAM_CERTIFY_SEED", "15"))
CYCLES: Final = 20


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=SEED)


@pytest.fixture(scope="session")
def mode() -> Mode:
    return launch_mode()


@pytest.fixture
async def endpoint() -> AsyncIterator[MetadataEndpoint]:
    async with metadata_endpoint() as served:
        yield served


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Deployment:
    """The task definition of a test: its directory, its environment, its runs."""

    def __init__(
        self, mode: Mode, workdir: Path, emu: Emulator, endpoint: MetadataEndpoint
    ) -> None:
        self.mode = mode
        self.workdir = workdir
        self.emu = emu
        self.endpoint = endpoint
        self.metrics_port = _free_port()
        self.tasks: list[Task] = []

    def task(self, batch: dict[str, int] | None = None) -> Task:
        """A new run of the task (not started)."""
        number = len(self.tasks)
        task = Task(
            self.mode,
            self.workdir,
            {},
            self.workdir.parent / f"run-{number:02d}.log",
            name=f"sfstream-certify-{os.getpid()}-{number}",
        )
        task.env = self._environment(task, batch or {})
        self.tasks.append(task)
        return task

    def _environment(self, task: Task, batch: dict[str, int]) -> dict[str, str]:
        creds = self.emu.credentials
        env = {
            # The task definition's environment.
            "SFSTREAM_SALESFORCE__LOGIN_URL": self.emu.url,
            "SFSTREAM_SALESFORCE__CLIENT_ID": creds["client_id"],
            "SFSTREAM_SALESFORCE__CLIENT_SECRET": "${secret:SF_CLIENT_SECRET}",
            "SFSTREAM_SALESFORCE__REFRESH_TOKEN": "${secret:SF_REFRESH_TOKEN}",
            "SFSTREAM_DISCOVERY__MODE": "metadata",
            "SFSTREAM_DISCOVERY__INCLUDE": orjson.dumps(list(CHANNELS)).decode(),
            "SFSTREAM_DISCOVERY__INITIAL_REPLAY": "earliest",
            "SFSTREAM_STATE__PATH": task.path("state.db"),
            "SFSTREAM_SINK__TYPE": "file",
            "SFSTREAM_SINK__PATH": task.path("records.jsonl"),
            "SFSTREAM_OBSERVABILITY__METRICS_PORT": str(self.metrics_port),
            "SFSTREAM_OBSERVABILITY__METRICS_HOST": "127.0.0.1",
            "SFSTREAM_LOGGING__FORMAT": "json",
            # Its secrets, as ECS fills them from Secrets Manager.
            "SF_CLIENT_SECRET": creds["client_secret"],
            "SF_REFRESH_TOKEN": creds["refresh_token"],
            # What ECS adds.
            "ECS_CONTAINER_METADATA_URI_V4": self.endpoint.url,
        }
        for name, value in batch.items():
            env[f"SFSTREAM_BATCH__{name.upper()}"] = str(value)
        if self.mode.name == "process":
            # The image's own configuration file; a container has it at SFSTREAM_CONFIG.
            env["SFSTREAM_CONFIG"] = str(IMAGE_CONFIG)
        return env

    @property
    def sink(self) -> Path:
        return self.workdir / "records.jsonl"

    async def ready(self, task: Task, timeout_s: float = 60.0) -> dict[str, Any]:
        """Wait for `/readyz` to answer 200; its body."""
        url = f"http://127.0.0.1:{self.metrics_port}/readyz"
        assert task.process is not None
        async with aiohttp.ClientSession() as http, asyncio.timeout(timeout_s):
            while True:
                assert task.process.returncode is None, task.log.read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(url) as response:
                        if response.status == 200:
                            body: dict[str, Any] = await response.json()
                            return body
                await asyncio.sleep(0.1)

    async def checkpoints(self) -> dict[str, int]:
        store = SqliteStateStore(self.workdir / "state.db", read_only=True)
        try:
            return {k: v.replay_id for k, v in (await store.load(None)).items()}
        finally:
            await store.close()
            hand_back(self.mode, self.workdir)


@pytest.fixture
async def deployment(
    mode: Mode, tmp_path: Path, sfstream_emulator: Emulator, endpoint: MetadataEndpoint
) -> AsyncIterator[Deployment]:
    workdir = tmp_path / "task"
    workdir.mkdir()
    hand_back(mode, workdir)
    deployed = Deployment(mode, workdir, sfstream_emulator, endpoint)
    try:
        yield deployed
    finally:
        for task in deployed.tasks:
            await task.discard()


def published(emu: Emulator) -> dict[str, list[int]]:
    return {
        STREAMS[channel]: [int(m["data"]["event"]["replayId"]) for m in emu.published(channel)]
        for channel in CHANNELS
    }


def sink_replay_ids(path: Path) -> dict[str, list[int]]:
    """The replayIds of each stream's RECORD lines, in file order (complete lines only)."""
    found: dict[str, list[int]] = {stream: [] for stream in STREAMS.values()}
    if not path.exists():
        return found
    data = path.read_bytes()
    for line in data[: data.rfind(b"\n") + 1].splitlines():
        message = orjson.loads(line)
        if message["type"] == "RECORD":
            found[message["stream"]].append(message["replay_id"])
    return found


def publish_one(emu: Emulator, rng: random.Random, number: int) -> None:
    if rng.random() < 0.5:
        emu.create_record("Account", {"Name": f"Certified {number}"})
    else:
        emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O-{number}"})


def assert_drained(
    deployment: Deployment, task: Task, code: int, seconds: float, sessions_before: set[str]
) -> list[dict[str, Any]]:
    """A SIGTERM's outcome: exit 0 within the stop timeout, every stream flushed and
    committed (when it had started), the client disconnected. Returns the run's log lines."""
    text = task.log.read_text()
    assert code == 0, text
    assert seconds < STOP_TIMEOUT_S, text
    lines = task.lines()
    events = [line["event"] for line in lines]
    # A signal before the event loop took over (the run's first lines) stops it before start.
    assert {"stopping", "run_stopped"} <= set(events) or "stopped_before_start" in events, text
    assert "shutdown_timeout" not in events, text
    # Disconnected: no Bayeux session of this run is left at the server.
    assert set(deployment.emu.cometd.sessions) <= sessions_before
    return lines


def assert_every_line_is_the_tasks(task: Task) -> None:
    """Every log line carries the ECS task's ARN, cluster and family, and no traceback."""
    text = task.log.read_text()
    assert "Traceback" not in text, text
    lines = task.lines()
    assert lines, text
    for line in lines:
        assert {key: line.get(key) for key in LOG_FIELDS} == LOG_FIELDS, line


# -- the image itself -------------------------------------------------------------------------


def test_the_image_runs_sfstream_as_a_task_definition_expects(mode: Mode) -> None:
    if mode.name != "image":
        pytest.skip(f"no image to inspect: {mode.reason}")
    assert mode.image is not None
    config = mode.image["Config"]
    assert config["Entrypoint"] == ["sfstream", "run"]
    assert config.get("StopSignal") == "SIGTERM"
    uid, gid = image_user(mode)
    assert uid != 0
    assert gid != 0
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["SFSTREAM_CONFIG"] == "/etc/sfstream/sfstream.yaml"
    assert env["SFSTREAM_OBSERVABILITY__METRICS_PORT"] == "9464"
    assert "9464/tcp" in config.get("ExposedPorts", {})
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    health = mode.image.get("Healthcheck") or config.get("Healthcheck")
    assert health is not None, "HEALTHCHECK lost: the image must be in the Docker format"
    assert health["Test"] == ["CMD", "sfstream", "healthcheck", "--quiet"]
    # The extras a Fargate task needs are installed, and the image's user cannot write
    # where the code is.
    probe = (
        "import os, psycopg, boto3, prometheus_client, opentelemetry.sdk, "
        "opentelemetry.exporter.otlp.proto.http, sfstream; "
        "print(os.getuid(), os.access(sfstream.__file__, os.W_OK), sfstream.__version__)"
    )
    done = _podman(
        "run",
        "--rm",
        "--network",
        "host",
        "--health-interval",
        "disable",
        "--entrypoint",
        "python",
        IMAGE,
        "-c",
        probe,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [str(uid), "False", __version__]


def _podman(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(PODMAN), *args], capture_output=True, text=True, timeout=120, check=False
    )


# -- one task ---------------------------------------------------------------------------------


async def test_a_task_starts_becomes_ready_streams_and_drains_on_sigterm(
    deployment: Deployment, mode: Mode
) -> None:
    emu = deployment.emu
    for number in range(10):
        publish_one(emu, random.Random(number), number)
    task = deployment.task()
    await task.start()
    body = await deployment.ready(task)
    assert body["status"] == "ready"
    assert await task.healthcheck() == 0
    # Exec form: the connector itself is PID 1 of the container (of its PID namespace).
    if mode.name == "image" or mode.namespaced:
        assert await task.namespace_pid() == 1
    for number in range(10, 40):
        publish_one(emu, random.Random(number), number)
    want = published(emu)
    async with asyncio.timeout(60):
        while sink_replay_ids(deployment.sink) != want:
            assert task.process is not None
            assert task.process.returncode is None, task.log.read_text()
            await asyncio.sleep(0.05)
    sessions = set(emu.cometd.sessions)
    code, seconds = await task.stop()
    sessions -= set(emu.cometd.sessions)
    assert sessions, "the run had a Bayeux session"
    assert_drained(deployment, task, code, seconds, set())
    assert_every_line_is_the_tasks(task)
    assert await deployment.checkpoints() == {stream: ids[-1] for stream, ids in want.items()}
    # Nothing answers once the task is gone.
    assert await task.healthcheck() != 0


async def test_sigint_stops_a_task_cleanly_too(deployment: Deployment, mode: Mode) -> None:
    task = deployment.task()
    await task.start()
    await deployment.ready(task)
    if mode.name == "image" or mode.namespaced:
        assert await task.namespace_pid() == 1
    await task.signal(signal.SIGINT)
    code = await task.wait()
    assert code == 0, task.log.read_text()
    events = [line["event"] for line in task.lines()]
    assert "stopping" in events
    assert "run_stopped" in events


# -- twenty stops and kills -------------------------------------------------------------------


def _plan(rng: random.Random) -> Iterator[tuple[str, float, dict[str, int]]]:
    """(how, seconds after the run's first log line, batch settings) for each cycle: as many
    SIGTERMs as SIGKILLs, shuffled."""
    ways = ["SIGTERM", "SIGKILL"] * (CYCLES // 2)
    rng.shuffle(ways)
    for how in ways:
        batch = {
            "max_records": rng.choice([1, 7, 50, 500]),
            "max_wait_ms": rng.choice([0, 5, 50]),
        }
        yield how, rng.uniform(0.0, 3.0), batch


@pytest.mark.slow
@pytest.mark.timeout(400)
async def test_twenty_stops_and_kills_at_random_moments_lose_and_repeat_nothing(
    deployment: Deployment, mode: Mode
) -> None:
    emu = deployment.emu
    rng = random.Random(SEED)
    publisher_rng = random.Random(SEED + 1)
    done = asyncio.Event()
    count = 0

    async def publish() -> None:
        nonlocal count
        while not done.is_set():
            for _ in range(publisher_rng.randint(1, 4)):
                publish_one(emu, publisher_rng, count)
                count += 1
            await asyncio.sleep(0.05)

    publisher = asyncio.create_task(publish())
    outcomes: list[str] = []
    try:
        for how, after_s, batch in _plan(rng):
            task = deployment.task(batch)
            sessions = set(emu.cometd.sessions)
            await task.start()
            await task.logged()  # its signal handlers are in place from the first line on
            await asyncio.sleep(after_s)
            if how == "SIGKILL":
                assert await task.kill() in kill_codes(mode), task.log.read_text()
                outcomes.append("killed")
                continue
            code, seconds = await task.stop()
            lines = assert_drained(deployment, task, code, seconds, sessions)
            assert_every_line_is_the_tasks(task)
            events = {line["event"] for line in lines}
            outcomes.append("drained" if "run_started" in events else "stopped before start")
            if "run_started" in events:
                # Flushed and committed: the checkpoints are at the sink's last records.
                held = {s: ids[-1] for s, ids in sink_replay_ids(deployment.sink).items() if ids}
                assert await deployment.checkpoints() == held, task.log.read_text()
    finally:
        done.set()
        await publisher

    # The last task catches up with everything published, and stops.
    task = deployment.task()
    await task.start()
    await deployment.ready(task)
    want = published(emu)
    async with asyncio.timeout(120):
        while {s: sorted(set(ids)) for s, ids in sink_replay_ids(deployment.sink).items()} != want:
            assert task.process is not None
            assert task.process.returncode is None, task.log.read_text()
            await asyncio.sleep(0.1)
    code, seconds = await task.stop()
    assert code == 0, task.log.read_text()
    assert seconds < STOP_TIMEOUT_S

    # The audit.
    assert outcomes.count("killed") == CYCLES // 2
    assert "drained" in outcomes
    assert sum(len(ids) for ids in want.values()) == count
    assert all(want.values())
    data = deployment.sink.read_bytes()
    assert data.endswith(b"\n")  # a torn tail of a killed run was repaired
    # Every published event exactly once, in order: nothing lost, nothing repeated.
    assert sink_replay_ids(deployment.sink) == want
    assert await deployment.checkpoints() == {stream: ids[-1] for stream, ids in want.items()}
    for run in deployment.tasks:
        text = run.log.read_text()
        assert "Traceback" not in text, text
        assert all(line.get("ecs_task_arn") == LOG_FIELDS["ecs_task_arn"] for line in run.lines())
