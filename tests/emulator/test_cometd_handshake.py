"""`/meta/handshake` and what every later request needs: version, token, cookie."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest
from yarl import URL

from sfstream_emulator import Emulator, EmulatorSettings
from tests.emulator.conftest import Bayeux

UNSUPPORTED = (
    "400::Unsupported API version. Only API versions '37.0' and later are supported. "
    "URI format: '/cometd/62.0'"
)
MISSING = "400::API version in the URI is mandatory. URI format: '/cometd/62.0'"
HANDSHAKE: dict[str, Any] = {
    "channel": "/meta/handshake",
    "version": "1.0",
    "minimumVersion": "1.0",
    "supportedConnectionTypes": ["long-polling"],
    "id": "1",
}


async def _post(
    http: aiohttp.ClientSession, url: str, body: Any, headers: dict[str, str]
) -> tuple[int, Any]:
    async with http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def test_versions_below_37_are_refused(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for version in ["36.0", "23.0", "20.0", "36.9", "nan", "inf", "1e3", "abc", "-40.0"]:
        with subtests.test(version=version):
            status, body = await _post(
                http,
                f"{emu.url}/cometd/{version}",
                [HANDSHAKE],
                {"Authorization": f"Bearer {token}"},
            )
            assert status == 400
            assert body == [{"successful": False, "error": UNSUPPORTED}]
    assert emu.cometd.sessions == {}


async def test_missing_version_is_refused(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for path in ["/cometd", "/cometd/"]:
        with subtests.test(path=path):
            status, body = await _post(
                http, f"{emu.url}{path}", [HANDSHAKE], {"Authorization": f"Bearer {token}"}
            )
            assert status == 400
            assert body == [{"successful": False, "error": MISSING}]


async def test_versions_from_37_are_served(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for version in ["37.0", "45.0", "58.0", "62.0", "65.0"]:
        with subtests.test(version=version):
            client = Bayeux(http, emu.cometd_url(version), token)
            reply = await client.handshake()
            assert reply["successful"] is True
            _, connect = await client.connect()
            assert connect["successful"] is True


async def test_handshake_reply_shape(bayeux: Bayeux) -> None:
    reply = await bayeux.handshake()
    client_id = reply["clientId"]
    assert isinstance(client_id, str)
    assert len(client_id) >= 20
    assert reply == {
        "ext": {"replay": True, "payload.format": True},
        "minimumVersion": "1.0",
        "clientId": client_id,
        "supportedConnectionTypes": ["long-polling"],
        "channel": "/meta/handshake",
        "id": "1",
        "version": "1.0",
        "successful": True,
    }
    # Successful handshakes carry no advice, and the order of keys follows the observed reply.
    assert list(reply) == [
        "ext",
        "minimumVersion",
        "clientId",
        "supportedConnectionTypes",
        "channel",
        "id",
        "version",
        "successful",
    ]


async def test_every_handshake_gets_a_new_client_id(bayeux: Bayeux) -> None:
    first = await bayeux.handshake()
    second = await bayeux.handshake()
    assert first["clientId"] != second["clientId"]


async def test_numeric_message_ids_are_echoed(bayeux: Bayeux) -> None:
    status, body = await bayeux.post([{**HANDSHAKE, "id": 305}])
    assert status == 200
    assert body[0]["id"] == 305


async def test_replay_ext_is_answered_even_when_not_asked(bayeux: Bayeux) -> None:
    reply = await bayeux.handshake(ext={})
    assert reply["ext"] == {"replay": True, "payload.format": True}


async def test_only_long_polling_is_advertised(bayeux: Bayeux) -> None:
    # aiocometd offers both and picks from what the server advertises.
    reply = await bayeux.handshake(supportedConnectionTypes=["websocket", "long-polling"])
    assert reply["successful"] is True
    assert reply["supportedConnectionTypes"] == ["long-polling"]


async def test_handshake_without_long_polling_is_refused(emu: Emulator, bayeux: Bayeux) -> None:
    reply = await bayeux.handshake(supportedConnectionTypes=["websocket"])
    assert reply["successful"] is False
    assert reply["error"] == "400::Invalid connection type {websocket}"
    assert emu.cometd.sessions == {}


async def test_browser_cookie_is_set_on_handshake(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    async with http.post(
        emu.cometd_url(), json=[HANDSHAKE], headers={"Authorization": f"Bearer {token}"}
    ) as response:
        assert response.status == 200
        cookie = response.cookies["BAYEUX_BROWSER"]
        assert cookie.value
        assert cookie["path"] == "/"
        assert "sfdc-stream" in response.cookies
        body = await response.json()
    session = emu.cometd.sessions[body[0]["clientId"]]
    assert session.browser_id == cookie.value
    jar = http.cookie_jar.filter_cookies(URL(emu.cometd_url()))
    assert jar["BAYEUX_BROWSER"].value == cookie.value


async def test_browser_cookie_is_kept_across_handshakes(
    emu: Emulator, http: aiohttp.ClientSession, bayeux: Bayeux
) -> None:
    await bayeux.handshake()
    first = http.cookie_jar.filter_cookies(URL(emu.cometd_url()))["BAYEUX_BROWSER"].value
    reply = await bayeux.handshake()
    second = http.cookie_jar.filter_cookies(URL(emu.cometd_url()))["BAYEUX_BROWSER"].value
    assert first == second
    assert emu.cometd.sessions[reply["clientId"]].browser_id == first


async def test_requests_without_the_browser_cookie_are_refused(
    emu: Emulator, bayeux: Bayeux, token: str
) -> None:
    await bayeux.handshake()
    client_id = bayeux.client_id
    assert client_id is not None
    expected = (
        f"400::Client {client_id} has established a session, but no BAYEUX_BROWSER cookie present"
    )
    async with aiohttp.ClientSession() as cookieless:
        stranger = Bayeux(cookieless, emu.cometd_url(), token)
        stranger.client_id = client_id
        _, connect = await stranger.connect()
        assert connect == {
            "clientId": client_id,
            "channel": "/meta/connect",
            "id": "1",
            "error": expected,
            "successful": False,
        }
        subscribe = await stranger.subscribe("/data/AccountChangeEvent", -1)
        assert subscribe["error"] == expected
        assert subscribe["subscription"] == "/data/AccountChangeEvent"
        assert subscribe["successful"] is False
    # The refusals did not harm the session that has the cookie.
    _, connect = await bayeux.connect()
    assert connect["successful"] is True
    reply = await bayeux.subscribe("/data/AccountChangeEvent", -1)
    assert reply["successful"] is True


async def test_a_different_browser_cookie_is_refused(
    emu: Emulator, bayeux: Bayeux, token: str
) -> None:
    await bayeux.handshake()
    async with aiohttp.ClientSession() as other:
        other_client = Bayeux(other, emu.cometd_url(), token)
        assert (await other_client.handshake())["successful"]
        other_client.client_id = bayeux.client_id
        _, connect = await other_client.connect()
        assert connect["successful"] is False
        assert "no BAYEUX_BROWSER cookie present" in connect["error"]


async def test_missing_authorization_requires_authentication(emu: Emulator, bayeux: Bayeux) -> None:
    status, body = await bayeux.post([HANDSHAKE], headers={})
    assert status == 401
    assert body == [
        {
            "channel": "/meta/handshake",
            "id": "1",
            "error": "401::Request requires authentication",
            "successful": False,
        }
    ]
    assert emu.cometd.sessions == {}


async def test_missing_authorization_on_connect(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    connect = {
        "channel": "/meta/connect",
        "clientId": bayeux.client_id,
        "connectionType": "long-polling",
        "id": "2",
    }
    status, body = await bayeux.post([connect], headers={})
    assert status == 401
    assert body == [
        {
            "clientId": bayeux.client_id,
            "channel": "/meta/connect",
            "id": "2",
            "error": "401::Request requires authentication",
            "successful": False,
        }
    ]


async def test_authorization_schemes(bayeux: Bayeux, token: str, subtests: pytest.Subtests) -> None:
    for scheme in ["Bearer {}", "OAuth {}", "{}", "bearer {}"]:
        with subtests.test(scheme=scheme):
            status, body = await bayeux.post(
                [HANDSHAKE], headers={"Authorization": scheme.format(token)}
            )
            assert status == 200
            assert body[0]["successful"] is True


def _denied(reason: str, message_id: Any = "1") -> dict[str, Any]:
    return {
        "ext": {"sfdc": {"failureReason": reason}, "replay": True, "payload.format": True},
        "advice": {"reconnect": "none"},
        "channel": "/meta/handshake",
        "id": message_id,
        "error": "403::Handshake denied",
        "successful": False,
    }


async def test_revoked_token_is_denied_on_handshake(emu: Emulator, bayeux: Bayeux) -> None:
    emu.revoke_access_tokens()
    reply = await bayeux.handshake()
    assert reply == _denied("401::Authentication invalid")
    assert emu.cometd.sessions == {}


async def test_unknown_token_is_denied_on_handshake(bayeux: Bayeux) -> None:
    bayeux.token = "00D5g00000EmuOrgEAA!not-a-token"
    reply = await bayeux.handshake()
    assert reply == _denied("401::Authentication invalid")


async def test_expired_token_is_denied_on_handshake(emu: Emulator, bayeux: Bayeux) -> None:
    assert (await bayeux.handshake())["successful"]
    emu.advance(emu.settings.access_token_ttl_s + 1)
    reply = await bayeux.handshake()
    assert reply == _denied("401::Authentication invalid", "2")


async def test_a_fresh_token_handshakes_after_revocation(emu: Emulator, bayeux: Bayeux) -> None:
    emu.revoke_access_tokens()
    assert (await bayeux.handshake())["successful"] is False
    bayeux.token = emu.access_token()
    assert (await bayeux.handshake())["successful"] is True


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    [EmulatorSettings(poll_timeout_s=1.0, concurrent_clients=2, seed=7)],
)
async def test_concurrent_client_limit(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    first = Bayeux(http, emu.cometd_url(), token)
    second = Bayeux(http, emu.cometd_url(), token)
    third = Bayeux(http, emu.cometd_url(), token)
    assert (await first.handshake())["successful"]
    assert (await second.handshake())["successful"]
    assert await third.handshake() == _denied("403::Organization concurrent user limit exceeded")
    assert len(emu.cometd.sessions) == 2

    # A disconnect frees a slot.
    status, body = await first.post(
        [{"channel": "/meta/disconnect", "clientId": first.client_id, "id": "9"}]
    )
    assert status == 200
    assert body[0]["successful"] is True
    assert (await third.handshake())["successful"]

    # So does a client that stopped reconnecting for longer than the reconnect window.
    denied = await first.handshake()
    assert denied["error"] == "403::Handshake denied"
    emu.advance(emu.settings.reconnect_gap_s + 1)
    assert (await first.handshake())["successful"]
