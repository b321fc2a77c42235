"""`sfstream run` as a real subprocess, as the tests of the runners start it."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Mapping
from pathlib import Path


async def start_run(
    config_path: Path, log: Path, *args: str, env: Mapping[str, str] | None = None
) -> asyncio.subprocess.Process:
    """Start `sfstream run --config CONFIG_PATH [ARGS]`, its stderr (the logs) appended to log.

    `env` is added to this process's environment.
    """
    environment = None if env is None else {**os.environ, **env}
    with log.open("ab") as stderr:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "sfstream.cli",
            "run",
            "--config",
            str(config_path),
            *args,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=stderr,
            env=environment,
        )
