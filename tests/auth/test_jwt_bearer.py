"""The jwt_bearer grant: the assertion, pure, and the token provider against the emulator.

The key pair and certificate are made here (`tests.auth.keys`); the emulator holds the
certificate as the connected app would, and checks the assertion as Salesforce does.
"""

from __future__ import annotations

import sys
import time

import aiohttp
import jwt
import pytest
from pydantic import SecretStr
from structlog.testing import capture_logs

from sfstream.auth import OAuthCredentials, TokenProvider, TokenResponse
from sfstream.auth.oauth import (
    JWT_BEARER_GRANT,
    JWT_LIFETIME_S,
    jwt_assertion,
    parse_token_response,
    token_flow,
)
from sfstream.errors import AuthenticationError, ConfigError
from sfstream_emulator import Emulator, EmulatorSettings
from tests.auth.keys import ec_private_key, encrypted_private_key, key_pair

USER = "integration@sfstream.example"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(jwt_certificate=key_pair().certificate, username=USER)


def jwt_creds(
    login_url: str = "https://login.salesforce.com", **overrides: object
) -> OAuthCredentials:
    values: dict[str, object] = {
        "login_url": login_url,
        "client_id": "sfstream-emulator-client-id",
        "grant_type": "jwt_bearer",
        "username": USER,
        "private_key": SecretStr(key_pair().private_key),
    }
    values.update(overrides)
    return OAuthCredentials(**values)  # type: ignore[arg-type]


def certificate_key() -> object:
    from cryptography.x509 import load_pem_x509_certificate

    return load_pem_x509_certificate(key_pair().certificate.encode()).public_key()


# -- the assertion, pure -----------------------------------------------------------------------


def test_the_request_carries_only_a_signed_assertion() -> None:
    request = next(token_flow(jwt_creds(), clock=lambda: 1_700_000_000.9))
    assert request.url == "https://login.salesforce.com/services/oauth2/token"
    assert set(request.form) == {"grant_type", "assertion"}
    assert request.form["grant_type"] == JWT_BEARER_GRANT
    assertion = request.form["assertion"]
    assert jwt.get_unverified_header(assertion)["alg"] == "RS256"
    claims = jwt.decode(
        assertion,
        certificate_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience="https://login.salesforce.com",
        options={"verify_exp": False},
    )
    assert claims == {
        "iss": "sfstream-emulator-client-id",
        "sub": USER,
        "aud": "https://login.salesforce.com",
        "exp": 1_700_000_000 + JWT_LIFETIME_S,
    }
    assert JWT_LIFETIME_S <= 180  # Salesforce: at most 3 minutes ahead
    assert assertion not in repr(request)


def test_a_key_written_on_one_line_is_read() -> None:
    one_line = key_pair().private_key.strip().replace("\n", "\\n")
    assertion = jwt_assertion(
        jwt_creds(login_url="https://test.salesforce.com/", private_key=SecretStr(one_line)),
        time.time(),
    )
    claims = jwt.decode(
        assertion,
        certificate_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience="https://test.salesforce.com",
    )
    assert claims["aud"] == "https://test.salesforce.com"


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("not a key at all, s3cr3t", "salesforce.private_key is not a PEM private key"),
        (
            "-----BEGIN PRIVATE KEY-----\ns3cr3t\n-----END PRIVATE KEY-----",
            "salesforce.private_key is not a PEM private key",
        ),
        (encrypted_private_key(b"s3cr3t"), "salesforce.private_key is encrypted"),
        (ec_private_key(), "salesforce.private_key is not an RSA key"),
    ],
    ids=["text", "bad-pem", "encrypted", "ec"],
)
def test_an_unusable_key_is_a_config_error_that_never_shows_it(key: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected) as info:
        next(token_flow(jwt_creds(private_key=SecretStr(key))))
    assert not info.value.retryable
    assert "s3cr3t" not in str(info.value)
    assert info.value.__cause__ is None  # nothing cryptography says about the key
    assert info.value.__context__ is None or info.value.__suppress_context__


@pytest.mark.parametrize("module", ["jwt", "cryptography.hazmat.primitives.serialization"])
def test_without_the_jwt_extra_the_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import` raises ImportError
    with pytest.raises(ConfigError, match=r"pip install 'sfstream\[jwt\]'"):
        next(token_flow(jwt_creds()))


@pytest.mark.parametrize(
    ("error", "description", "expected"),
    [
        ("invalid_grant", "invalid assertion", "does not match salesforce.private_key"),
        ("invalid_grant", "user hasn't approved this consumer", "is not pre-authorized"),
        ("invalid_grant", "audience is invalid", "the audience is salesforce.login_url"),
        ("invalid_grant", "expired authorization code", "this machine's clock"),
        ("invalid_client_id", "client identifier invalid", "check salesforce.client_id"),
        ("invalid_grant", "something new", "check salesforce.client_id, salesforce.username"),
    ],
)
def test_refusals_say_what_to_change(error: str, description: str, expected: str) -> None:
    body = f'{{"error": "{error}", "error_description": "{description}"}}'.encode()
    with pytest.raises(AuthenticationError, match=expected) as info:
        parse_token_response(TokenResponse(400, body), jwt_creds())
    assert str(info.value).startswith("the JWT was refused: ")
    assert f"({error}: {description})" in str(info.value)
    assert not info.value.retryable


# -- the token provider against the emulator ------------------------------------------------


async def test_the_provider_logs_in_with_a_new_assertion_each_time(
    sfstream_emulator: Emulator,
) -> None:
    creds = jwt_creds(sfstream_emulator.login_url)
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(creds, http)
        with capture_logs() as logs:
            first = await provider.token()
            assert first.instance_url == sfstream_emulator.url
            assert first.refresh_token is None  # the JWT bearer flow never issues one
            assert await provider.token() is first
            second = await provider.refresh(first)  # no refresh token: a new assertion
        assert second is not first
        assert provider.refreshes == 2
        assert provider.rotations == 0
        assert sfstream_emulator.tokens.check(second.authorization()) is not None
        assert "PRIVATE KEY" not in repr(logs)
        assert "PRIVATE KEY" not in repr(provider)


async def test_a_wrong_key_is_refused_once_and_clearly(sfstream_emulator: Emulator) -> None:
    other = key_pair("someone-else").private_key
    creds = jwt_creds(sfstream_emulator.login_url, private_key=SecretStr(other))
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(creds, http)
        with pytest.raises(AuthenticationError) as info:
            await provider.token()
    assert str(info.value) == (
        "the JWT was refused: the certificate of the connected app does not match "
        "salesforce.private_key (invalid_grant: invalid assertion)"
    )
    assert not info.value.retryable
    assert provider.refreshes == 1
    assert sfstream_emulator.tokens.grants_issued == 0


async def test_an_expired_assertion_is_refused(sfstream_emulator: Emulator) -> None:
    # The emulated org is ten minutes ahead of this machine: the assertion is already old.
    sfstream_emulator.clock.advance(600)
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(jwt_creds(sfstream_emulator.login_url), http)
        with pytest.raises(AuthenticationError, match="check that this machine's clock is right"):
            await provider.token()


async def test_an_assertion_for_another_audience_is_refused(sfstream_emulator: Emulator) -> None:
    # Same server, other name: the assertion's `aud` is not the org's login URL.
    other_name = sfstream_emulator.url.replace("localhost", "127.0.0.1")
    assert other_name != sfstream_emulator.url
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(jwt_creds(other_name), http)
        with pytest.raises(AuthenticationError, match=r"the audience is salesforce\.login_url"):
            await provider.token()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"username": "someone@else.example"}, "salesforce.username is not pre-authorized"),
        ({"client_id": "unknown-consumer-key"}, "Salesforce does not know the connected app"),
    ],
)
async def test_another_user_or_app_is_refused(
    sfstream_emulator: Emulator, overrides: dict[str, object], expected: str
) -> None:
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(jwt_creds(sfstream_emulator.login_url, **overrides), http)
        with pytest.raises(AuthenticationError, match=expected):
            await provider.token()


async def test_client_credentials_log_in_through_the_same_provider(
    sfstream_emulator: Emulator,
) -> None:
    c = sfstream_emulator.credentials
    creds = OAuthCredentials(
        login_url=c["login_url"],
        client_id=c["client_id"],
        client_secret=SecretStr(c["client_secret"]),
        grant_type="client_credentials",
    )
    async with aiohttp.ClientSession() as http:
        provider = TokenProvider(creds, http)
        first = await provider.token()
        second = await provider.refresh(first)
        assert first.refresh_token is None
        assert second is not first
        assert sfstream_emulator.tokens.check(second.authorization()) is not None
        wrong = TokenProvider(
            OAuthCredentials(
                login_url=c["login_url"],
                client_id=c["client_id"],
                client_secret=SecretStr("not-the-secret"),
                grant_type="client_credentials",
            ),
            http,
        )
        with pytest.raises(AuthenticationError, match="check the consumer key and secret"):
            await wrong.token()
