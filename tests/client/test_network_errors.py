"""Network failures read as their cause and remedy, the same at every HTTP call site.

Every failure is real: a closed port, a server that accepts and never answers, one that hangs
up, a TLS server with a self-signed certificate (made with openssl here), a TLS client
talking to a plain HTTP port, a host name under `.invalid` (which never resolves). The token
endpoint, the REST client and the streaming client each meet them.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import OAuthCredentials, TokenProvider
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import SfStreamError, TerminalError, TransportError
from sfstream.salesforce.rest import RestClient
from tests.runners.process import start_run

CLASS_NAMES = ("ClientConnectorError", "ClientConnectorDNSError", "TimeoutError", "SSLError")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Servers:
    """URLs of misbehaving servers, each of them real."""

    refused: str
    silent: str
    hangs_up: str
    self_signed: str
    plain_http_port: str
    unresolvable: str = "https://nonexistent.invalid"


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a self-signed certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def servers(certificate: tuple[Path, Path]) -> AsyncIterator[Servers]:
    held: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)  # accepted, read, never answered

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.close()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
        await writer.drain()
        writer.close()

    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(*certificate)
    started = [
        await asyncio.start_server(silent, "127.0.0.1", 0),
        await asyncio.start_server(hang_up, "127.0.0.1", 0),
        await asyncio.start_server(answer, "127.0.0.1", 0, ssl=tls),
        await asyncio.start_server(answer, "127.0.0.1", 0),
    ]
    ports = [server.sockets[0].getsockname()[1] for server in started]
    try:
        yield Servers(
            refused=f"http://127.0.0.1:{free_port()}",
            silent=f"http://127.0.0.1:{ports[0]}",
            hangs_up=f"http://127.0.0.1:{ports[1]}",
            self_signed=f"https://127.0.0.1:{ports[2]}",
            plain_http_port=f"https://127.0.0.1:{ports[3]}",
        )
    finally:
        for writer in held:
            writer.close()
        for server in started:
            server.close()


def credentials(login_url: str) -> OAuthCredentials:
    return OAuthCredentials(
        login_url=login_url,
        client_id="key",
        client_secret=SecretStr("secret-value"),
        refresh_token=SecretStr("refresh-value"),
    )


@pytest.fixture
async def token_endpoint() -> AsyncIterator[Any]:
    """A real token endpoint that sends clients to an instance URL of the test's choosing."""
    instance: dict[str, str] = {}

    async def token(request: web.Request) -> web.Response:
        return web.json_response(
            {"access_token": "00Dxx!token-value", "instance_url": instance["url"]}
        )

    app = web.Application()
    app.router.add_post("/services/oauth2/token", token)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()

    def login_url_for(instance_url: str) -> str:
        instance["url"] = instance_url
        return f"http://127.0.0.1:{port}"

    try:
        yield login_url_for
    finally:
        await runner.cleanup()


def expected(servers: Servers) -> Iterator[tuple[str, str, str, bool]]:
    """(case, URL, the words the message must hold, retryable)."""
    refused_port = servers.refused.rsplit(":", 1)[1]
    yield ("refused", servers.refused, f"cannot connect to 127.0.0.1:{refused_port} "
           "(connection refused)", True)  # fmt: skip
    yield (
        "dns",
        servers.unresolvable,
        "DNS lookup of nonexistent.invalid failed (name not known)",
        True,
    )
    yield ("silent", servers.silent, "no answer from 127.0.0.1 within 1 s", True)
    yield (
        "hangs up",
        servers.hangs_up,
        "the connection to 127.0.0.1 was closed before the answer (check proxies/firewalls)",
        True,
    )
    yield (
        "self-signed",
        servers.self_signed,
        "the certificate of 127.0.0.1 is not trusted (self-signed or unknown CA); "
        "set SSL_CERT_FILE to your CA bundle",
        False,
    )
    yield (
        "TLS to plain HTTP",
        servers.plain_http_port,
        "TLS handshake with 127.0.0.1 failed: wrong version number",
        True,
    )


def assert_reads_well(error: SfStreamError, words: str, retryable: bool) -> None:
    text = str(error)
    assert words in text, text
    assert not any(name in text for name in CLASS_NAMES), text
    assert error.retryable is retryable
    assert isinstance(error, TransportError if retryable else TerminalError)


async def test_the_token_endpoint_failures_name_cause_and_remedy(servers: Servers) -> None:
    async with aiohttp.ClientSession() as http:
        for case, url, words, retryable in expected(servers):
            provider = TokenProvider(credentials(url), http, timeout_s=1)
            with pytest.raises(SfStreamError) as info:
                await provider.token()
            assert str(info.value).startswith(
                f"token request to {url}/services/oauth2/token failed: "
            ), case
            assert_reads_well(info.value, words, retryable)


async def test_rest_failures_name_cause_and_remedy(servers: Servers, token_endpoint: Any) -> None:
    async with aiohttp.ClientSession() as http:
        for case, url, words, retryable in expected(servers):
            tokens = TokenProvider(credentials(token_endpoint(url)), http, timeout_s=5)
            rest = RestClient(http, tokens, timeout_s=1)
            with pytest.raises(SfStreamError) as info:
                await rest.describe_global()
            assert str(info.value).startswith("GET sobjects/ failed: "), case
            assert_reads_well(info.value, words, retryable)


async def test_streaming_failures_name_cause_and_remedy(
    servers: Servers, token_endpoint: Any
) -> None:
    settings = ClientSettings(
        backoff_base_s=0.05, backoff_cap_s=0.1, request_timeout_s=1.0, network_margin_s=1.0
    )
    for case, url, words, retryable in expected(servers):
        client = StreamingClient(credentials(token_endpoint(url)), settings)
        with capture_logs() as logs:
            async with client:
                if retryable:
                    # The client keeps trying; each attempt says why it failed.
                    async with asyncio.timeout(10):
                        while not any(e["event"] == "reconnecting" for e in logs):
                            await asyncio.sleep(0.05)
                    (first, *_) = [e for e in logs if e["event"] == "reconnecting"]
                    assert first["error"].startswith("/meta/handshake failed: "), case
                    assert words in first["error"], (case, first)
                    assert not any(name in first["error"] for name in CLASS_NAMES), first
                else:
                    # A certificate nobody trusts will not become trusted: the client ends.
                    with pytest.raises(TerminalError) as info:
                        async with asyncio.timeout(10):
                            await client.subscribe("/event/Order_Placed__e", -1)
                    assert_reads_well(info.value, words, retryable)


async def test_a_certificate_for_another_name_is_terminal(
    servers: Servers, certificate: tuple[Path, Path]
) -> None:
    trusting = ssl.create_default_context(cafile=str(certificate[0]))
    port = servers.self_signed.rsplit(":", 1)[1]
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusting)) as http:
        provider = TokenProvider(credentials(f"https://localhost:{port}"), http, timeout_s=5)
        with pytest.raises(TerminalError) as info:
            await provider.token()
    assert "the certificate of localhost is not valid for localhost" in str(info.value)
    assert not info.value.retryable


# -- as the operator sees them -----------------------------------------------------------------


def write_config(tmp_path: Path, login_url: str, **runtime: Any) -> Path:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("SF_CLIENT_SECRET=secret-value\nSF_REFRESH_TOKEN=refresh-value\n")
    secrets.chmod(0o600)
    document = {
        "salesforce": {
            "login_url": login_url,
            "client_id": "key",
            "client_secret": "${secret:SF_CLIENT_SECRET}",
            "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        },
        "secrets": {"backend": "file", "file": "secrets.env"},
        "streams": [{"channel": "/data/AccountChangeEvent"}],
        "state": {"path": "state.db"},
        "sink": {"type": "file", "path": "records.jsonl"},
        "logging": {"format": "json"},
        "runtime": {"summary_interval_s": 3600, **runtime},
    }
    path = tmp_path / "sfstream.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def log_lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [orjson.loads(line) for line in log.read_bytes().splitlines() if line.strip()]


async def sfstream(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "sfstream.cli",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=None if env is None else {**os.environ, **env},
    )
    async with asyncio.timeout(60):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


async def test_run_gives_up_at_once_on_an_untrusted_certificate(
    servers: Servers, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    process = await start_run(write_config(tmp_path, servers.self_signed), log)
    async with asyncio.timeout(30):
        code = await process.wait()
    assert code == 1
    lines = log_lines(log)
    assert "startup_retry" not in [line["event"] for line in lines]
    (failed,) = [line for line in lines if line["event"] == "run_failed"]
    assert failed["error"] == (
        f"token request to {servers.self_signed}/services/oauth2/token failed: the certificate "
        "of 127.0.0.1 is not trusted (self-signed or unknown CA); set SSL_CERT_FILE to your CA "
        "bundle"
    )


async def test_check_names_the_certificate_and_its_remedy_works(
    servers: Servers, certificate: tuple[Path, Path], tmp_path: Path
) -> None:
    config = str(write_config(tmp_path, servers.self_signed))
    code, out, _ = await sfstream("check", "--config", config)
    assert code == 1
    assert (
        "FAIL  login: token request to "
        f"{servers.self_signed}/services/oauth2/token failed: the certificate of 127.0.0.1 is "
        "not trusted (self-signed or unknown CA); set SSL_CERT_FILE to your CA bundle"
    ) in out.splitlines()
    # Following the advice gets past TLS: this server answers `{}`, which is no token.
    code, out, _ = await sfstream(
        "check", "--config", config, env={"SSL_CERT_FILE": str(certificate[0])}
    )
    assert code == 1
    assert "FAIL  login: the token response lacks access_token or instance_url" in out


async def test_run_retries_a_refused_connection_and_says_so(
    servers: Servers, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    process = await start_run(write_config(tmp_path, servers.refused), log)
    try:
        async with asyncio.timeout(30):
            while not [line for line in log_lines(log) if line["event"] == "startup_retry"]:
                await asyncio.sleep(0.1)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    retry = next(line for line in log_lines(log) if line["event"] == "startup_retry")
    port = servers.refused.rsplit(":", 1)[1]
    assert retry["error"] == (
        f"token request to {servers.refused}/services/oauth2/token failed: cannot connect to "
        f"127.0.0.1:{port} (connection refused)"
    )


async def test_a_long_wait_at_start_up_says_what_it_waits_for(
    servers: Servers, tmp_path: Path
) -> None:
    log = tmp_path / "run.log"
    process = await start_run(write_config(tmp_path, servers.silent), log)
    try:
        async with asyncio.timeout(60):
            while not [line for line in log_lines(log) if line["event"] == "startup_retry"]:
                assert process.returncode is None, log_lines(log)
                await asyncio.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            await process.wait()
    lines = log_lines(log)
    first_retry = next(i for i, line in enumerate(lines) if line["event"] == "startup_retry")
    waits = [line for line in lines[:first_retry] if line["event"] == "waiting"]
    # After 10 s and 20 s, then the request's 30 s are up: no line more.
    assert [(w["on"], w["for_s"]) for w in waits] == [
        ("token endpoint 127.0.0.1", 10),
        ("token endpoint 127.0.0.1", 20),
    ]
    assert lines[first_retry]["error"] == (
        f"token request to {servers.silent}/services/oauth2/token failed: no answer from "
        "127.0.0.1 within 30 s"
    )
