"""A Fargate task as the certification suite starts it: the built image run by podman, or,
without podman or the image, the image's entry point (`sfstream run`) as a process.

Either way the connector is configured as a task definition configures it: the image's own
configuration file (`deploy/sfstream.yaml`, which leaves everything to the environment),
`SFSTREAM_*` variables, secrets in environment variables (what ECS fills from Secrets
Manager), and `ECS_CONTAINER_METADATA_URI_V4`. It is stopped as ECS stops a task: the stop
signal, then SIGKILL once the 30 s stopTimeout has passed.

The mode is chosen once per session (`launch_mode`): `SFSTREAM_CERTIFY_MODE=image` or
`process` forces one; `SFSTREAM_IMAGE` names the image (default `localhost/sfstream:latest`).
An image built from other sources than the working tree's (its `sfstream.source-digest`
label, see deploy/source-digest.sh) counts as missing. In image mode the container runs with
the host's network (it reaches the emulator on localhost), a read-only root file system, no
capabilities, and the task's directory mounted at /data. In process mode the entry point runs
as PID 1 of a new PID namespace where `unshare` allows it, so that it meets the kernel's rules
for PID 1 (a signal without a handler is dropped) as it does in a container.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

REPO: Final = Path(__file__).resolve().parents[3]
PODMAN: Final = REPO / "deploy" / "podman.sh"
IMAGE: Final = os.environ.get("SFSTREAM_IMAGE", "localhost/sfstream:latest")
IMAGE_CONFIG: Final = REPO / "deploy" / "sfstream.yaml"
"""The configuration file the image carries (at /etc/sfstream/sfstream.yaml)."""
STOP_TIMEOUT_S: Final = 30.0
"""ECS's default stopTimeout: SIGKILL this long after the stop signal."""
DATA: Final = "/data"
"""Where the task's directory is mounted in the container."""


@dataclass(frozen=True)
class Mode:
    """How tasks run: `image` or `process`, and why."""

    name: str
    reason: str
    image: dict[str, Any] | None = None
    """`podman image inspect` of the image, in image mode."""
    namespaced: bool = False
    """Process mode: the entry point runs as PID 1 of its own PID namespace."""


def _run(*args: str | Path, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in args], capture_output=True, text=True, timeout=timeout_s, check=False
    )


def _image_problem() -> tuple[str | None, dict[str, Any] | None]:
    """Why the image cannot be certified here (None: it can), and its inspection."""
    if shutil.which("podman") is None:
        return "podman is not installed (apt-get install podman buildah runc mmdebstrap)", None
    found = _run(PODMAN, "image", "inspect", IMAGE)
    if found.returncode != 0:
        return f"no image {IMAGE} (make image builds it)", None
    (inspected,) = orjson.loads(found.stdout)
    labels = (inspected.get("Config") or {}).get("Labels") or {}
    digest = _run(REPO / "deploy" / "source-digest.sh").stdout.strip()
    if labels.get("sfstream.source-digest") != digest:
        return f"the image {IMAGE} was built from other sources than these (make image)", None
    return None, inspected


def _namespaces_allowed() -> bool:
    if shutil.which("unshare") is None:
        return False
    try:
        done = _run("unshare", "--pid", "--fork", "--kill-child", "true", timeout_s=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@functools.cache
def launch_mode() -> Mode:
    """The session's mode (see the module)."""
    forced = os.environ.get("SFSTREAM_CERTIFY_MODE", "").strip().lower()
    if forced not in {"", "image", "process"}:
        raise ValueError(f"SFSTREAM_CERTIFY_MODE={forced!r}: image or process")
    if forced == "process":
        problem: str | None = "SFSTREAM_CERTIFY_MODE=process"
        inspected = None
    else:
        problem, inspected = _image_problem()
    if problem is None:
        return Mode("image", f"the image {IMAGE}", image=inspected)
    if forced == "image":
        raise RuntimeError(f"SFSTREAM_CERTIFY_MODE=image, but {problem}")
    namespaced = _namespaces_allowed()
    how = "as PID 1 of a PID namespace" if namespaced else "as a process (unshare refused)"
    return Mode("process", f"{problem}: `sfstream run` {how}", namespaced=namespaced)


def _clean_environment() -> dict[str, str]:
    """This process's environment without what would configure the connector."""
    dropped = ("SFSTREAM_", "OTEL_", "ECS_", "AWS_")
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(dropped) and name not in {"TRACEPARENT", "TRACESTATE"}
    }


class Task:
    """One `sfstream run` of the task's directory `workdir`, its logs (stderr and stdout)
    appended to `log`.

    Args:
        mode: image or process.
        workdir: the task's files: the sink and the state (mounted at /data in a container).
        env: the task definition's environment (`SFSTREAM_*`, secrets, ECS variables); paths
            in it are written with `path()`.
        log: where the run's output goes.
        name: the container's name.
    """

    def __init__(
        self, mode: Mode, workdir: Path, env: Mapping[str, str], log: Path, name: str
    ) -> None:
        self.mode = mode
        self.workdir = workdir
        self.env = dict(env)
        self.log = log
        self.name = name
        self.process: asyncio.subprocess.Process | None = None
        self._pid: int | None = None

    # -- starting ----------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the run (returns at once; `started` tells when it logs)."""
        assert self.process is None
        with self.log.open("ab") as out:
            if self.mode.name == "image":
                self.process = await asyncio.create_subprocess_exec(
                    *self._podman_run(),
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                )
            else:
                command = [str(Path(sys.executable).parent / "sfstream"), "run"]
                if self.mode.namespaced:
                    command = ["unshare", "--pid", "--fork", "--kill-child", "--", *command]
                self.process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    cwd=self.workdir,
                    env={**_clean_environment(), **self.env},
                )

    def _podman_run(self) -> list[str]:
        command = [
            str(PODMAN),
            "run",
            "--rm",
            "--name",
            self.name,
            "--pull",
            "never",
            "--network",
            "host",
            "--read-only",
            "--cap-drop",
            "all",
            "--security-opt",
            "no-new-privileges",
            "--volume",
            f"{self.workdir}:{DATA}",
            # Podman schedules health checks with systemd timers; the tests run the check
            # themselves (`healthcheck`), where no systemd runs.
            "--health-interval",
            "disable",
        ]
        for name, value in sorted(self.env.items()):
            command += ["--env", f"{name}={value}"]
        return [*command, IMAGE]

    def path(self, name: str) -> str:
        """The path, as the connector sees it, of the file `name` in the task's directory."""
        if self.mode.name == "image":
            return f"{DATA}/{name}"
        return str(self.workdir / name)

    async def pid(self, timeout_s: float = 30.0) -> int:
        """The host's process id of `sfstream run` (in a container: the container's PID 1)."""
        if self._pid is not None:
            return self._pid
        assert self.process is not None
        async with asyncio.timeout(timeout_s):
            while self._pid is None:
                assert self.process.returncode is None, self.log.read_text()
                self._pid = await self._find_pid()
                if self._pid is None:
                    await asyncio.sleep(0.05)
        return self._pid

    async def _find_pid(self) -> int | None:
        assert self.process is not None
        if self.mode.name == "image":
            found = await _output(str(PODMAN), "inspect", "--format", "{{.State.Pid}}", self.name)
            pid = int(found) if found.isdigit() else 0
            return pid or None
        if not self.mode.namespaced:
            return self.process.pid
        return _first_child(self.process.pid)

    async def namespace_pid(self) -> int:
        """`sfstream run`'s process id in its own PID namespace (1 in a container)."""
        return _namespace_pid(await self.pid())

    def lines(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (a torn last line of a killed run is left out)."""
        found: list[dict[str, Any]] = []
        if not self.log.exists():
            return found
        for line in self.log.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict):
                    found.append(entry)
        return found

    async def logged(self, event: str | None = None, timeout_s: float = 60.0) -> None:
        """Wait for a log line (`event`: one of that event); fails if the run ends first."""
        assert self.process is not None
        async with asyncio.timeout(timeout_s):
            while not any(event is None or line.get("event") == event for line in self.lines()):
                assert self.process.returncode is None, self.log.read_text()
                await asyncio.sleep(0.05)

    # -- stopping ----------------------------------------------------------------------------

    async def stop(self) -> tuple[int, float]:
        """Stop the task as ECS does: the stop signal (SIGTERM), SIGKILL after the 30 s
        stopTimeout. Returns the exit code and the seconds from the signal to the exit."""
        process = self.process
        assert process is not None
        loop = asyncio.get_running_loop()
        began = loop.time()
        if self.mode.name == "image":
            # `podman stop` sends the image's STOPSIGNAL, then SIGKILL after --time.
            stopper = asyncio.create_task(
                _output(str(PODMAN), "stop", "--time", f"{STOP_TIMEOUT_S:g}", self.name)
            )
            code = await process.wait()
            with contextlib.suppress(Exception):
                await stopper
        else:
            await self.signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(STOP_TIMEOUT_S):
                    code = await process.wait()
            except TimeoutError:
                await self.signal(signal.SIGKILL)
                code = await process.wait()
        return code, loop.time() - began

    async def signal(self, signum: int) -> None:
        """Send `signum` to `sfstream run` (in a container: `podman kill --signal`)."""
        if self.mode.name == "image":
            await _output(str(PODMAN), "kill", "--signal", signal.Signals(signum).name, self.name)
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(await self.pid(), signum)

    async def kill(self) -> int:
        """SIGKILL; returns the exit code."""
        assert self.process is not None
        await self.signal(signal.SIGKILL)
        return await self.process.wait()

    async def wait(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        assert self.process is not None
        async with asyncio.timeout(timeout_s):
            return await self.process.wait()

    async def discard(self) -> None:
        """End the run whatever its state (after a failed test)."""
        process = self.process
        if process is None or process.returncode is not None:
            return
        if self.mode.name == "image":
            await _output(str(PODMAN), "rm", "--force", "--time", "0", self.name)
        else:
            with contextlib.suppress(ProcessLookupError):
                process.kill()  # unshare's --kill-child takes the connector with it
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(30):
                await process.wait()

    # -- the health check --------------------------------------------------------------------

    async def healthcheck(self) -> int:
        """The image's HEALTHCHECK (`podman healthcheck run`), or `sfstream healthcheck`
        with the task's environment; its exit code."""
        if self.mode.name == "image":
            command = [str(PODMAN), "healthcheck", "run", self.name]
            env = None
        else:
            command = [str(Path(sys.executable).parent / "sfstream"), "healthcheck"]
            env = {**_clean_environment(), **self.env}
        process = await asyncio.create_subprocess_exec(
            *command,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            env=env,
        )
        async with asyncio.timeout(30):
            return await process.wait()


def kill_codes(mode: Mode) -> set[int]:
    """The exit codes of a run ended by SIGKILL: 137 from podman, -9 for a process; 1 from
    `unshare` too, which reports a child killed by SIGKILL so (util-linux 2.38: "sigprocmask
    unblock failed")."""
    if mode.name == "image":
        return {128 + signal.SIGKILL}
    if mode.namespaced:
        return {-signal.SIGKILL, 1}
    return {-signal.SIGKILL}


def hand_back(mode: Mode, workdir: Path) -> None:
    """Give the task's files back to the image's user, after the test (root) read them."""
    if mode.name != "image":
        return
    uid, gid = image_user(mode)
    for path in [workdir, *workdir.rglob("*")]:
        with contextlib.suppress(FileNotFoundError):
            os.chown(path, uid, gid, follow_symlinks=False)


def image_user(mode: Mode) -> tuple[int, int]:
    """The numeric user and group the image runs as."""
    assert mode.image is not None
    user = str(mode.image["Config"].get("User") or "0")
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


def _first_child(pid: int) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if children:
            return int(children[0])
    return None


def _namespace_pid(pid: int) -> int:
    """The innermost of the process ids of `pid` (`NSpid` in /proc/PID/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [line for line in status.splitlines() if line.startswith("NSpid:")]
    return int(line.split()[-1])


async def _output(*command: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *command,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    return out.decode().strip()
