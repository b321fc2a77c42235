"""`sfstream check`: everything a run needs, verified without streaming."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from sfstream.cli.common import CONFIG_OPTION, load
from sfstream.engine.config import Config
from sfstream.errors import ExitCode, SfStreamError

CheckResult = tuple[bool, str, str]


@click.command()
@CONFIG_OPTION
def check(config_path: Path) -> None:
    """Verify everything a run needs, without streaming.

    The configuration, the login, every stream (an entity without change events enabled, a
    missing channel or topic, a wrong key field), the state store and the sink location.
    Exit 0 when all is well, 1 when something needs fixing.
    """
    config = load(config_path, log_level="warning")
    results = asyncio.run(run_checks(config))
    failed = False
    for ok, label, detail in results:
        mark = "ok  " if ok else "FAIL"
        failed = failed or not ok
        click.echo(f"{mark}  {label}" + (f": {detail}" if detail else ""))
    sys.exit(ExitCode.FAILURE if failed else ExitCode.OK)


async def run_checks(config: Config) -> list[CheckResult]:
    """(ok, what, detail) for the login, each stream, the state store and the sink."""
    from sfstream.engine.discovery import check_streams, discover, read_metadata
    from sfstream.runners.wiring import org_session

    results: list[CheckResult] = [(True, "configuration", "")]
    async with org_session(config) as session:
        try:
            token = await session.tokens.token()
        except SfStreamError as exc:
            results.append((False, "login", str(exc)))
            return results
        results.append((True, "login", f"instance {token.instance_url}"))
        try:
            specs = await discover(config, session.rest)
            metadata = await read_metadata(session.rest)
            problems = await check_streams(specs, metadata, session.rest)
        except SfStreamError as exc:
            results.append((False, "streams", str(exc)))
            specs, problems = [], []
        by_channel: dict[str, list[str]] = {}
        for problem in problems:
            if problem.severity == "warning":
                results.append((True, f"warning {problem.channel}", problem.message))
            else:
                by_channel.setdefault(problem.channel, []).append(problem.message)
        for spec in specs:
            found = by_channel.get(spec.channel)
            label = f"stream {spec.id} ({spec.channel})"
            results.append((found is None, label, "; ".join(found or [])))
    results.append(await _check_state(config))
    results.append(_check_sink(config))
    return results


async def _check_state(config: Config) -> CheckResult:
    from sfstream.runners.wiring import open_state

    label = f"state store ({config.state.backend})"
    try:
        store = open_state(config)
        try:
            checkpoints = await store.load(None)
        finally:
            await store.close()
    except SfStreamError as exc:
        return (False, label, str(exc))
    return (True, label, f"{len(checkpoints)} checkpoint(s)")


def _check_sink(config: Config) -> CheckResult:
    if config.sink.type == "stdout":
        return (True, "sink (stdout)", "")
    path = config.sink.path
    assert path is not None
    try:
        # Exactly what the sink does first: create the directory, open for appending.
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("ab"):
            pass
    except OSError as exc:
        return (False, f"sink ({path})", f"cannot write there: {exc.strerror}")
    return (True, f"sink ({path})", "")
