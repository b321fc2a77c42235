"""`sfstream-emulator` (also `sfstream emulator`): run the Salesforce emulator from a shell.

Exit codes: 0 stopped by SIGINT/SIGTERM, 1 cannot listen, 2 a bad option or org file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import Final

import click
from pydantic import ValidationError

from sfstream_emulator import __version__
from sfstream_emulator.org import OrgError, load_org
from sfstream_emulator.server import Emulator
from sfstream_emulator.settings import EmulatorSettings, check_certificate

EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2


@click.command(
    "emulator", context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100}
)
@click.version_option(__version__, prog_name="sfstream-emulator")
@click.option(
    "--host",
    default="localhost",
    show_default=True,
    help="Interface to listen on; localhost serves IPv4 and IPv6.",
)
@click.option(
    "--port",
    default=8787,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0 picks a free one).",
)
@click.option("--public-url", default=None, help="URL clients use, when not http://HOST:PORT.")
@click.option(
    "--org",
    "org_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Org definition (YAML); the bundled default org if omitted.",
)
@click.option(
    "--poll-timeout",
    default=110.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds a /meta/connect is held when no event waits.",
)
@click.option(
    "--reconnect-gap",
    default=40.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Seconds after a response before a silent client is forgotten.",
)
@click.option(
    "--token-ttl",
    default=7200.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Access token lifetime in seconds.",
)
@click.option(
    "--daily-allocation",
    default=None,
    type=click.IntRange(min=0),
    help="Change/platform events deliverable per 24 h (default: unlimited).",
)
@click.option(
    "--client-id",
    envvar="SFSTREAM_EMULATOR_CLIENT_ID",
    default=None,
    help="Connected app consumer key accepted [env SFSTREAM_EMULATOR_CLIENT_ID].",
)
@click.option(
    "--client-secret",
    envvar="SFSTREAM_EMULATOR_CLIENT_SECRET",
    default=None,
    help="Consumer secret accepted [env SFSTREAM_EMULATOR_CLIENT_SECRET].",
)
@click.option(
    "--refresh-token",
    envvar="SFSTREAM_EMULATOR_REFRESH_TOKEN",
    default=None,
    help="Refresh token accepted [env SFSTREAM_EMULATOR_REFRESH_TOKEN].",
)
@click.option(
    "--username",
    envvar="SFSTREAM_EMULATOR_USERNAME",
    default=None,
    help="Username for the password grant [env SFSTREAM_EMULATOR_USERNAME].",
)
@click.option(
    "--password",
    envvar="SFSTREAM_EMULATOR_PASSWORD",
    default=None,
    help="Password for the password grant [env SFSTREAM_EMULATOR_PASSWORD].",
)
@click.option(
    "--jwt-certificate",
    envvar="SFSTREAM_EMULATOR_JWT_CERTIFICATE",
    default=None,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="PEM certificate of the connected app, for the JWT bearer grant "
    "[env SFSTREAM_EMULATOR_JWT_CERTIFICATE].",
)
@click.option("--seed", default=None, type=int, help="Makes replay ids reproducible.")
@click.option(
    "--access-log/--no-access-log",
    default=False,
    show_default=True,
    help="Log every HTTP request to stderr.",
)
def main(
    *,
    host: str,
    port: int,
    public_url: str | None,
    org_file: Path | None,
    poll_timeout: float,
    reconnect_gap: float,
    token_ttl: float,
    daily_allocation: int | None,
    client_id: str | None,
    client_secret: str | None,
    refresh_token: str | None,
    username: str | None,
    password: str | None,
    jwt_certificate: Path | None,
    seed: int | None,
    access_log: bool,
) -> None:
    """Run the bundled Salesforce emulator until interrupted.

    It serves OAuth (/services/oauth2/token), the REST metadata calls (/services/data),
    CometD (/cometd/62.0) and a control API (/_emulator/v1). See docs/emulator.md.
    """
    overrides = {
        "client_id": client_id,
        "client_secret": client_secret,
        "refresh_token": refresh_token,
        "username": username,
        "password": password,
        "jwt_certificate": _certificate(jwt_certificate),
    }
    try:
        settings = EmulatorSettings(
            host=host,
            port=port,
            public_url=public_url,
            poll_timeout_s=poll_timeout,
            reconnect_gap_s=reconnect_gap,
            access_token_ttl_s=token_ttl,
            daily_delivery_allocation=daily_allocation,
            seed=seed,
            **{k: v for k, v in overrides.items() if v},
        )
        org = load_org(org_file)
    except (OrgError, ValidationError) as exc:
        # One line, no usage banner: YAML and pydantic messages span several lines.
        message = " ".join(str(exc).split())
        if org_file is not None and str(org_file) not in message:
            message = f"{org_file}: {message}"
        click.echo(f"sfstream emulator: {message}", err=True)
        sys.exit(EXIT_USAGE)
    emu = Emulator(settings, org)
    try:
        asyncio.run(_serve(emu, access_log))
    except OSError as exc:
        click.echo(f"sfstream emulator: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(EXIT_FAILURE)


def _certificate(path: Path | None) -> str | None:
    """The PEM text of `--jwt-certificate`; a usage error (never quoting the file) if not one."""
    if path is None:
        return None
    try:
        return check_certificate(path.read_text(errors="replace"))
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise click.BadParameter(f"{path}: {reason}", param_hint="'--jwt-certificate'") from None


async def _serve(emu: Emulator, access_log: bool) -> None:
    if access_log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    await emu.start(access_log=access_log)
    creds = emu.credentials
    click.echo(
        f"sfstream emulator listening on {emu.url}\n"
        f"  login URL     {creds['login_url']}\n"
        f"  client id     {creds['client_id']}\n"
        f"  client secret {creds['client_secret']}\n"
        f"  refresh token {creds['refresh_token']}\n"
        f"  username      {creds['username']}\n"
        f"  password      {creds['password']}\n"
        f"  CometD        {emu.cometd_url()}\n"
        f"  control API   {emu.url}/_emulator/v1/status\n"
        "Press Ctrl+C to stop."
    )
    sys.stdout.flush()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await emu.stop()
        click.echo("sfstream emulator stopped.", err=True)


if __name__ == "__main__":  # pragma: no cover
    main()
