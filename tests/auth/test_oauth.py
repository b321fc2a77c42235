"""The OAuth flow, pure and against the emulator's token endpoint."""

from __future__ import annotations

import asyncio
import base64

import aiohttp
import orjson
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import (
    AccessToken,
    OAuthCredentials,
    TokenProvider,
    TokenResponse,
    token_flow,
)
from sfstream.errors import AuthenticationError, ConfigError, ProtocolError, TransportError
from sfstream_emulator import Emulator, EmulatorSettings

SECRET = "s3cr3t-value"
REFRESH = "r3fr3sh-value"


def creds(**overrides: object) -> OAuthCredentials:
    values: dict[str, object] = {
        "login_url": "https://login.salesforce.com",
        "client_id": "key",
        "client_secret": SecretStr(SECRET),
        "refresh_token": SecretStr(REFRESH),
    }
    values.update(overrides)
    return OAuthCredentials(**values)  # type: ignore[arg-type]


def run(credentials: OAuthCredentials, status: int, body: object) -> AccessToken:
    flow = token_flow(credentials)
    next(flow)
    try:
        flow.send(TokenResponse(status, orjson.dumps(body)))
    except StopIteration as done:
        token: AccessToken = done.value
        return token
    raise AssertionError("the flow wanted a second request")


def test_refresh_request_is_form_encoded_with_the_secret_in_the_body() -> None:
    request = next(token_flow(creds()))
    assert request.url == "https://login.salesforce.com/services/oauth2/token"
    assert request.form == {
        "grant_type": "refresh_token",
        "client_id": "key",
        "client_secret": SECRET,
        "refresh_token": REFRESH,
    }
    assert SECRET not in repr(request)
    assert REFRESH not in repr(request)


def test_password_grant_request() -> None:
    request = next(
        token_flow(
            creds(
                grant_type="password",
                username="u@x.com",
                password=SecretStr("pw"),
                refresh_token=None,
            )
        )
    )
    assert request.form["grant_type"] == "password"
    assert request.form["username"] == "u@x.com"
    assert request.form["password"] == "pw"
    assert "refresh_token" not in request.form


def test_success_becomes_an_access_token_that_hides_its_value() -> None:
    token = run(
        creds(),
        200,
        {
            "access_token": "00Dxx!AQ.tok",
            "instance_url": "https://x.my/",
            "token_type": "Bearer",
            "issued_at": "1708058728442",
            "id": "https://login/id/00D/005",
        },
    )
    assert token.instance_url == "https://x.my"
    assert token.issued_at_ms == 1708058728442
    assert token.authorization() == "Bearer 00Dxx!AQ.tok"
    assert "00Dxx!AQ.tok" not in repr(token)


@pytest.mark.parametrize(
    ("error", "description", "expected"),
    [
        ("invalid_grant", "expired access/refresh token", "Re-authorize the connected app"),
        ("invalid_client", "invalid client credentials", "consumer key and secret"),
        ("invalid_client_id", "client identifier invalid", "consumer key and secret"),
    ],
)
def test_refusals_are_terminal_with_advice(error: str, description: str, expected: str) -> None:
    with pytest.raises(AuthenticationError, match=expected) as info:
        run(creds(), 400, {"error": error, "error_description": description})
    assert not info.value.retryable
    assert SECRET not in str(info.value)
    assert REFRESH not in str(info.value)


@pytest.mark.parametrize("status", [500, 502, 503, 429])
def test_server_errors_are_retryable(status: int) -> None:
    with pytest.raises(TransportError):
        run(creds(), status, {"error": "busy"})


def test_garbage_is_a_protocol_error() -> None:
    flow = token_flow(creds())
    next(flow)
    with pytest.raises(ProtocolError):
        flow.send(TokenResponse(200, b"<html>maintenance</html>"))


@pytest.mark.parametrize(
    "overrides",
    [
        {"login_url": "login.salesforce.com"},
        {"refresh_token": None},
        {"grant_type": "password", "username": None},
        {"grant_type": "client_credentials", "client_secret": None},
    ],
)
def test_incomplete_credentials_are_config_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        creds(**overrides)


async def test_provider_gets_a_token_from_the_emulator(sfstream_emulator: Emulator) -> None:
    c = sfstream_emulator.credentials
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(
            creds(
                login_url=c["login_url"],
                client_id=c["client_id"],
                client_secret=SecretStr(c["client_secret"]),
                refresh_token=SecretStr(c["refresh_token"]),
            ),
            http,
        )
        token = await provider.token()
        assert token.instance_url == sfstream_emulator.url
        assert await provider.token() is token
        assert provider.refreshes == 1


async def test_concurrent_refreshes_share_one_request(sfstream_emulator: Emulator) -> None:
    c = sfstream_emulator.credentials
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(
            creds(
                login_url=c["login_url"],
                client_id=c["client_id"],
                client_secret=SecretStr(c["client_secret"]),
                refresh_token=SecretStr(c["refresh_token"]),
            ),
            http,
        )
        stale = await provider.token()
        grants = sfstream_emulator.tokens.grants_issued
        fresh = await asyncio.gather(*(provider.refresh(stale) for _ in range(10)))
        assert len({id(t) for t in fresh}) == 1
        assert fresh[0] is not stale
        assert sfstream_emulator.tokens.grants_issued == grants + 1
        # Reporting the old token again changes nothing: the current one is already new.
        assert await provider.refresh(stale) is fresh[0]


async def test_basic_auth_is_not_needed_but_accepted_by_the_emulator(
    sfstream_emulator: Emulator,
) -> None:
    c = sfstream_emulator.credentials
    basic = base64.b64encode(f"{c['client_id']}:{c['client_secret']}".encode()).decode()
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            sfstream_emulator.token_url,
            data={"grant_type": "refresh_token", "refresh_token": c["refresh_token"]},
            headers={"Authorization": f"Basic {basic}"},
        ) as response,
    ):
        assert response.status == 200


async def test_unreachable_login_url_is_retryable() -> None:
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(creds(login_url="http://127.0.0.1:9"), http, timeout_s=5)
        with pytest.raises(TransportError):
            await provider.token()


def test_a_refresh_token_in_the_response_is_kept_hidden() -> None:
    token = run(
        creds(),
        200,
        {
            "access_token": "00Dxx!AQ.tok",
            "instance_url": "https://x.my",
            "refresh_token": "5Aep.new",
        },
    )
    assert token.refresh_token is not None
    assert token.refresh_token.get_secret_value() == "5Aep.new"
    assert "5Aep.new" not in repr(token)
    assert (
        run(creds(), 200, {"access_token": "t", "instance_url": "https://x.my"}).refresh_token
        is None
    )


def test_an_access_token_is_shown_and_compared_without_its_refresh_token() -> None:
    token = AccessToken(SecretStr("t"), "https://x.my", refresh_token=SecretStr("5Aep.one"))
    rotated = AccessToken(SecretStr("t"), "https://x.my", refresh_token=SecretStr("5Aep.two"))
    assert repr(token) == (
        "AccessToken(value=SecretStr('**********'), instance_url='https://x.my', "
        "token_type='Bearer', issued_at_ms=None, identity_url=None)"
    )
    assert token == rotated
    assert hash(token) == hash(rotated)
    assert token != AccessToken(SecretStr("u"), "https://x.my")
    assert token != AccessToken(SecretStr("t"), "https://x.my", issued_at_ms=1)


def test_token_requests_and_responses_show_no_secret() -> None:
    request = next(token_flow(creds()))
    assert repr(request) == (
        "TokenRequest(url='https://login.salesforce.com/services/oauth2/token')"
    )
    response = TokenResponse(200, orjson.dumps({"access_token": "00Dxx!AQ.tok"}))
    assert repr(response) == "TokenResponse(status=200)"
    assert repr(creds()).count("SecretStr('**********')") == 2
    assert SECRET not in repr(creds())


def emulator_creds(emu: Emulator) -> OAuthCredentials:
    c = emu.credentials
    return creds(
        login_url=c["login_url"],
        client_id=c["client_id"],
        client_secret=SecretStr(c["client_secret"]),
        refresh_token=SecretStr(c["refresh_token"]),
    )


def valid_refresh_tokens(emu: Emulator) -> list[str]:
    return [token for token, valid in emu.tokens.refresh_tokens.items() if valid]


async def test_provider_follows_rotated_refresh_tokens_and_reports_each() -> None:
    async with (
        Emulator(EmulatorSettings(rotate_refresh_tokens=True)) as emu,
        aiohttp.ClientSession() as http,
    ):
        reported: list[str] = []

        async def keep(token: SecretStr) -> None:
            reported.append(token.get_secret_value())

        original = emu.credentials["refresh_token"]
        provider = TokenProvider(emulator_creds(emu), http, on_refresh_token_rotated=keep)
        with capture_logs() as logs:
            first = await provider.token()
            # Salesforce rotated the refresh token: only the one it sent back is valid now.
            assert valid_refresh_tokens(emu) == reported
            assert original not in reported
            second = await provider.refresh(first)  # would be invalid_grant with the old one
            third = await provider.refresh(second)
        assert third is not second
        assert len(reported) == 3
        assert len(set(reported)) == 3
        assert valid_refresh_tokens(emu) == reported[-1:]
        assert provider.credentials.refresh_token is not None
        assert provider.credentials.refresh_token.get_secret_value() == reported[-1]
        assert (provider.refreshes, provider.rotations) == (3, 3)
        assert [e["event"] for e in logs] == ["refresh_token_rotated"] * 3
        for value in [original, *reported]:
            assert value not in repr(logs)
            assert value not in repr(provider)


async def test_a_failing_rotation_callback_does_not_fail_the_refresh() -> None:
    async with (
        Emulator(EmulatorSettings(rotate_refresh_tokens=True)) as emu,
        aiohttp.ClientSession() as http,
    ):
        seen: list[str] = []

        async def broken(token: SecretStr) -> None:
            seen.append(token.get_secret_value())
            raise OSError(f"disk full while writing {token.get_secret_value()}")

        provider = TokenProvider(emulator_creds(emu), http, on_refresh_token_rotated=broken)
        with capture_logs() as logs:
            first = await provider.token()
            second = await provider.refresh(first)
        assert second is not first
        assert provider.rotation_callback_failures == 2
        warnings = [e for e in logs if e["log_level"] == "warning"]
        assert [e["event"] for e in warnings] == ["refresh_token_rotation_not_saved"] * 2
        assert warnings[0]["error"] == "OSError"
        assert "restart" in warnings[0]["note"]
        for value in seen:
            assert value not in repr(logs)


async def test_a_hanging_rotation_callback_is_given_up_on() -> None:
    async with (
        Emulator(EmulatorSettings(rotate_refresh_tokens=True)) as emu,
        aiohttp.ClientSession() as http,
    ):

        async def hangs(token: SecretStr) -> None:
            await asyncio.sleep(60)

        provider = TokenProvider(
            emulator_creds(emu), http, timeout_s=0.5, on_refresh_token_rotated=hangs
        )
        token = await provider.token()
        assert token.instance_url == emu.url
        assert provider.rotation_callback_failures == 1


async def test_no_rotation_no_report(sfstream_emulator: Emulator) -> None:
    reported: list[SecretStr] = []

    async def keep(token: SecretStr) -> None:
        reported.append(token)

    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(
            emulator_creds(sfstream_emulator), http, on_refresh_token_rotated=keep
        )
        await provider.refresh(await provider.token())
    assert reported == []
    assert provider.rotations == 0
    assert provider.credentials.refresh_token is not None
    assert (
        provider.credentials.refresh_token.get_secret_value()
        == (sfstream_emulator.credentials["refresh_token"])
    )
