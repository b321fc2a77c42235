"""`sfstream-emulator` (the emulator's own command) as a real subprocess."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from click.testing import CliRunner

from sfstream_emulator.cli import main

COMMAND = [sys.executable, "-m", "sfstream_emulator.cli"]


async def _run(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        stdout, stderr = await process.communicate()
    assert process.returncode is not None
    return process.returncode, stdout.decode(), stderr.decode()


class Running:
    def __init__(self, process: asyncio.subprocess.Process, banner: str) -> None:
        self.process = process
        self.banner = banner

    def value(self, label: str) -> str:
        match = re.search(rf"^\s+{label}\s+(\S+)$", self.banner, re.MULTILINE)
        assert match is not None, self.banner
        return match.group(1)


@pytest_asyncio.fixture
async def running() -> AsyncIterator[Running]:
    process = await asyncio.create_subprocess_exec(
        *COMMAND,
        "--port",
        "0",
        "--seed",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    lines = []
    try:
        async with asyncio.timeout(30):
            while True:
                line = (await process.stdout.readline()).decode()
                assert line, "the emulator exited before it was ready"
                lines.append(line)
                if line.startswith("Press Ctrl+C"):
                    break
        yield Running(process, "".join(lines))
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_emulator_serves_and_stops_on_sigterm(running: Running) -> None:
    match = re.search(r"listening on (http://localhost:(\d+))$", running.banner, re.MULTILINE)
    assert match is not None, running.banner
    url, port = match.group(1), int(match.group(2))
    assert port > 0
    assert running.value("login URL") == url
    assert running.value("CometD") == f"{url}/cometd/62.0"
    assert running.value("control API") == f"{url}/_emulator/v1/status"

    form = {
        "grant_type": "refresh_token",
        "client_id": running.value("client id"),
        "client_secret": running.value("client secret"),
        "refresh_token": running.value("refresh token"),
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/services/oauth2/token", data=form) as response,
    ):
        assert response.status == 200
        body = await response.json()
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == url
    assert body["access_token"]

    # The printed username and password work too.
    form = {
        "grant_type": "password",
        "client_id": running.value("client id"),
        "client_secret": running.value("client secret"),
        "username": running.value("username"),
        "password": running.value("password"),
    }
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}/services/oauth2/token", data=form) as response,
    ):
        assert response.status == 200

    # A second emulator cannot take the port: one line, exit 1.
    code, _, stderr = await _run("--port", str(port))
    assert code == 1
    assert stderr.splitlines() == [
        f"sfstream emulator: cannot listen on localhost:{port}: Address already in use"
    ]

    running.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        _, final = await running.process.communicate()
    assert running.process.returncode == 0
    assert "Traceback" not in final.decode()
    assert "stopped" in final.decode()


BAD_ORGS: dict[str, tuple[str | bytes | None, str]] = {
    "missing": (None, "cannot read org file"),
    "yaml": ("objects: [\n  - name: x\n", "is not valid YAML"),
    "list": ("- 1\n- 2\n", "mapping at the top level"),
    "unknown-key": ("nope: 1\n", "nope"),
    "bad-entity": ("change_events: [Nope]\n", "Nope"),
    "binary": (b"\xff\xfe\x00\x01", "org file"),
    "directory": ("", "cannot read org file"),
}


def _bad_org(tmp_path: Path, name: str) -> Path:
    content, _ = BAD_ORGS[name]
    path = tmp_path / f"{name}.yaml"
    if name == "directory":
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    return path


async def test_bad_org_file_in_a_subprocess(tmp_path: Path) -> None:
    path = _bad_org(tmp_path, "yaml")  # PyYAML's message spans several lines
    code, stdout, stderr = await _run("--port", "0", "--org", str(path))
    assert code == 2
    assert stdout == ""
    assert stderr.splitlines() == [
        f"sfstream emulator: {path} is not valid YAML: while parsing a flow node did not find "
        'expected node content in "<unicode string>", line 2, column 3'
    ]


@pytest.mark.parametrize("name", list(BAD_ORGS))
def test_bad_org_files(tmp_path: Path, name: str) -> None:
    path = _bad_org(tmp_path, name)
    result = CliRunner().invoke(main, ["--port", "0", "--org", str(path)])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit)
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sfstream emulator: ")
    assert str(path) in lines[0]
    assert BAD_ORGS[name][1] in lines[0]
    assert "Usage:" not in result.stderr
