"""The JWT bearer grant at the emulator's token endpoint, with assertions made by hand.

The emulator holds the connected app's certificate and checks `iss`, the RS256 signature,
`aud`, `exp` and `sub` with Salesforce's error codes and texts.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest
from click.testing import CliRunner
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from pydantic import ValidationError

from sfstream_emulator import Emulator, EmulatorSettings
from sfstream_emulator.cli import main
from tests.auth.keys import key_pair

GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
INVALID_ASSERTION = {"error": "invalid_grant", "error_description": "invalid assertion"}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(jwt_certificate=key_pair().certificate, poll_timeout_s=1.0)


def assertion(emu: Emulator, key: str | None = None, alg: str = "RS256", **claims: Any) -> str:
    values: dict[str, Any] = {
        "iss": emu.credentials["client_id"],
        "sub": emu.credentials["username"],
        "aud": emu.login_url,
        "exp": int(emu.clock.now()) + 180,
    }
    values.update(claims)
    values = {k: v for k, v in values.items() if v is not None}
    if alg == "HS256":
        return jwt.encode(values, "a-shared-secret-of-thirty-two-bytes!", algorithm=alg)
    signing = load_pem_private_key((key or key_pair().private_key).encode(), password=None)
    return jwt.encode(values, signing, algorithm=alg)  # type: ignore[arg-type]


async def post(
    http: aiohttp.ClientSession, emu: Emulator, form: dict[str, str]
) -> tuple[int, dict[str, Any]]:
    async with http.post(emu.token_url, data=form) as response:
        return response.status, await response.json()


async def test_a_signed_assertion_gets_a_token_and_no_refresh_token(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    status, body = await post(http, emu, {"grant_type": GRANT, "assertion": assertion(emu)})
    assert status == 200, body
    assert set(body) == {
        "access_token",
        "signature",
        "scope",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
    }
    assert body["instance_url"] == emu.url
    assert emu.tokens.check(f"Bearer {body['access_token']}") is not None


@pytest.mark.parametrize(
    "audience", ["https://login.salesforce.com", "https://test.salesforce.com"]
)
async def test_the_standard_login_urls_are_accepted_audiences(
    emu: Emulator, http: aiohttp.ClientSession, audience: str
) -> None:
    form = {"grant_type": GRANT, "assertion": assertion(emu, aud=audience)}
    assert (await post(http, emu, form))[0] == 200


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        ({"key": key_pair("other").private_key}, INVALID_ASSERTION),
        ({"alg": "HS256"}, INVALID_ASSERTION),
        ({"alg": "RS512"}, INVALID_ASSERTION),
        (
            {"iss": "unknown-consumer-key"},
            {"error": "invalid_client_id", "error_description": "client identifier invalid"},
        ),
        (
            {"aud": "https://elsewhere.example"},
            {"error": "invalid_grant", "error_description": "audience is invalid"},
        ),
        ({"aud": None}, {"error": "invalid_grant", "error_description": "audience is invalid"}),
        (
            {"exp": int(time.time()) - 1},
            {"error": "invalid_grant", "error_description": "expired authorization code"},
        ),
        (
            {"exp": None},
            {"error": "invalid_grant", "error_description": "expired authorization code"},
        ),
        (
            {"sub": "someone@else.example"},
            {"error": "invalid_grant", "error_description": "user hasn't approved this consumer"},
        ),
    ],
    ids=["other-key", "hs256", "rs512", "iss", "aud", "no-aud", "exp", "no-exp", "sub"],
)
async def test_refusals_in_salesforce_words(
    emu: Emulator, http: aiohttp.ClientSession, claims: dict[str, Any], expected: dict[str, str]
) -> None:
    status, body = await post(
        http, emu, {"grant_type": GRANT, "assertion": assertion(emu, **claims)}
    )
    assert (status, body) == (400, expected)
    assert emu.tokens.grants_issued == 0


async def test_an_assertion_expires_in_emulated_time(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    made = assertion(emu)
    emu.clock.advance(181)
    status, body = await post(http, emu, {"grant_type": GRANT, "assertion": made})
    assert (status, body["error_description"]) == (400, "expired authorization code")


@pytest.mark.parametrize("value", ["", "not.a.jwt", "a.b.c"])
async def test_garbage_is_an_invalid_assertion(
    emu: Emulator, http: aiohttp.ClientSession, value: str
) -> None:
    assert await post(http, emu, {"grant_type": GRANT, "assertion": value}) == (
        400,
        INVALID_ASSERTION,
    )


async def test_without_a_certificate_every_assertion_is_refused(
    http: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorSettings()) as emu:
        status, body = await post(http, emu, {"grant_type": GRANT, "assertion": assertion(emu)})
    assert (status, body) == (400, INVALID_ASSERTION)


def test_the_certificate_setting_must_be_a_pem_certificate() -> None:
    with pytest.raises(ValidationError, match="jwt_certificate is not a PEM certificate"):
        EmulatorSettings(jwt_certificate="-----BEGIN CERTIFICATE-----\nnope\n")


def test_the_cli_option_refuses_a_file_that_is_no_certificate(tmp_path: Path) -> None:
    path = tmp_path / "app.key"
    path.write_text(key_pair().private_key)
    result = CliRunner().invoke(main, ["--port", "0", "--jwt-certificate", str(path)])
    assert result.exit_code == 2
    assert "Invalid value for '--jwt-certificate'" in result.output
    assert f"{path}: jwt_certificate is not a PEM certificate" in result.output
    assert "PRIVATE KEY" not in result.output
