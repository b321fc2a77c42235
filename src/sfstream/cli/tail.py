"""`sfstream tail`: print a channel's events as JSON lines, like kafka-console-consumer.

Each line on stdout is one message as Salesforce delivered it (`{"channel", "data"}`, with
`data.event.replayId`). Gaps and recoveries are logged on stderr.

With `--config FILE`, the connector's configuration says how to log in (its `salesforce`
section, its secrets store, its API version) and, unless `--channel` is given, what to follow:
the streams a run would use, each from its `initial_replay`. A refresh token that Salesforce
rotates is then written back to the secrets store, as `sfstream run` does. Without it, the
login comes from flags and `SFSTREAM_*` secrets, and a rotated refresh token is followed in
memory only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Final

import click
import orjson
import structlog

from sfstream.auth import GRANT_TYPES, OAuthCredentials, TokenProvider
from sfstream.bayeux import LATEST, Event, Gap, ReplayPolicy, SubscriptionLost
from sfstream.client import ClientSettings, StreamingClient
from sfstream.errors import ConfigError, ExitCode, SfStreamError
from sfstream.secrets import EnvSecretsStore, FileSecretsStore, SecretsStore

if TYPE_CHECKING:
    from sfstream.engine.config import Config

log = structlog.get_logger("sfstream.tail")

DEFAULT_API_VERSION: Final = "62.0"
_LOGIN_OPTIONS: Final = {
    "login_url": "--login-url",
    "client_id": "--client-id",
    "grant": "--grant",
    "username": "--username",
    "secrets_file": "--secrets-file",
    "emulator_url": "--emulator",
}
"""Parameter -> flag of the options that say how to log in without a configuration."""


@dataclass(frozen=True, slots=True)
class TailChannel:
    """One channel to follow, and from where."""

    channel: str
    replay_from: int = LATEST
    on_invalid_replay: ReplayPolicy = ReplayPolicy.FAIL


@dataclass(frozen=True, slots=True)
class TailRequest:
    follows: tuple[TailChannel, ...]
    max_messages: int | None
    api_version: str

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(f.channel for f in self.follows)


async def follow(
    credentials: OAuthCredentials,
    request: TailRequest,
    out: BinaryIO,
    *,
    tokens: TokenProvider | None = None,
) -> int:
    """Stream until interrupted or `max_messages` printed; returns the exit code.

    `tokens`: a token provider to log in with (one of the client's own otherwise).
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    printed = 0
    lost = 0
    settings = ClientSettings(api_version=request.api_version)
    async with StreamingClient(credentials, settings, tokens=tokens) as client:
        for wanted in request.follows:
            await client.subscribe(wanted.channel, wanted.replay_from, wanted.on_invalid_replay)
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
                if lost == len(request.follows):
                    return ExitCode.FAILURE
    log.info("tail_stopped", messages=printed)
    return ExitCode.OK


async def follow_configured(
    config: Config,
    out: BinaryIO,
    *,
    channels: tuple[str, ...] = (),
    replay_from: int | None = None,
    on_invalid_replay: ReplayPolicy | None = None,
    max_messages: int | None = None,
    api_version: str | None = None,
) -> int:
    """`follow` with the login, the secrets store and (without `channels`) the streams of
    `config`; a rotated refresh token is written back as `sfstream run` writes it.

    `replay_from` and `on_invalid_replay` (None: each stream's own) apply to every channel;
    channels given without them start at -1 and fail on an invalid replayId.
    """
    from sfstream.engine.discovery import discover
    from sfstream.runners.wiring import credentials_of, org_session

    async with org_session(config) as session:
        if channels:
            follows = tuple(
                TailChannel(
                    channel,
                    LATEST if replay_from is None else replay_from,
                    on_invalid_replay or ReplayPolicy.FAIL,
                )
                for channel in channels
            )
        else:
            rest = session.rest if config.discovery.mode == "metadata" else None
            specs = await discover(config, rest)
            if not specs:
                raise ConfigError(
                    "no stream to follow: discovery found none; pass --channel, or widen "
                    "discovery.include"
                )
            follows = tuple(
                TailChannel(
                    spec.channel,
                    spec.initial_replay if replay_from is None else replay_from,
                    on_invalid_replay or spec.on_invalid_replay,
                )
                for spec in specs
            )
        request = TailRequest(follows, max_messages, api_version or config.salesforce.api_version)
        return await follow(credentials_of(config), request, out, tokens=session.tokens)


def run_tail(main: Callable[[BinaryIO], Coroutine[Any, Any, int]]) -> int:
    """Run `main(stdout)` to completion: a configuration that cannot be used becomes exit code
    2, another terminal error exit code 1, each with one log line."""
    try:
        return asyncio.run(main(sys.stdout.buffer))
    except ConfigError as exc:
        log.error("tail_failed", error=str(exc), retryable=False)  # noqa: TRY400
        return ExitCode.USAGE
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
            help="For the password and jwt_bearer grants [env SFSTREAM_USERNAME].",
        ),
        click.option(
            "--secrets-file",
            envvar="SFSTREAM_SECRETS_FILE",
            default=None,
            type=click.Path(path_type=Path),
            help="File (mode 600) holding SFSTREAM_CLIENT_SECRET, "
            "SFSTREAM_REFRESH_TOKEN, SFSTREAM_PASSWORD, SFSTREAM_PRIVATE_KEY (the JWT "
            "bearer grant's PEM key); without it they are read from the environment.",
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
            private_key=await secret("SFSTREAM_PRIVATE_KEY", "private_key" in needs),
        )

    try:
        return asyncio.run(resolve())
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from exc


@click.command()
@click.option(
    "--config",
    "-c",
    "config_path",
    envvar="SFSTREAM_CONFIG",
    default=None,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Log in as this connector configuration does (its salesforce section, secrets store "
    "and API version) and, without --channel, follow its streams [env SFSTREAM_CONFIG].",
)
@click.option(
    "--channel",
    "channels",
    multiple=True,
    help="Channel to follow, e.g. /data/AccountChangeEvent (repeatable); required without "
    "--config.",
)
@click.option(
    "--replay",
    "replay_from",
    default=None,
    type=int,
    help="-1: new events only; -2: every retained event first; N: after replayId N. "
    "[default: -1, or each configured stream's initial_replay]",
)
@click.option(
    "--on-invalid-replay",
    type=click.Choice(["fail", "earliest", "latest"]),
    default=None,
    help="When Salesforce rejects the replayId as invalid or expired. "
    "[default: fail, or each configured stream's on_invalid_replay]",
)
@click.option(
    "--max-messages",
    type=click.IntRange(min=1),
    default=None,
    help="Exit after printing this many events.",
)
@click.option(
    "--api-version",
    default=None,
    help=f"[default: {DEFAULT_API_VERSION}, or the configuration's salesforce.api_version]",
)
@click.option(
    "--log-level",
    default=None,
    type=click.Choice(["debug", "info", "warning", "error"]),
    help="[default: info, or the configuration's logging.level]",
)
@_login_options
@click.pass_context
def tail(
    ctx: click.Context,
    *,
    config_path: Path | None,
    channels: tuple[str, ...],
    replay_from: int | None,
    on_invalid_replay: str | None,
    max_messages: int | None,
    api_version: str | None,
    log_level: str | None,
    login_url: str,
    client_id: str | None,
    grant: str,
    username: str | None,
    secrets_file: Path | None,
    emulator_url: str | None,
) -> None:
    """Print the events of one or more channels as JSON lines on stdout.

    Logs go to stderr. With --config, the configuration says how to log in and, without
    --channel, which channels to follow. Exit codes: 0 when stopped (Ctrl+C,
    --max-messages), 1 when Salesforce refuses the login or every subscription, 2 for a
    usage or configuration error.
    """
    from sfstream.observability import configure_logging

    if replay_from is not None and replay_from < -2:
        raise click.BadParameter("must be -1, -2 or a replayId", param_hint="--replay")
    for channel in channels:
        if not channel.startswith("/"):
            raise click.BadParameter(f"{channel!r} must start with '/'", param_hint="--channel")
    policy = ReplayPolicy(on_invalid_replay) if on_invalid_replay is not None else None
    if config_path is not None:
        _refuse_login_options(ctx, config_path)
        from sfstream.cli.common import load

        config = load(config_path, log_level=log_level)

        def configured(out: BinaryIO) -> Coroutine[Any, Any, int]:
            return follow_configured(
                config,
                out,
                channels=channels,
                replay_from=replay_from,
                on_invalid_replay=policy,
                max_messages=max_messages,
                api_version=api_version,
            )

        sys.exit(run_tail(configured))
    if not channels:
        raise click.UsageError(
            "Missing option '--channel' (or --config FILE to follow its streams)"
        )
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
    configure_logging(level=log_level or "info", secrets=secrets)
    request = TailRequest(
        tuple(
            TailChannel(
                channel,
                LATEST if replay_from is None else replay_from,
                policy or ReplayPolicy.FAIL,
            )
            for channel in channels
        ),
        max_messages,
        api_version or DEFAULT_API_VERSION,
    )

    def flags(out: BinaryIO) -> Coroutine[Any, Any, int]:
        return follow(credentials, request, out)

    sys.exit(run_tail(flags))


def _refuse_login_options(ctx: click.Context, config_path: Path) -> None:
    """Login flags on the command line contradict a configuration's login (their
    environment variables are ignored with one)."""
    from click.core import ParameterSource

    given = [
        flag
        for name, flag in _LOGIN_OPTIONS.items()
        if ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE
    ]
    if given:
        source = ctx.get_parameter_source("config_path")
        where = "SFSTREAM_CONFIG" if source is ParameterSource.ENVIRONMENT else "--config"
        raise click.UsageError(
            f"{' and '.join(given)} cannot be combined with {where} ({config_path}): the "
            "configuration's salesforce section and secrets store say how to log in"
        )
