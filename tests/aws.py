"""AWS APIs for the tests: moto in server mode, started as a subprocess on a free port.

A pytest plugin (`pytest_plugins = ["tests.aws"]` in tests/conftest.py), so that every test
directory can use its fixtures:

- `moto_server` (session): the endpoint URL (`http://127.0.0.1:PORT`) of one moto server,
  killed at the end of the session;
- `aws` (per test): sets dummy credentials and a region in the environment (subprocesses
  inherit them), never reading the machine's own AWS configuration, and returns an `Aws`
  with the endpoint and boto3 clients on it;
- `moto_server_with_iam` (session): a second server that checks every request against IAM
  policies (refusing with access denied as AWS does), with `identity(allow)` to make a user
  allowed some actions only.

Tests pass the endpoint to the code under test (`endpoint_url`, `AWS_ENDPOINT_URL`) and give
every secret and table a name of their own, since the server is shared by the session.

The server answers one request at a time. moto applies a DynamoDB transaction item by item
and undoes a cancelled one by restoring a copy of the whole table: two requests handled at
once could interleave, or the undo could erase the other's writes. DynamoDB itself isolates
each request (conditional writes and transactions are atomic), which is what the code under
test relies on and what serializing the requests gives.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REGION = "eu-west-1"
_START_TIMEOUT_S = 60.0

_SERVER = """
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


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _accepts(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def _start(log: Path, environ: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """Start a moto server; the process and its endpoint URL, once its port accepts."""
    for _ in range(3):
        port = _free_port()
        with log.open("ab") as output:
            process = subprocess.Popen(
                [sys.executable, "-c", _SERVER, str(port)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **environ, "MOTO_PORT": str(port)},
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while process.poll() is None and not _accepts(port):
            if time.monotonic() > deadline:
                _stop(process)
                pytest.fail(f"moto did not start within {_START_TIMEOUT_S:g} s: {log.read_text()}")
            time.sleep(0.05)
        if process.poll() is None:
            return process, f"http://127.0.0.1:{port}"
        # The port was taken between the probe and the start: try another one.
    pytest.fail(f"moto did not start: {log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The endpoint URL of a moto server (every AWS service on one port)."""
    process, endpoint = _start(tmp_path_factory.mktemp("moto") / "server.log", {})
    try:
        yield endpoint
    finally:
        _stop(process)


class IamServer:
    """A moto server that checks every request against IAM, as AWS does.

    `admin` holds the keys of a user allowed everything (for setting up); `identity`
    makes a user with the given policy and returns its keys.
    """

    def __init__(self, endpoint: str, admin: tuple[str, str]) -> None:
        self.endpoint = endpoint
        self.admin = admin

    def client(self, service: str, keys: tuple[str, str] | None = None) -> Any:
        import boto3

        key_id, secret = keys or self.admin
        return boto3.client(
            service,
            region_name=REGION,
            endpoint_url=self.endpoint,
            aws_access_key_id=key_id,
            aws_secret_access_key=secret,
        )

    def identity(self, allow: list[str]) -> tuple[str, str]:
        """Keys of a new user allowed the actions `allow` (`secretsmanager:GetSecretValue`)
        on every resource, and nothing else."""
        iam = self.client("iam")
        user = f"user-{uuid.uuid4().hex[:12]}"
        iam.create_user(UserName=user)
        if allow:
            policy = {
                "Version": "2012-10-17",
                "Statement": [{"Effect": "Allow", "Action": allow, "Resource": "*"}],
            }
            iam.put_user_policy(
                UserName=user, PolicyName="sfstream", PolicyDocument=json.dumps(policy)
            )
        key = iam.create_access_key(UserName=user)["AccessKey"]
        return str(key["AccessKeyId"]), str(key["SecretAccessKey"])


@pytest.fixture(scope="session")
def moto_server_with_iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[IamServer]:
    """A moto server that enforces IAM: only its first three requests (which make the
    administrator) go unchecked."""
    log = tmp_path_factory.mktemp("moto-iam") / "server.log"
    process, endpoint = _start(log, {"INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        import boto3

        iam = boto3.client(
            "iam",
            region_name=REGION,
            endpoint_url=endpoint,
            aws_access_key_id="bootstrap",
            aws_secret_access_key="bootstrap",
        )
        iam.create_user(UserName="admin")
        everything = {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}],
        }
        iam.put_user_policy(
            UserName="admin", PolicyName="all", PolicyDocument=json.dumps(everything)
        )
        key = iam.create_access_key(UserName="admin")["AccessKey"]
        yield IamServer(endpoint, (str(key["AccessKeyId"]), str(key["SecretAccessKey"])))
    finally:
        _stop(process)


class Aws:
    """The moto server of a test, with boto3 clients on it."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.region = REGION

    def client(self, service: str) -> Any:
        import boto3

        return boto3.client(service, region_name=self.region, endpoint_url=self.endpoint)

    @staticmethod
    def name(prefix: str) -> str:
        """A name of its own for a secret or a table (the server is shared)."""
        return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def aws(moto_server: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Aws:
    """Dummy credentials and a region in the environment; the machine's AWS files unread."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    missing = tmp_path / "no-aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(missing))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(missing))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return Aws(moto_server)
