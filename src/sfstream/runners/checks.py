"""`sfstream check`: everything a run needs, verified without streaming."""

from __future__ import annotations

from sfstream.engine.config import Config
from sfstream.engine.discovery import check_streams, discover, read_metadata
from sfstream.errors import SfStreamError
from sfstream.runners.connector import open_state, org_session

CheckResult = tuple[bool, str, str]


async def run_checks(config: Config) -> list[CheckResult]:
    """(ok, what, detail) for the login, each stream, the state store and the sink."""
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
