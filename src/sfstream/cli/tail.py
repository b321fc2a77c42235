"""`sfstream tail`: print a channel's events as JSON lines, like kafka-console-consumer.

Each line on stdout is one message as Salesforce delivered it (`{"channel", "data"}`, with
`data.event.replayId`). Gaps and recoveries are logged on stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import click
import orjson
import structlog

from sfstream.auth import GRANT_TYPES, OAuthCredentials
from sfstream.bayeux import Event, Gap, ReplayPolicy, SubscriptionLost
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import ConfigError, ExitCode, SfStreamError
from sfstream.secrets import EnvSecretsStore, FileSecretsStore, SecretsStore

log = structlog.get_logger("sfstream.tail")


@dataclass(frozen=True, slots=True)
class TailRequest:
    channels: tuple[str, ...]
    replay_from: int
    on_invalid_replay: ReplayPolicy
    max_messages: int | None
    api_version: str


async def follow(credentials: OAuthCredentials, request: TailRequest, out: BinaryIO) -> int:
    """Stream until interrupted or `max_messages` printed; returns the exit code."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    printed = 0
    lost = 0
    settings = ClientSettings(api_version=request.api_version)
    async with StreamingClient(credentials, settings) as client:
        for channel in request.channels:
            await client.subscribe(channel, request.replay_from, request.on_invalid_replay)
        iterator = aiter(client)
        while not stop.is_set():
            next_item = asyncio.ensure_future(anext(iterator))
            stopper = asyncio.ensure_future(stop.wait())
            done, _ = await asyncio.wait({next_item, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if next_item not in done:
                next_item.cancel()
                with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                    await next_item
                break
            stopper.cancel()
            item = next_item.result()
            if isinstance(item, Event):
                out.write(orjson.dumps({"channel": item.channel, "data": item.data}) + b"\n")
                out.flush()
                printed += 1
                if request.max_messages is not None and printed >= request.max_messages:
                    break
            elif isinstance(item, Gap):
                log.warning(
                    "replay_gap",
                    channel=item.channel,
                    replay_id=item.replay_id,
                    fallback=item.fallback,
                )
            elif isinstance(item, SubscriptionLost):
                lost += 1
                log.error("subscription_lost", channel=item.channel, error=str(item.error))
                if lost == len(request.channels):
                    return ExitCode.FAILURE
    log.info("tail_stopped", messages=printed)
    return ExitCode.OK


def run_tail(credentials: OAuthCredentials, request: TailRequest) -> int:
    """Run `tail` to completion; terminal errors become exit code 1 with one log line."""
    try:
        return asyncio.run(follow(credentials, request, sys.stdout.buffer))
    except SfStreamError as exc:
        # One clear line, no traceback: the error says what to fix.
        log.error("tail_failed", error=str(exc), retryable=exc.retryable)  # noqa: TRY400
        return ExitCode.FAILURE
    except BrokenPipeError:
        return ExitCode.OK


def _login_options(function: Callable[..., None]) -> Callable[..., None]:
    """Options that say how to log in to Salesforce (secrets never come from flags)."""
    options = [
        click.option(
            "--login-url",
            envvar="SFSTREAM_LOGIN_URL",
            default="https://login.salesforce.com",
            show_default=True,
            help="Token endpoint host: login, test, or your My Domain URL "
            "[env SFSTREAM_LOGIN_URL].",
        ),
        click.option(
            "--client-id",
            envvar="SFSTREAM_CLIENT_ID",
            default=None,
            help="Connected app consumer key [env SFSTREAM_CLIENT_ID].",
        ),
        click.option(
            "--grant",
            type=click.Choice(GRANT_TYPES),
            default="refresh_token",
            show_default=True,
            help="OAuth grant type.",
        ),
        click.option(
            "--username",
            envvar="SFSTREAM_USERNAME",
            default=None,
            help="For the password grant [env SFSTREAM_USERNAME].",
        ),
        click.option(
            "--secrets-file",
            envvar="SFSTREAM_SECRETS_FILE",
            default=None,
            type=click.Path(path_type=Path),
            help="File (mode 600) holding SFSTREAM_CLIENT_SECRET, "
            "SFSTREAM_REFRESH_TOKEN, SFSTREAM_PASSWORD; without it they are read "
            "from the environment.",
        ),
        click.option(
            "--emulator",
            "emulator_url",
            default=None,
            metavar="URL",
            help="Log in to a bundled emulator at URL with its default credentials.",
        ),
    ]
    for option in reversed(options):
        function = option(function)
    return function


def _credentials(
    *,
    login_url: str,
    client_id: str | None,
    grant: str,
    username: str | None,
    secrets_file: Path | None,
    emulator_url: str | None,
) -> OAuthCredentials:
    from pydantic import SecretStr

    from sfstream.auth import OAuthCredentials, grant_needs_message, required_for_grant
    from sfstream_emulator.settings import (
        DEFAULT_CLIENT_ID,
        DEFAULT_CLIENT_SECRET,
        DEFAULT_REFRESH_TOKEN,
    )

    if emulator_url is not None:
        return OAuthCredentials(
            login_url=emulator_url,
            client_id=client_id or DEFAULT_CLIENT_ID,
            client_secret=SecretStr(DEFAULT_CLIENT_SECRET),
            refresh_token=SecretStr(DEFAULT_REFRESH_TOKEN),
        )
    if not client_id:
        raise click.UsageError("--client-id (or SFSTREAM_CLIENT_ID) is required")
    store: SecretsStore = (
        FileSecretsStore(secrets_file) if secrets_file is not None else EnvSecretsStore()
    )
    try:
        needs = required_for_grant(grant)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc
    if "username" in needs and not username:
        raise click.UsageError(
            f"{grant_needs_message(grant, ('username',))}: pass --username (or SFSTREAM_USERNAME)"
        )

    async def secret(name: str, required: bool) -> SecretStr | None:
        try:
            return await store.get(name)
        except ConfigError:
            if required:
                raise
            return None

    async def resolve() -> OAuthCredentials:
        # A secret the grant needs must be in the store (its error names the secret); the
        # others are sent when present.
        return OAuthCredentials(
            login_url=login_url,
            client_id=client_id,
            client_secret=await secret("SFSTREAM_CLIENT_SECRET", "client_secret" in needs),
            grant_type=grant,  # type: ignore[arg-type]
            refresh_token=await secret("SFSTREAM_REFRESH_TOKEN", "refresh_token" in needs),
            username=username,
            password=await secret("SFSTREAM_PASSWORD", "password" in needs),
        )

    try:
        return asyncio.run(resolve())
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command()
@click.option(
    "--channel",
    "channels",
    multiple=True,
    required=True,
    help="Channel to follow, e.g. /data/AccountChangeEvent (repeatable).",
)
@click.option(
    "--replay",
    "replay_from",
    default=-1,
    show_default=True,
    type=int,
    help="-1: new events only; -2: every retained event first; N: after replayId N.",
)
@click.option(
    "--on-invalid-replay",
    type=click.Choice(["fail", "earliest", "latest"]),
    default="fail",
    show_default=True,
    help="When Salesforce rejects the replayId as invalid or expired.",
)
@click.option(
    "--max-messages",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after printing this many events.",
)
@click.option("--api-version", default="62.0", show_default=True)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@_login_options
def tail(
    *,
    channels: tuple[str, ...],
    replay_from: int,
    on_invalid_replay: str,
    max_messages: int | None,
    api_version: str,
    log_level: str,
    login_url: str,
    client_id: str | None,
    grant: str,
    username: str | None,
    secrets_file: Path | None,
    emulator_url: str | None,
) -> None:
    """Print the events of one or more channels as JSON lines on stdout.

    Logs go to stderr. Exit codes: 0 when stopped (Ctrl+C, --max-messages), 1 when
    Salesforce refuses the login or every subscription, 2 for a usage error.
    """
    from sfstream.observability import configure_logging

    if replay_from < -2:
        raise click.BadParameter("must be -1, -2 or a replayId", param_hint="--replay")
    for channel in channels:
        if not channel.startswith("/"):
            raise click.BadParameter(f"{channel!r} must start with '/'", param_hint="--channel")
    try:
        credentials = _credentials(
            login_url=login_url,
            client_id=client_id,
            grant=grant,
            username=username,
            secrets_file=secrets_file,
            emulator_url=emulator_url,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc
    secrets = [
        s.get_secret_value()
        for s in (credentials.client_secret, credentials.refresh_token, credentials.password)
        if s is not None
    ]
    configure_logging(level=log_level, secrets=secrets)
    request = TailRequest(
        channels, replay_from, ReplayPolicy(on_invalid_replay), max_messages, api_version
    )
    sys.exit(run_tail(credentials, request))
