"""A local stand-in for the AWS Lambda service: the Runtime API, and the runtime it drives.

`LocalLambda` serves the Lambda Runtime API (2018-06-01) on a free localhost port and runs
the real runtime interface client (`python -m awslambdaric module.handler`, as a Lambda
image does) in a Lambda-like environment, in a process group of its own. Each `invoke`
queues an event; `/next` delivers it with the deadline header computed at delivery; the
invocation ends with the runtime's `/response` or `/error`, or with the process killed at
the deadline (plus a grace) and the next invocation a cold start. While the runtime waits in
`/next` with nothing queued, its process group is frozen (SIGSTOP), as Lambda freezes an
idle execution environment, and thawed (SIGCONT) for the next event.

What the runtime prints is kept line by line (`lines`), with the stream and the process.
"""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

API = "/2018-06-01/runtime"
_THREAD_EXIT_S = 0.1
FUNCTION_NAME = "sfstream-certify"
ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}"


@dataclass
class Invocation:
    """One event given to the runtime, and what became of it.

    `status`: `success` (a `/response`), `error` (a `/error`), `timeout` (killed at the
    deadline), `killed` (killed on purpose by `invoke(kill_after_s=...)`), `exited` (the
    runtime ended without answering).
    """

    request_id: str
    event: dict[str, Any]
    timeout_s: float
    pid: int
    cold: bool
    deadline_ms: int | None = None
    delivered: float | None = None
    answered: float | None = None
    answered_ms: float | None = None
    status: str | None = None
    body: Any = None

    @property
    def within_deadline(self) -> bool:
        """The answer came before the deadline that was sent with the event."""
        return (
            self.answered_ms is not None
            and self.deadline_ms is not None
            and self.answered_ms <= self.deadline_ms
        )


@dataclass
class Freeze:
    """The runtime frozen while idle: its process and how many threads it had."""

    pid: int
    threads: int


@dataclass
class Spawn:
    """A runtime process: when it started, when it first asked for an event and how many
    threads it had then (before any invocation)."""

    pid: int
    started: float
    ready: float | None = None
    threads: int | None = None

    @property
    def init_ms(self) -> float | None:
        """Process start to the first `/next`: interpreter, runtime client and handler
        module imports."""
        return None if self.ready is None else (self.ready - self.started) * 1000


@dataclass
class _Pending:
    invocation: Invocation
    done: threading.Event = field(default_factory=threading.Event)


class LocalLambda:
    """The Runtime API and the runtime process; a context manager (stops both).

    Args:
        handler: the handler string (`module.function`).
        environment: variables added to the Lambda-like environment.
        cwd: the task root (`LAMBDA_TASK_ROOT`).
        freeze: freeze the runtime while it is idle.
        grace_s: how long past the deadline an invocation may answer before the runtime is
            killed.
    """

    def __init__(
        self,
        handler: str,
        environment: dict[str, str],
        cwd: Path,
        *,
        freeze: bool = True,
        grace_s: float = 0.25,
    ) -> None:
        self.handler = handler
        self.environment = environment
        self.cwd = cwd
        self.freeze = freeze
        self.grace_s = grace_s
        self.lines: list[tuple[int, str, str]] = []
        """(pid, "stdout" or "stderr", line) in the order read."""
        self.freezes: list[Freeze] = []
        self.spawns: list[Spawn] = []
        self.invocations: list[Invocation] = []
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._current: dict[str, _Pending] = {}
        self._proc: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self._pumps: list[threading.Thread] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._serving = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._serving.start()

    def __enter__(self) -> LocalLambda:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host}:{port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- the runtime process --------------------------------------------------------------

    def _spawn(self) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "en_US.UTF-8",
            "TZ": ":UTC",
            "AWS_LAMBDA_RUNTIME_API": self.address,
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "512",
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
            "AWS_LAMBDA_LOG_STREAM_NAME": f"2026/01/01/[$LATEST]{uuid.uuid4().hex}",
            "AWS_LAMBDA_INITIALIZATION_TYPE": "on-demand",
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EXECUTION_ENV": f"AWS_Lambda_python{sys.version_info[0]}.{sys.version_info[1]}",
            "LAMBDA_TASK_ROOT": str(self.cwd),
            "LAMBDA_RUNTIME_DIR": str(Path(sys.executable).parent),
            "_HANDLER": self.handler,
            # Dummy credentials: an AWS SDK never goes looking for instance metadata.
            "AWS_ACCESS_KEY_ID": "certify",
            "AWS_SECRET_ACCESS_KEY": "certify",
            "AWS_SESSION_TOKEN": "certify",
            **self.environment,
        }
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "awslambdaric", self.handler],
            cwd=self.cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._proc = proc
        self._frozen = False
        self.spawns.append(Spawn(proc.pid, started))
        for name, pipe in (("stdout", proc.stdout), ("stderr", proc.stderr)):
            pump = threading.Thread(target=self._pump, args=(proc.pid, name, pipe), daemon=True)
            pump.start()
            self._pumps.append(pump)

    def _pump(self, pid: int, name: str, pipe: Any) -> None:
        for raw in iter(pipe.readline, b""):
            with self._cond:
                self.lines.append((pid, name, raw.decode("utf-8", "replace").rstrip("\n")))

    def kill(self) -> None:
        """Kill the runtime's process group: the next invocation is a cold start."""
        with self._cond:
            proc, self._proc = self._proc, None
            self._frozen = False
            self._cond.notify_all()
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        for pump in self._pumps:
            pump.join(timeout=5)
        self._pumps.clear()
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()

    def state(self) -> str | None:
        """The runtime's process state letter (`T` when stopped), if it runs."""
        pid = self.pid
        if pid is None:
            return None
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return None
        return stat.rpartition(")")[2].split()[0]

    def _freeze_locked(self) -> None:
        proc = self._proc
        if not self.freeze or self._frozen or proc is None or proc.poll() is not None:
            return
        # A thread that has just been joined may still be on its way out of the kernel:
        # give it a moment (a thread that stays is counted).
        spawn = self.spawns[-1]
        settle = time.monotonic() + _THREAD_EXIT_S
        while (
            spawn.threads is not None
            and _threads(proc.pid) > spawn.threads
            and time.monotonic() < settle
        ):
            time.sleep(0.002)
        os.killpg(proc.pid, signal.SIGSTOP)
        self._frozen = True
        self.freezes.append(Freeze(proc.pid, _threads(proc.pid)))

    def _thaw_locked(self) -> None:
        proc = self._proc
        if self._frozen and proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGCONT)
        self._frozen = False

    # -- invocations ----------------------------------------------------------------------

    def invoke(
        self, event: dict[str, Any], timeout_s: float, *, kill_after_s: float | None = None
    ) -> Invocation:
        """Give `event` to the runtime (starting one when none runs) and wait for the end.

        `kill_after_s`: kill the runtime that long after the event was delivered (a crash in
        the middle of an invocation).
        """
        cold = self._proc is None or self._proc.poll() is not None
        if cold:
            self.kill()
            self._spawn()
        assert self._proc is not None
        invocation = Invocation(str(uuid.uuid4()), event, timeout_s, self._proc.pid, cold)
        pending = _Pending(invocation)
        self.invocations.append(invocation)
        with self._cond:
            self._queue.append(pending)
            self._thaw_locked()
            self._cond.notify_all()
        self._wait(pending, kill_after_s)
        return invocation

    def _wait(self, pending: _Pending, kill_after_s: float | None) -> None:
        invocation = pending.invocation
        proc = self._proc
        assert proc is not None
        limit = time.monotonic() + 30.0  # init and delivery
        while not pending.done.wait(0.01):
            now = time.monotonic()
            if invocation.delivered is not None:
                if kill_after_s is not None and now >= invocation.delivered + kill_after_s:
                    self._end(pending, "killed")
                    self.kill()
                    return
                limit = invocation.delivered + invocation.timeout_s + self.grace_s
            if proc.poll() is not None:
                self._end(pending, "exited")
                self.kill()
                return
            if now >= limit:
                self._end(pending, "timeout")
                self.kill()
                return

    def _end(self, pending: _Pending, status: str, body: Any = None) -> bool:
        with self._cond:
            if pending.done.is_set():
                return False
            invocation = pending.invocation
            invocation.status = status
            invocation.body = body
            invocation.answered = time.monotonic()
            invocation.answered_ms = time.time() * 1000
            self._current.pop(invocation.request_id, None)
            with contextlib.suppress(ValueError):
                self._queue.remove(pending)
            pending.done.set()
            return True

    def _next(self) -> _Pending | None:
        """Hold `/next` until an event is queued (frozen meanwhile); None when the runtime
        that asked is gone or the server closes."""
        with self._cond:
            proc = self._proc
            spawn = self.spawns[-1] if self.spawns else None
            if spawn is not None and proc is not None and spawn.pid == proc.pid and not spawn.ready:
                spawn.ready = time.monotonic()
                spawn.threads = _threads(proc.pid)
            while not self._queue:
                if self._proc is not proc or self._server.closing:
                    return None
                self._freeze_locked()
                self._cond.wait(0.05)
            pending = self._queue.pop(0)
            self._current[pending.invocation.request_id] = pending
            return pending

    def _answered(self, request_id: str, status: str, body: Any) -> bool:
        with self._cond:
            pending = self._current.get(request_id)
        return pending is not None and self._end(pending, status, body)

    def init_failed(self, body: Any) -> None:
        with self._cond:
            pendings = list(self._current.values()) + list(self._queue)
        for pending in pendings:
            self._end(pending, "exited", body)

    def close(self) -> None:
        self._server.closing = True
        with self._cond:
            self._cond.notify_all()
        self.kill()
        self._server.shutdown()
        self._server.server_close()


def _threads(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return 0


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: LocalLambda
    closing = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Quiet about runtimes killed in the middle of a request (the point of a kill)."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"  # the runtime client keeps its connection alive
    disable_nagle_algorithm = True  # else delayed ACKs add about 40 ms to every call

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads the runtime's own output."""

    def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            return raw.decode("utf-8", "replace")

    def do_GET(self) -> None:
        if self.path != f"{API}/invocation/next":
            self._reply(404, b'{"errorMessage":"not found"}')
            return
        lam = self.server.owner
        pending = lam._next()
        if pending is None:
            self.close_connection = True
            return
        invocation = pending.invocation
        deadline_ms = int(time.time() * 1000 + invocation.timeout_s * 1000)
        invocation.deadline_ms = deadline_ms
        invocation.delivered = time.monotonic()
        root = f"1-{int(time.time()):08x}-{uuid.uuid4().hex[:24]}"
        trace = f"Root={root};Parent={uuid.uuid4().hex[:16]};Sampled=0"
        self._reply(
            200,
            orjson.dumps(invocation.event),
            {
                "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
                "Lambda-Runtime-Deadline-Ms": str(deadline_ms),
                "Lambda-Runtime-Invoked-Function-Arn": ARN,
                "Lambda-Runtime-Trace-Id": trace,
            },
        )

    def do_POST(self) -> None:
        lam = self.server.owner
        body = self._body()
        parts = self.path.removeprefix(API).strip("/").split("/")
        if parts == ["init", "error"]:
            lam.init_failed(body)
            self._reply(202, b'{"status":"OK"}')
            return
        if len(parts) == 3 and parts[0] == "invocation" and parts[2] in ("response", "error"):
            status = "success" if parts[2] == "response" else "error"
            if lam._answered(parts[1], status, body):
                self._reply(202, b'{"status":"OK"}')
            else:
                self._reply(400, b'{"errorMessage":"unknown or finished request id"}')
            return
        self._reply(404, b'{"errorMessage":"not found"}')
