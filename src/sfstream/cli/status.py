"""`sfstream status`: where each stream stands, from the state store, and live from a running
connector's metrics endpoint with `--url`.

The state store is opened read-only, as `state show` does, and the configuration is loaded
without the Salesforce secrets: it works without a running connector. With `--url`, the
connector's `/metrics` is parsed with `prometheus_client` (the `metrics` extra, imported only
then), and `/healthz` and `/readyz` are asked.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final
from urllib.parse import urlsplit

import click
import orjson

from sfstream.cli.common import CONFIG_OPTION, ConfigProblem, Failure, call, load, print_json, table
from sfstream.engine.config import Config
from sfstream.errors import ConfigError
from sfstream.state.base import Checkpoint, Lease, LeaseStore, Member

_LIVE: Final = {
    "sfstream_events_received_total": "events_received",
    "sfstream_records_written_total": "records_written",
    "sfstream_duplicates_dropped_total": "duplicates_dropped",
    "sfstream_subscription_up": "subscription_up",
    "sfstream_checkpoint_replay_id": "checkpoint",
    "sfstream_last_event_timestamp_seconds": "last_event_time",
    "sfstream_lag_seconds": "lag_s",
}
"""Sample name of `/metrics` -> the per-stream figure it gives."""
_ENDPOINT_PATHS: Final = ("/metrics", "/healthz", "/readyz")


@click.command()
@CONFIG_OPTION
@click.option(
    "--url",
    default=None,
    metavar="http://HOST:PORT",
    help="A running connector's metrics endpoint (observability.metrics_port): add its live "
    "figures, health and readiness.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for each answer of --url.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def status(config_path: Path, url: str | None, timeout_s: float, as_json: bool) -> None:
    """Print each stream's checkpoint, when it was committed, the time of its last event
    and the lag (now minus that time); with leases (several workers on a shared state
    store), each stream's owner, lease token and lease expiry, and the live workers.

    The state store is only read: this works without a running connector and without the
    Salesforce secrets. With --url, also the connector's live figures per stream, and its
    /healthz and /readyz answers (the exit code does not follow them: see `sfstream
    healthcheck`).
    """
    base = _base_url(url) if url is not None else None
    config = load(config_path, log_level="warning", offline=True)
    configured = _configured_streams(config)
    stored, leases, members = call(lambda: _checkpoints(config))
    endpoint = _ask(base, timeout_s) if base is not None else None
    now = time.time()
    live: dict[str, dict[str, Any]] = endpoint["streams"] if endpoint is not None else {}
    rows = []
    for stream in sorted(set(configured) | set(stored) | set(live)):
        row = _stored_row(stream, stored.get(stream), now)
        if leases is not None:
            row["lease"] = _lease_row(leases.get(stream))
        if endpoint is not None:
            row["live"] = live.get(stream)
        rows.append(row)
    if as_json:
        document: dict[str, Any] = {"streams": rows}
        if members is not None:
            document["workers"] = [
                {
                    "worker": m.worker,
                    "joined_at": _iso(m.joined_at),
                    "expires_at": _iso(m.expires_at),
                }
                for m in members
            ]
        if endpoint is not None:
            document["endpoint"] = {
                "url": base,
                "health": endpoint["health"],
                "readiness": endpoint["readiness"],
            }
        print_json(document)
        return
    _print_table(rows, base, endpoint, members)


# -- the state store -------------------------------------------------------------------------


def _configured_streams(config: Config) -> list[str]:
    """The ids of the streams the configuration lists (discovered ones show up once they have
    a checkpoint)."""
    from sfstream.engine.discovery import streams_from_config

    try:
        return [spec.id for spec in streams_from_config(config)]
    except ConfigError as exc:
        raise ConfigProblem(str(exc)) from exc


async def _checkpoints(
    config: Config,
) -> tuple[dict[str, Checkpoint], dict[str, Lease] | None, list[Member] | None]:
    """The checkpoints; with leases, also the leases and the live workers (else None)."""
    from sfstream.runners.wiring import open_state

    store = open_state(config, read_only=True)
    try:
        checkpoints = await store.load(None)
        if not (config.state.leased and isinstance(store, LeaseStore)):
            return checkpoints, None, None
        return checkpoints, await store.leases(None), await store.members()
    finally:
        await store.close()


def _lease_row(lease: Lease | None) -> dict[str, Any] | None:
    if lease is None:
        return None
    return {
        "owner": lease.owner if lease.held else None,
        "token": lease.token,
        "expires_at": _iso(lease.expires_at) if lease.held else None,
        "last_owner": lease.owner,
        "acquired_at": _iso(lease.acquired_at),
        "fenced_commits": lease.refused,
        "last_fenced_at": _iso(lease.refused_at),
        "last_fenced_worker": lease.refused_worker,
    }


def _stored_row(stream: str, checkpoint: Checkpoint | None, now: float) -> dict[str, Any]:
    event_time = checkpoint.event_time if checkpoint is not None else None
    return {
        "stream": stream,
        "replay_id": checkpoint.replay_id if checkpoint is not None else None,
        "committed_at": checkpoint.updated_at if checkpoint is not None else None,
        "last_event_time": _iso(event_time),
        "last_event_epoch_s": event_time,
        "lag_s": _lag(now, event_time),
    }


# -- the metrics endpoint --------------------------------------------------------------------


def _base_url(url: str) -> str:
    """`url` without a trailing slash or an endpoint path; a usage error unless it is an
    http(s) URL with a host."""
    try:
        parts = urlsplit(url.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise click.BadParameter(
            f"{url!r} is not a valid URL ({exc})", param_hint="--url"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise click.BadParameter(
            f"{url!r} is not an http:// or https:// URL of a metrics endpoint (http://HOST:PORT)",
            param_hint="--url",
        )
    path = parts.path.rstrip("/")
    if path.endswith(_ENDPOINT_PATHS):
        path = path.rsplit("/", 1)[0]
    return f"{parts.scheme}://{parts.netloc}{path}"


def _ask(base: str, timeout_s: float) -> dict[str, Any]:
    """The endpoint's figures per stream (`/metrics`), and its `/healthz` and `/readyz`."""
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        raise ConfigProblem(
            "--url needs prometheus-client to read the metrics: pip install 'sfstream[metrics]'"
        ) from None
    status, text = _get(f"{base}/metrics", timeout_s)
    if status != 200:
        raise Failure(f"{base}/metrics answered HTTP {status}; is this an sfstream endpoint?")
    streams: dict[str, dict[str, Any]] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                figure = _LIVE.get(sample.name)
                stream = sample.labels.get("stream")
                if figure is not None and stream is not None:
                    streams.setdefault(stream, dict.fromkeys(_LIVE.values()))[figure] = sample.value
    except ValueError as exc:
        raise Failure(f"{base}/metrics is not in the Prometheus text format ({exc})") from None
    now = time.time()
    for figures in streams.values():
        for counter in ("events_received", "records_written", "duplicates_dropped", "checkpoint"):
            if figures[counter] is not None:
                figures[counter] = int(figures[counter])
        if figures["subscription_up"] is not None:
            figures["subscription_up"] = figures["subscription_up"] >= 1
        event_time = figures.pop("last_event_time")
        figures["last_event_time"] = _iso(event_time)
        figures["lag_s"] = (
            round(figures["lag_s"], 3) if figures["lag_s"] is not None else _lag(now, event_time)
        )
    return {
        "streams": streams,
        "health": _check(f"{base}/healthz", timeout_s),
        "readiness": _check(f"{base}/readyz", timeout_s),
    }


def _check(url: str, timeout_s: float) -> dict[str, Any]:
    status, text = _get(url, timeout_s)
    try:
        body: Any = orjson.loads(text)
    except orjson.JSONDecodeError:
        body = text.strip()
    return {"ok": status == 200, "status": status, "body": body}


def _get(url: str, timeout_s: float) -> tuple[int, str]:
    """(HTTP status, body) of a GET; an endpoint that cannot be reached is a `Failure`."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            status, body = int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise Failure(
            f"cannot reach the connector's metrics endpoint at {url}: {reason} (is `sfstream "
            f"run` running with observability.metrics_port?)"
        ) from None
    return status, body.decode("utf-8", "replace")


# -- output ----------------------------------------------------------------------------------


def _print_table(
    rows: list[dict[str, Any]],
    base: str | None,
    endpoint: dict[str, Any] | None,
    members: list[Member] | None,
) -> None:
    if not rows:
        click.echo("no streams and no checkpoints yet")
    else:
        headers = ["STREAM", "CHECKPOINT", "COMMITTED AT", "LAST EVENT", "LAG"]
        leased = members is not None
        if leased:
            headers += ["OWNER", "TOKEN", "LEASE UNTIL", "FENCED"]
        lines = []
        for row in rows:
            line = [
                row["stream"],
                _text(row["replay_id"]),
                _text(row["committed_at"]),
                _text(row["last_event_time"]),
                _duration(row["lag_s"]),
            ]
            if leased:
                lease = row["lease"] or {}
                line += [
                    _text(lease.get("owner")) if lease else "-",
                    _text(lease.get("token")),
                    _text(lease.get("expires_at")),
                    _text(lease.get("fenced_commits")),
                ]
            lines.append(line)
        table(headers, lines)
    if members is not None:
        names = ", ".join(member.worker for member in members) or "none"
        click.echo(f"\nworkers ({len(members)} live): {names}")
    if endpoint is None:
        return
    click.echo("")
    click.echo(f"live from {base}:")
    live = [(row["stream"], row["live"]) for row in rows if row["live"] is not None]
    if live:
        table(
            ["STREAM", "RECEIVED", "WRITTEN", "DUPLICATES", "SUBSCRIBED", "CHECKPOINT", "LAG"],
            [
                [
                    stream,
                    _text(figures["events_received"]),
                    _text(figures["records_written"]),
                    _text(figures["duplicates_dropped"]),
                    {True: "yes", False: "no", None: "-"}[figures["subscription_up"]],
                    _text(figures["checkpoint"]),
                    _duration(figures["lag_s"]),
                ]
                for stream, figures in live
            ],
        )
    else:
        click.echo("no stream figures yet (the connector is starting)")
    click.echo("")
    for path, answer in (("/healthz", endpoint["health"]), ("/readyz", endpoint["readiness"])):
        body = answer["body"]
        shown = body if isinstance(body, str) else orjson.dumps(body).decode()
        click.echo(f"{path:<9} {answer['status']}  {shown}")


def _iso(epoch_s: float | None) -> str | None:
    if epoch_s is None:
        return None
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="milliseconds")


def _lag(now: float, epoch_s: float | None) -> float | None:
    return None if epoch_s is None else round(now - epoch_s, 3)


def _text(value: object) -> str:
    return "-" if value is None else str(value)


def _duration(seconds: float | None) -> str:
    """A lag for people: `0.4s`, `12m 5s`, `3h 20m`, `2d 4h`."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(seconds)
    if whole < 3600:
        return f"{whole // 60}m {whole % 60}s"
    if whole < 86400:
        return f"{whole // 3600}h {whole % 3600 // 60}m"
    return f"{whole // 86400}d {whole % 86400 // 3600}h"
