"""OAuth 2.0 token endpoint, revocation, expiry and the identity URL, over real HTTP."""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sfstream_emulator import Clock, Emulator, EmulatorSettings

FROZEN_AT = 1_700_000_000.25
SESSION_INVALID = [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]


async def token_request(
    http: aiohttp.ClientSession,
    emu: Emulator,
    form: dict[str, str],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, Any], aiohttp.ClientResponse]:
    async with http.post(emu.token_url, data=form, headers=headers) as response:
        body = await response.json()
        return response.status, body, response


def refresh_form(emu: Emulator, **overrides: str) -> dict[str, str]:
    creds = emu.credentials
    form = {
        "grant_type": "refresh_token",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "refresh_token": creds["refresh_token"],
    }
    form.update(overrides)
    return form


def basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


async def rest_status(http: aiohttp.ClientSession, emu: Emulator, authorization: str) -> int:
    async with http.get(
        f"{emu.url}/services/data/v62.0/limits", headers={"Authorization": authorization}
    ) as response:
        if response.status == 401:
            assert await response.json() == SESSION_INVALID
        return response.status


@pytest_asyncio.fixture
async def frozen_emu() -> AsyncIterator[Emulator]:
    async with Emulator(EmulatorSettings(seed=3), clock=Clock(frozen_at=FROZEN_AT)) as emulator:
        yield emulator


# -- successful grants --------------------------------------------------------------------


async def test_refresh_token_grant_returns_salesforce_token_json(
    frozen_emu: Emulator, http: aiohttp.ClientSession
) -> None:
    emu = frozen_emu
    status, body, response = await token_request(http, emu, refresh_form(emu))
    assert status == 200
    assert response.content_type == "application/json"
    assert "no-store" in response.headers["Cache-Control"]
    assert set(body) == {
        "access_token",
        "signature",
        "scope",
        "instance_url",
        "id",
        "token_type",
        "issued_at",
    }
    spec = emu.runtime.spec
    assert body["instance_url"] == emu.url
    assert body["id"] == f"{emu.url}/id/{spec.org_id}/{spec.user.id}"
    assert body["token_type"] == "Bearer"
    assert body["issued_at"] == "1700000000250"
    assert isinstance(body["issued_at"], str)
    expected = base64.b64encode(
        hmac.new(
            emu.credentials["client_secret"].encode(),
            (body["id"] + body["issued_at"]).encode(),
            hashlib.sha256,
        ).digest()
    ).decode()
    assert body["signature"] == expected
    assert set(body["scope"].split(" ")) >= {"api", "refresh_token", "id"}
    # A refresh response carries no new refresh token unless rotation is enabled.
    assert "refresh_token" not in body
    assert body["access_token"].startswith(spec.org_id[:15] + "!")
    assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_every_grant_issues_a_distinct_working_token(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    _, first, _ = await token_request(http, emu, refresh_form(emu))
    _, second, _ = await token_request(http, emu, refresh_form(emu))
    assert first["access_token"] != second["access_token"]
    for body in (first, second):
        assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_password_grant(emu: Emulator, http: aiohttp.ClientSession) -> None:
    creds = emu.credentials
    status, body, _ = await token_request(
        http,
        emu,
        {
            "grant_type": "password",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
            "username": creds["username"],
            "password": creds["password"],
        },
    )
    assert status == 200
    assert body["token_type"] == "Bearer"
    assert body["instance_url"] == emu.url
    assert "refresh_token" not in body
    assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_client_credentials_grant(emu: Emulator, http: aiohttp.ClientSession) -> None:
    creds = emu.credentials
    status, body, _ = await token_request(
        http,
        emu,
        {
            "grant_type": "client_credentials",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
        },
    )
    assert status == 200
    assert "refresh_token" not in body
    assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_secret_in_http_basic_auth(emu: Emulator, http: aiohttp.ClientSession) -> None:
    creds = emu.credentials
    form = {"grant_type": "refresh_token", "refresh_token": creds["refresh_token"]}
    headers = basic(creds["client_id"], creds["client_secret"])
    status, body, _ = await token_request(http, emu, form, headers)
    assert status == 200, body
    assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_client_credentials_with_http_basic(
    emu: Emulator, http: aiohttp.ClientSession
) -> None:
    creds = emu.credentials
    status, body, _ = await token_request(
        http,
        emu,
        {"grant_type": "client_credentials"},
        basic(creds["client_id"], creds["client_secret"]),
    )
    assert status == 200, body


async def test_wrong_secret_in_http_basic(emu: Emulator, http: aiohttp.ClientSession) -> None:
    creds = emu.credentials
    form = {"grant_type": "refresh_token", "refresh_token": creds["refresh_token"]}
    status, body, _ = await token_request(http, emu, form, basic(creds["client_id"], "nope"))
    assert (status, body) == (
        400,
        {"error": "invalid_client", "error_description": "invalid client credentials"},
    )


async def test_garbage_http_basic_header(emu: Emulator, http: aiohttp.ClientSession) -> None:
    creds = emu.credentials
    form = {"grant_type": "refresh_token", "refresh_token": creds["refresh_token"]}
    status, body, _ = await token_request(http, emu, form, {"Authorization": "Basic ***"})
    assert (status, body["error"]) == (400, "invalid_client")


async def test_rest_accepts_every_authorization_form(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for header in ("Bearer {t}", "OAuth {t}", "{t}", "bearer {t}", "  Bearer   {t}  "):
        with subtests.test(header):
            assert await rest_status(http, emu, header.format(t=token)) == 200


# -- refusals ---------------------------------------------------------------------------


GRANT_ERRORS: list[tuple[dict[str, str], str, str]] = [
    ({"refresh_token": "not-a-token"}, "invalid_grant", "expired access/refresh token"),
    ({"refresh_token": ""}, "invalid_grant", "expired access/refresh token"),
    ({"client_secret": "wrong"}, "invalid_client", "invalid client credentials"),
    ({"client_id": "someone-else"}, "invalid_client_id", "client identifier invalid"),
    ({"client_id": ""}, "invalid_client_id", "client identifier invalid"),
    ({"grant_type": "authorization_code"}, "unsupported_grant_type", "grant type not supported"),
    # Supported, but a refresh-token form carries no assertion (tests/emulator/test_oauth_jwt.py).
    (
        {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer"},
        "invalid_grant",
        "invalid assertion",
    ),
    ({"grant_type": ""}, "unsupported_grant_type", "grant type not supported"),
]


async def test_refresh_grant_errors(
    emu: Emulator, http: aiohttp.ClientSession, subtests: pytest.Subtests
) -> None:
    for overrides, error, description in GRANT_ERRORS:
        with subtests.test(**overrides):
            status, body, response = await token_request(http, emu, refresh_form(emu, **overrides))
            assert status == 400
            assert response.content_type == "application/json"
            assert body == {"error": error, "error_description": description}
    # None of the refusals cost the refresh token its validity.
    status, _, _ = await token_request(http, emu, refresh_form(emu))
    assert status == 200


async def test_secret_is_required_by_default(emu: Emulator, http: aiohttp.ClientSession) -> None:
    form = refresh_form(emu)
    del form["client_secret"]
    status, body, _ = await token_request(http, emu, form)
    assert (status, body["error"]) == (400, "invalid_client")


@pytest.mark.parametrize(
    ("username", "password"),
    [
        ("integration@sfstream.example", "wrong"),
        ("nobody@example.com", "sfstream-emulator-password"),
    ],
    ids=["bad-password", "unknown-user"],
)
async def test_password_grant_authentication_failure(
    emu: Emulator, http: aiohttp.ClientSession, username: str, password: str
) -> None:
    creds = emu.credentials
    status, body, _ = await token_request(
        http,
        emu,
        {
            "grant_type": "password",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
            "username": username,
            "password": password,
        },
    )
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "authentication failure"},
    )


async def test_client_credentials_needs_the_secret_even_when_optional(
    http: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorSettings(require_client_secret=False, seed=1)) as emu:
        creds = emu.credentials
        form = refresh_form(emu)
        del form["client_secret"]
        status, _, _ = await token_request(http, emu, form)
        assert status == 200
        status, body, _ = await token_request(
            http, emu, {"grant_type": "client_credentials", "client_id": creds["client_id"]}
        )
        assert (status, body["error"]) == (400, "invalid_client")
        # A wrong secret is refused even when none is required.
        status, body, _ = await token_request(http, emu, refresh_form(emu, client_secret="x"))
        assert (status, body["error"]) == (400, "invalid_client")


# -- expiry and revocation ---------------------------------------------------------------


async def test_access_token_expires_after_the_session_timeout(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    ttl = emu.settings.access_token_ttl_s
    emu.advance(ttl - 1)
    assert await rest_status(http, emu, f"Bearer {token}") == 200
    emu.advance(2)
    assert await rest_status(http, emu, f"Bearer {token}") == 401
    # The refresh token still works and yields a live token.
    status, body, _ = await token_request(http, emu, refresh_form(emu))
    assert status == 200
    assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_short_ttl_setting(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorSettings(access_token_ttl_s=60, seed=2)) as emu:
        token = emu.access_token()
        assert await rest_status(http, emu, token) == 200
        emu.advance(61)
        assert await rest_status(http, emu, token) == 401


async def test_revoke_endpoint_with_access_token(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    other = emu.access_token()
    async with http.post(f"{emu.url}/services/oauth2/revoke", data={"token": token}) as response:
        assert response.status == 200
    assert await rest_status(http, emu, f"Bearer {token}") == 401
    # Only that token is revoked.
    assert await rest_status(http, emu, f"Bearer {other}") == 200
    status, _, _ = await token_request(http, emu, refresh_form(emu))
    assert status == 200


def password_form(emu: Emulator) -> dict[str, str]:
    creds = emu.credentials
    return {
        "grant_type": "password",
        "client_id": creds["client_id"],
        "client_secret": creds["client_secret"],
        "username": creds["username"],
        "password": creds["password"],
    }


async def test_revoke_endpoint_with_refresh_token(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    _, other_session, _ = await token_request(http, emu, password_form(emu))
    refresh = emu.credentials["refresh_token"]
    async with http.post(f"{emu.url}/services/oauth2/revoke", data={"token": refresh}) as response:
        assert response.status == 200
    status, body, _ = await token_request(http, emu, refresh_form(emu))
    assert (status, body) == (
        400,
        {"error": "invalid_grant", "error_description": "expired access/refresh token"},
    )
    # Access tokens issued from the revoked refresh token die with it...
    assert await rest_status(http, emu, f"Bearer {token}") == 401
    # ...sessions from another grant do not.
    assert await rest_status(http, emu, f"Bearer {other_session['access_token']}") == 200


async def test_revoking_a_rotated_refresh_token_ends_the_grant(
    http: aiohttp.ClientSession,
) -> None:
    async with Emulator(EmulatorSettings(rotate_refresh_tokens=True, seed=5)) as emu:
        _, first, _ = await token_request(http, emu, refresh_form(emu))
        _, second, _ = await token_request(
            http, emu, refresh_form(emu, refresh_token=first["refresh_token"])
        )
        async with http.post(
            f"{emu.url}/services/oauth2/revoke", data={"token": second["refresh_token"]}
        ) as response:
            assert response.status == 200
        for body in (first, second):
            assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 401
        status, _, _ = await token_request(
            http, emu, refresh_form(emu, refresh_token=second["refresh_token"])
        )
        assert status == 400


async def test_revoke_endpoint_token_in_query_string(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    async with http.post(f"{emu.url}/services/oauth2/revoke", params={"token": token}) as response:
        assert response.status == 200
    assert await rest_status(http, emu, f"Bearer {token}") == 401


async def test_revoke_unknown_token(emu: Emulator, http: aiohttp.ClientSession) -> None:
    async with http.post(f"{emu.url}/services/oauth2/revoke", data={"token": "nope"}) as response:
        assert response.status == 400
        body = await response.json()
    assert body["error"] == "unsupported_token_type"


async def test_control_revoke_access_tokens(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    assert emu.revoke_access_tokens() == 1
    assert await rest_status(http, emu, f"Bearer {token}") == 401
    assert emu.revoke_access_tokens() == 0
    status, body, _ = await token_request(http, emu, refresh_form(emu))
    assert status == 200
    assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


async def test_control_revoke_refresh_tokens(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    assert emu.revoke_refresh_tokens() == 1
    assert await rest_status(http, emu, f"Bearer {token}") == 401
    status, body, _ = await token_request(http, emu, refresh_form(emu))
    assert (status, body["error"]) == (400, "invalid_grant")
    # The password flow does not depend on refresh tokens.
    creds = emu.credentials
    status, _, _ = await token_request(
        http,
        emu,
        {
            "grant_type": "password",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
            "username": creds["username"],
            "password": creds["password"],
        },
    )
    assert status == 200
    emu.tokens.restore_refresh_token()
    status, _, _ = await token_request(http, emu, refresh_form(emu))
    assert status == 200


async def test_refresh_token_rotation(http: aiohttp.ClientSession) -> None:
    async with Emulator(EmulatorSettings(rotate_refresh_tokens=True, seed=4)) as emu:
        original = emu.credentials["refresh_token"]
        status, body, _ = await token_request(http, emu, refresh_form(emu))
        assert status == 200
        rotated = body["refresh_token"]
        assert rotated != original
        # The used refresh token is invalidated...
        status, again, _ = await token_request(http, emu, refresh_form(emu))
        assert (status, again["error"]) == (400, "invalid_grant")
        # ...and the new one works once, rotating again.
        status, body, _ = await token_request(http, emu, refresh_form(emu, refresh_token=rotated))
        assert status == 200
        assert body["refresh_token"] not in (original, rotated)
        status, _, _ = await token_request(http, emu, refresh_form(emu, refresh_token=rotated))
        assert status == 400
        # Access tokens issued along the way stay valid.
        assert await rest_status(http, emu, f"Bearer {body['access_token']}") == 200


# -- identity URL ---------------------------------------------------------------------------


async def test_identity_url(emu: Emulator, http: aiohttp.ClientSession) -> None:
    _, grant, _ = await token_request(http, emu, refresh_form(emu))
    spec = emu.runtime.spec
    async with http.get(
        grant["id"], headers={"Authorization": f"Bearer {grant['access_token']}"}
    ) as response:
        assert response.status == 200
        body = await response.json()
    assert body["id"] == grant["id"]
    assert body["user_id"] == spec.user.id
    assert body["organization_id"] == spec.org_id
    assert body["username"] == spec.user.username
    assert body["display_name"] == spec.user.name
    assert body["active"] is True
    assert body["urls"]["rest"] == f"{emu.url}/services/data/v{{version}}/"
    assert body["urls"]["sobjects"] == f"{emu.url}/services/data/v{{version}}/sobjects/"


async def test_identity_url_needs_a_live_token(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    spec = emu.runtime.spec
    url = f"{emu.url}/id/{spec.org_id}/{spec.user.id}"
    async with http.get(url) as response:
        assert response.status == 403
        assert await response.text() == "Bad_OAuth_Token"
    emu.revoke_access_tokens()
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 403


async def test_identity_url_of_another_user(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    url = f"{emu.url}/id/{emu.runtime.spec.org_id}/005000000000000AAA"
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 404
