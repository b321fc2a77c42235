"""Several `sfstream run` workers on one shared state store (PostgreSQL, and DynamoDB on
moto's server): one owner per stream.

Each worker is a real subprocess with its own file sink; the emulator runs in the test's
event loop and journals every subscription and delivery. The audits read the sinks, the
emulator's journal and the store's lease table.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import signal
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
import yaml
from psycopg import sql

from sfstream.engine.config import Config
from sfstream.runners.wiring import open_state
from sfstream.state import DynamoDbStateStore
from sfstream.state.base import Lease, LeaseStore, StateStore
from sfstream_emulator import Emulator, EmulatorSettings
from tests.aws import Aws
from tests.observability.test_metrics import _get, scrape
from tests.runners.process import start_run
from tests.state.test_postgres import DSN

CHANNELS = {
    "/data/AccountChangeEvent": "sf.event.account_changes",
    "/data/ContactChangeEvent": "sf.event.contact_changes",
    "/data/OpportunityChangeEvent": "sf.event.opportunity_changes",
    "/data/Employee__ChangeEvent": "sf.event.employee_changes",
    "/event/Order_Placed__e": "sf.event.order_placed",
    "/event/Low_Ink__e": "sf.event.low_ink",
    "/data/SalesEvents__chn": "sf.event.sales_events_channel",
    "/data/ChangeEvents": "sf.event.all_changes",
}
SOURCES = {
    "/data/AccountChangeEvent": "Account",
    "/data/ContactChangeEvent": "Contact",
    "/data/OpportunityChangeEvent": "Opportunity",
    "/data/Employee__ChangeEvent": "Employee__c",
    "/event/Order_Placed__e": "Order_Placed__e",
    "/event/Low_Ink__e": "Low_Ink__e",
}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, seed=16)


@dataclass
class Shared:
    """The shared state store of a test: its config section, and a way to read it."""

    state: dict[str, Any]

    def store(self) -> StateStore:
        return open_state(Config.model_validate(_minimal(self.state)))


def _minimal(state: dict[str, Any]) -> dict[str, Any]:
    return {
        "salesforce": {"client_id": "x", "client_secret": "x", "refresh_token": "x"},
        "streams": [{"channel": "/data/AccountChangeEvent"}],
        "state": state,
    }


SHARED = ["postgres", "dynamodb"]
"""The shared stores, where leases are the default."""


@pytest.fixture(params=[*SHARED, "sqlite"])
async def shared(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Shared]:
    if request.param == "sqlite":
        # Several processes of one host on one file: leases are asked for.
        path = tmp_path / "shared" / "state.db"
        yield Shared({"backend": "sqlite", "path": str(path), "coordination": "leases"})
        return
    if request.param == "dynamodb":
        aws: Aws = request.getfixturevalue("aws")
        name = aws.name("sfstream-leases")
        backend = Shared(
            {
                "backend": "dynamodb",
                "table": name,
                "region": aws.region,
                "endpoint_url": aws.endpoint,
            }
        )
        store = backend.store()
        assert isinstance(store, DynamoDbStateStore)
        try:
            await store.create_table()
        finally:
            await store.close()
        yield backend
        return
    name = f"sfstream_leases_{uuid.uuid4().hex[:10]}"
    yield Shared({"backend": "postgres", "dsn": DSN, "table": name})
    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as admin:
        for suffix in ("", "_overrides", "_leases", "_members", "_schemas"):
            await admin.execute(
                sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(name + suffix))
            )


@dataclass
class Worker:
    """One worker's directory, config and process incarnations."""

    name: str
    directory: Path
    process: asyncio.subprocess.Process | None = None
    incarnations: list[tuple[float, float | None]] = field(default_factory=list)
    """(started, ended) wall-clock times of each process."""
    paused: list[tuple[float, float]] = field(default_factory=list)

    @property
    def log(self) -> Path:
        return self.directory / "run.log"

    @property
    def sink(self) -> Path:
        return self.directory / "records.jsonl"

    async def start(self) -> None:
        self.process = await start_run(self.directory / "sfstream.yaml", self.log)
        self.incarnations.append((time.time(), None))

    def _ended(self) -> None:
        began, _ = self.incarnations[-1]
        self.incarnations[-1] = (began, time.time())

    async def kill(self) -> None:
        assert self.process is not None
        self.process.kill()
        self._ended()
        await self.process.wait()
        self.process = None

    async def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(60):
            code = await self.process.wait()
        self._ended()
        self.process = None
        return code

    def lines(self) -> Iterator[dict[str, Any]]:
        if self.log.exists():
            for line in self.log.read_bytes().splitlines():
                with contextlib.suppress(orjson.JSONDecodeError):
                    yield orjson.loads(line)

    def workers(self) -> set[str]:
        """The worker ids its processes used."""
        return {line["worker"] for line in self.lines() if line.get("event") == "leases_started"}

    def clients(self) -> set[str]:
        """The Bayeux client ids its processes had."""
        return {line["client_id"] for line in self.lines() if line.get("event") == "handshake"}

    def records(self) -> list[dict[str, Any]]:
        if not self.sink.exists():
            return []
        found = []
        for line in self.sink.read_bytes().splitlines():
            message = orjson.loads(line)
            if message["type"] == "RECORD":
                found.append(message)
        return found


def make_worker(emu: Emulator, root: Path, name: str, shared: Shared, **overrides: Any) -> Worker:
    directory = root / name
    directory.mkdir()
    creds = emu.credentials
    secrets = directory / "secrets.env"
    secrets.write_text(
        f"SF_CLIENT_SECRET={creds['client_secret']}\nSF_REFRESH_TOKEN={creds['refresh_token']}\n"
    )
    secrets.chmod(0o600)
    document: dict[str, Any] = {
        "salesforce": {
            "login_url": emu.url,
            "client_id": creds["client_id"],
            "client_secret": "${secret:SF_CLIENT_SECRET}",
            "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        },
        "secrets": {"backend": "file", "file": "secrets.env"},
        "streams": [{"channel": c, "initial_replay": "earliest"} for c in CHANNELS],
        "state": dict(shared.state),
        "sink": {"type": "file", "path": "records.jsonl"},
        "batch": {"max_records": 200, "max_wait_ms": 50},
        "runtime": {"summary_interval_s": 3600, "shutdown_timeout_s": 20},
    }
    for section, values in overrides.items():
        if isinstance(values, dict):
            document[section] = {**document.get(section, {}), **values}
        else:
            document[section] = values
    (directory / "sfstream.yaml").write_text(yaml.safe_dump(document))
    return Worker(name, directory)


def publish(emu: Emulator, count: int) -> None:
    """`count` events on each channel (the combined channels get theirs from the others)."""
    for source in SOURCES.values():
        emu.generate(source, count)


def published(emu: Emulator) -> dict[str, set[int]]:
    return {
        stream: {m["data"]["event"]["replayId"] for m in emu.published(channel)}
        for channel, stream in CHANNELS.items()
    }


def written(workers: list[Worker]) -> dict[str, set[int]]:
    found: dict[str, set[int]] = {stream: set() for stream in CHANNELS.values()}
    for worker in workers:
        for record in worker.records():
            found[record["stream"]].add(record["replay_id"])
    return found


async def leases(shared: Shared) -> dict[str, Lease]:
    store = shared.store()
    try:
        assert isinstance(store, LeaseStore)
        return await store.leases()
    finally:
        await store.close()


async def wait_for(predicate: Any, timeout_s: float, what: str) -> float:
    """Poll an async or plain predicate; the time it took."""
    began = time.monotonic()
    async with asyncio.timeout(timeout_s):
        while True:
            result = predicate()
            if asyncio.iscoroutine(result):
                result = await result
            if result:
                return time.monotonic() - began
            await asyncio.sleep(0.1)
    raise AssertionError(what)  # pragma: no cover - the timeout raises first


def _at(record: dict[str, Any]) -> float:
    return datetime.fromisoformat(record["emitted_at"].replace("Z", "+00:00")).timestamp()


def assert_one_writer_at_a_time(workers: list[Worker]) -> None:
    """From the sinks: for each stream, the records each worker emitted form time runs that
    never interleave with another worker's."""
    by_stream: dict[str, list[tuple[float, str]]] = {}
    for worker in workers:
        for record in worker.records():
            by_stream.setdefault(record["stream"], []).append((_at(record), worker.name))
    for stream, emitted in by_stream.items():
        emitted.sort()
        runs: list[tuple[str, float, float]] = []
        for at, name in emitted:
            if runs and runs[-1][0] == name:
                runs[-1] = (name, runs[-1][1], at)
            else:
                runs.append((name, at, at))
        for before, after in itertools.pairwise(runs):
            assert before[2] <= after[1], f"{stream}: {before} overlaps {after}"


def assert_journal_exclusive(emu: Emulator, workers: list[Worker], *, grace_s: float = 2.0) -> int:
    """From the emulator's journal: no channel had subscribers in two running workers at
    once. A process counts as running from its start until it was killed or stopped, and
    again from SIGCONT; a stopped process's session stays subscribed until it wakes up and
    drops the stream, which may take `grace_s`. Returns the subscription intervals seen."""
    journal = emu.journal()
    first_seen: dict[str, float] = {}
    for entry in journal:
        first_seen.setdefault(entry["client_id"], entry["at"])
    now = time.time()
    # Each client belongs to one process: the incarnation of its worker running when the
    # client first subscribed.
    owner_of: dict[str, tuple[Worker, int]] = {}
    for worker in workers:
        for client in worker.clients():
            seen = first_seen.get(client)
            if seen is None:
                continue
            for index, (began, ended) in enumerate(worker.incarnations):
                if began <= seen <= (ended if ended is not None else now):
                    owner_of[client] = (worker, index)
    intervals: list[tuple[str, tuple[Worker, int], float, float]] = []
    open_since: dict[tuple[str, str], float] = {}
    for entry in journal:
        client = entry["client_id"]
        if entry["action"] == "subscribe":
            open_since.setdefault((client, entry["channel"]), entry["at"])
        elif entry["action"] == "unsubscribe":
            key = (client, entry["channel"])
            if key in open_since:
                began = open_since.pop(key)
                intervals.append((entry["channel"], owner_of[client], began, entry["at"]))
        elif entry["action"] == "gone":
            ended = [k for k in open_since if k[0] == client]
            intervals.extend(
                (k[1], owner_of[client], open_since.pop(k), entry["at"]) for k in ended
            )
    for (client, channel), began in open_since.items():
        intervals.append((channel, owner_of[client], began, now))

    def running(process: tuple[Worker, int], start: float, end: float) -> list[tuple[float, float]]:
        """The parts of [start, end] in which the process ran and was not paused."""
        worker, index = process
        began, ended = worker.incarnations[index]
        low, high = max(start, began), min(end, ended if ended is not None else now)
        parts = [(low, high)] if low < high else []
        for stopped, resumed in worker.paused:
            cut = []
            for low, high in parts:
                if high <= stopped or low >= resumed + grace_s:
                    cut.append((low, high))
                    continue
                if low < stopped:
                    cut.append((low, stopped))
                if high > resumed + grace_s:
                    cut.append((resumed + grace_s, high))
            parts = cut
        return parts

    origin = min((entry["at"] for entry in journal), default=now)
    for index, (channel, process, began, ended) in enumerate(intervals):
        for other_channel, other, other_began, other_ended in intervals[index + 1 :]:
            if other_channel != channel or other[0] is process[0]:
                continue
            for low, high in running(process, began, ended):
                for other_low, other_high in running(other, other_began, other_ended):
                    overlap = min(high, other_high) - max(low, other_low)
                    assert overlap <= 0.0, (
                        f"{channel}: {process[0].name}#{process[1]} "
                        f"[{began - origin:.3f}, {ended - origin:.3f}] and "
                        f"{other[0].name}#{other[1]} "
                        f"[{other_began - origin:.3f}, {other_ended - origin:.3f}] were both "
                        f"subscribed and running for {overlap:.3f} s"
                    )
    return len(intervals)


def unwritten(emu: Emulator, worker: Worker, streams: set[str]) -> set[tuple[str, int]]:
    """The events of `streams` the emulator delivered to the worker over a second ago that
    its sink does not hold: received, and waiting in its open batch."""
    clients = worker.clients()
    before = time.time() - 1.0
    delivered = {
        (CHANNELS[entry["channel"]], replay_id)
        for entry in emu.journal()
        if entry["action"] == "deliver"
        and entry["client_id"] in clients
        and entry["at"] < before
        and CHANNELS.get(entry["channel"]) in streams
        for replay_id in entry["replay_ids"]
    }
    return delivered - {(r["stream"], r["replay_id"]) for r in worker.records()}


async def stop_all(workers: list[Worker]) -> None:
    for worker in workers:
        if worker.process is not None:
            assert await worker.terminate() == 0, worker.log.read_text()[-3000:]


@pytest.mark.parametrize("shared", SHARED, indirect=True)
async def test_a_second_worker_never_writes_what_the_first_owns_and_takes_over_after_sigkill(
    sfstream_emulator: Emulator, tmp_path: Path, shared: Shared
) -> None:
    emu = sfstream_emulator
    first = make_worker(emu, tmp_path, "first", shared)
    second = make_worker(emu, tmp_path, "second", shared)
    workers = [first, second]
    publish(emu, 5)
    try:
        await first.start()
        await wait_for(
            lambda: {r["stream"] for r in first.records()} == set(CHANNELS.values()),
            60,
            "the first worker did not take every stream",
        )
        await second.start()
        # Balanced: each holds half the streams, and nobody else holds any.
        ids = {"first": set[str](), "second": set[str]()}

        async def balanced() -> bool:
            ids["first"], ids["second"] = first.workers(), second.workers()
            found = await leases(shared)
            owners = [lease.owner for lease in found.values() if lease.held]
            return len(owners) == len(CHANNELS) and all(
                owners.count(worker) == len(CHANNELS) // 2
                for worker in ids["first"] | ids["second"]
            )

        await wait_for(balanced, 60, "the workers did not share the streams")
        for round_ in range(5):
            publish(emu, 4)
            await asyncio.sleep(0.3 + round_ * 0.1)
        await wait_for(
            lambda: all(published(emu)[s] <= written(workers)[s] for s in CHANNELS.values()),
            60,
            "events missing before the kill",
        )
        assert_one_writer_at_a_time(workers)
        # SIGKILL the first: its streams move to the second within the TTL plus one renewal.
        killed_at = time.monotonic()
        await first.kill()
        publish(emu, 5)
        (worker_id,) = ids["second"]

        async def all_owned() -> bool:
            found = await leases(shared)
            return all(lease.held and lease.owner == worker_id for lease in found.values()) and len(
                found
            ) == len(CHANNELS)

        await wait_for(all_owned, 60, "the second worker did not take over")
        took_s = time.monotonic() - killed_at
        assert took_s <= 30 + 10 + 3, took_s  # TTL, one renewal interval, the poll
        publish(emu, 5)
        await wait_for(
            lambda: all(published(emu)[s] <= written(workers)[s] for s in CHANNELS.values()),
            60,
            "events lost across the takeover",
        )
        takeovers = [line for line in second.lines() if line.get("event") == "lease_taken_over"]
        assert len(takeovers) == len(CHANNELS) // 2
        await stop_all(workers)
        assert_one_writer_at_a_time(workers)
        assert_journal_exclusive(emu, workers)
    finally:
        for worker in workers:
            if worker.process is not None:
                await worker.kill()


async def test_sigterm_hands_the_streams_over_within_five_seconds(
    sfstream_emulator: Emulator, tmp_path: Path, shared: Shared
) -> None:
    emu = sfstream_emulator
    metered = {"metrics_port": 0, "metrics_host": "127.0.0.1"}
    first = make_worker(emu, tmp_path, "first", shared, observability=metered)
    second = make_worker(emu, tmp_path, "second", shared, observability=metered)
    workers = [first, second]
    publish(emu, 3)
    try:
        await first.start()
        await second.start()

        async def spread() -> bool:
            found = await leases(shared)
            owners = {lease.owner for lease in found.values() if lease.held}
            return len(found) == len(CHANNELS) and len(owners) == 2

        await wait_for(spread, 60, "the workers did not share the streams")

        async def streaming(worker: Worker) -> bool:
            """Every stream the worker holds a lease of is started (subscribed)."""
            ids = worker.workers()
            held = {s for s, lease in (await leases(shared)).items() if lease.owner in ids}
            started = {
                line["stream"] for line in worker.lines() if line["event"] == "stream_started"
            }
            return bool(held) and held <= started

        await wait_for(lambda: streaming(first), 30, "the first worker did not start its streams")
        (survivor,) = second.workers()
        stopped_at = time.monotonic()
        code = await first.terminate()
        assert code == 0

        async def handed_over() -> bool:
            found = await leases(shared)
            return all(lease.held and lease.owner == survivor for lease in found.values())

        await wait_for(handed_over, 30, "the streams were not handed over")
        assert time.monotonic() - stopped_at <= 5.0
        (port,) = {line["port"] for line in second.lines() if line["event"] == "metrics_endpoint"}
        samples = await scrape(port)
        assert samples[("sfstream_leases_held", ())] == len(CHANNELS)
        # A clean handover is no takeover.
        assert not [name for name, _ in samples if name == "sfstream_lease_takeovers_total"]
        released = [line for line in first.lines() if line.get("event") == "leases_released"]
        assert released, "the stopped worker did not release its leases"
        publish(emu, 3)
        await wait_for(
            lambda: all(published(emu)[s] <= written(workers)[s] for s in CHANNELS.values()),
            60,
            "events lost across the handover",
        )
        await stop_all(workers)
        assert_one_writer_at_a_time(workers)
    finally:
        for worker in workers:
            if worker.process is not None:
                await worker.kill()


@pytest.mark.timeout(360)
@pytest.mark.parametrize("shared", SHARED, indirect=True)
async def test_three_workers_eight_streams_kills_and_a_zombie(
    sfstream_emulator: Emulator, tmp_path: Path, shared: Shared
) -> None:
    """Random SIGKILLs and one SIGSTOP/SIGCONT over two minutes of traffic."""
    emu = sfstream_emulator
    rng = random.Random(1616)
    ttl = 6.0
    state = {"lease_ttl_s": ttl}
    workers = [
        make_worker(emu, tmp_path, "w1", shared, state=state),
        make_worker(emu, tmp_path, "w2", shared, state=state),
        # The zombie batches for long: it is paused with records it has not committed.
        make_worker(emu, tmp_path, "zombie", shared, state=state, batch={"max_wait_ms": 5000}),
    ]
    zombie = workers[2]
    running = True

    async def traffic() -> None:
        while running:
            publish(emu, 1)
            await asyncio.sleep(0.1)

    began = time.monotonic()
    publisher = asyncio.create_task(traffic())
    try:
        for worker in workers:
            await worker.start()

        async def held(count: int) -> bool:
            found = await leases(shared)
            return sum(1 for lease in found.values() if lease.held) == count

        await wait_for(lambda: held(len(CHANNELS)), 60, "the streams were not taken")
        # The zombie: paused for longer than the TTL while it owns streams, then resumed.
        await wait_for(lambda: bool(zombie.clients()), 30, "the zombie never connected")
        await asyncio.sleep(3)
        (zombie_id,) = zombie.workers()
        owned = {s for s, lease in (await leases(shared)).items() if lease.owner == zombie_id}
        assert owned, "the zombie owned nothing to lose"
        assert zombie.process is not None
        # Paused while it holds records it received but has not written (its open batch):
        # when it wakes up, committing them is its late, stale commit. Checked again once
        # it is frozen, since a batch may have gone out between the look and the signal.
        for _ in range(10):
            await wait_for(
                lambda: unwritten(emu, zombie, owned), 30, "the zombie held no open batch"
            )
            stopped = time.time()
            zombie.process.send_signal(signal.SIGSTOP)
            if unwritten(emu, zombie, owned):
                break
            zombie.process.send_signal(signal.SIGCONT)
            zombie.paused.append((stopped, time.time()))
        else:
            pytest.fail("the zombie was never paused with an open batch")
        await asyncio.sleep(ttl + 6)
        taken = await leases(shared)
        assert all(taken[s].owner != zombie_id for s in owned), "nobody took the zombie's"
        zombie.process.send_signal(signal.SIGCONT)
        zombie.paused.append((stopped, time.time()))
        # Random SIGKILLs of the two others, each restarted a moment later, until two
        # minutes of traffic have passed.
        while time.monotonic() - began < 120:
            await asyncio.sleep(rng.uniform(4, 9))
            victim = rng.choice(workers[:2])
            await victim.kill()
            await asyncio.sleep(rng.uniform(0.5, 3))
            await victim.start()
        await asyncio.sleep(ttl + 4)
        running = False
        await publisher
        expected = published(emu)
        await wait_for(
            lambda: all(expected[s] <= written(workers)[s] for s in CHANNELS.values()),
            90,
            "events lost",
        )
        await stop_all(workers)
    finally:
        running = False
        with contextlib.suppress(Exception):
            await publisher
        for worker in workers:
            if worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(signal.SIGCONT)
                await worker.kill()
    got = written(workers)
    for stream, ids in expected.items():
        assert ids <= got[stream], f"{stream}: {len(ids - got[stream])} events lost"
        assert len(ids) > 50, f"{stream}: too little traffic ({len(ids)})"
    assert_one_writer_at_a_time(workers)
    assert assert_journal_exclusive(emu, workers) > len(CHANNELS)
    # The zombie's late commit was refused, and the store says so.
    found = await leases(shared)
    refused = {s: lease for s, lease in found.items() if lease.refused}
    assert refused, "no commit was refused"
    assert {lease.refused_worker for lease in refused.values()} == {zombie_id}
    assert set(refused) <= owned
    fenced = [line for line in zombie.lines() if line.get("event") == "commit_fenced"]
    assert fenced, "the zombie did not log its refused commit"


async def test_a_worker_without_streams_waits_ready_and_takes_over(
    sfstream_emulator: Emulator, tmp_path: Path, shared: Shared
) -> None:
    emu = sfstream_emulator
    metered = {"metrics_port": 0, "metrics_host": "127.0.0.1"}
    one = [{"channel": "/event/Order_Placed__e", "initial_replay": "earliest"}]
    owner = make_worker(emu, tmp_path, "owner", shared, streams=one, observability=metered)
    idle = make_worker(emu, tmp_path, "idle", shared, streams=one, observability=metered)
    workers = [owner, idle]
    emu.generate("Order_Placed__e", 3)
    try:
        await owner.start()
        await wait_for(lambda: len(owner.records()) == 3, 60, "the owner wrote nothing")
        await idle.start()
        await wait_for(
            lambda: any(line["event"] == "metrics_endpoint" for line in idle.lines()),
            30,
            "the idle worker has no endpoint",
        )
        (port,) = {line["port"] for line in idle.lines() if line["event"] == "metrics_endpoint"}
        await asyncio.sleep(3)  # a poll or two: it stays without a stream
        assert idle.process is not None
        assert idle.process.returncode is None
        status, _ = await _get(port, "/readyz")
        assert status == 200
        samples = await scrape(port)
        assert samples[("sfstream_leases_held", ())] == 0
        assert idle.records() == []
        await owner.terminate()
        emu.generate("Order_Placed__e", 2)
        await wait_for(lambda: len(idle.records()) == 2, 30, "the idle worker did not take over")
        samples = await scrape(port)
        assert samples[("sfstream_leases_held", ())] == 1
        await stop_all(workers)
    finally:
        for worker in workers:
            if worker.process is not None:
                await worker.kill()
