"""`sfstream healthcheck`: ask a running connector's health endpoint, exit 0 or 1.

For a container's `HEALTHCHECK` (no curl in the image): `sfstream healthcheck` asks
`http://127.0.0.1:<observability.metrics_port>/healthz`.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

import click

from sfstream.errors import ExitCode

DEFAULT_PORT = 9464
"""The port asked when neither `--url` nor `SFSTREAM_OBSERVABILITY__METRICS_PORT` says one
(the port Prometheus' registry lists for OpenTelemetry exporters, the usual choice)."""


def _default_url() -> str:
    port = os.environ.get("SFSTREAM_OBSERVABILITY__METRICS_PORT", "").strip() or DEFAULT_PORT
    return f"http://127.0.0.1:{port}/healthz"


@click.command()
@click.option(
    "--url",
    default=None,
    help="The endpoint to ask [default: http://127.0.0.1:$SFSTREAM_OBSERVABILITY__METRICS_PORT"
    f"/healthz, port {DEFAULT_PORT} when unset]; /readyz for readiness.",
)
@click.option(
    "--timeout",
    "timeout_s",
    type=click.FloatRange(min=0.1),
    default=5.0,
    show_default=True,
    help="Seconds to wait for the answer.",
)
@click.option("--quiet", "-q", is_flag=True, help="Print nothing; the exit code says it.")
def healthcheck(url: str | None, timeout_s: float, quiet: bool) -> None:
    """Exit 0 if a running connector's health endpoint answers 200, 1 otherwise.

    Needs `observability.metrics_port` set on the connector.
    """
    target = url or _default_url()
    if not target.startswith(("http://", "https://")):
        raise click.BadParameter(
            f"{target!r} is not an http:// or https:// URL", param_hint="--url"
        )
    try:
        with urllib.request.urlopen(target, timeout=timeout_s) as response:  # noqa: S310
            status, body = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        if not quiet:
            click.echo(f"unhealthy: {target}: {reason}", err=True)
        sys.exit(ExitCode.FAILURE)
    text = body.decode("utf-8", "replace").strip()
    if status == 200:
        if not quiet:
            click.echo(f"healthy: {target}: {text}")
        return
    if not quiet:
        click.echo(f"unhealthy: {target}: HTTP {status}: {text}", err=True)
    sys.exit(ExitCode.FAILURE)
