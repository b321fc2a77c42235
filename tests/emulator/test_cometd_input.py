"""Bad requests to the CometD endpoint: each gets a clear answer and harms no other client."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson
import pytest

from sfstream_emulator import Emulator, EmulatorSettings
from tests.emulator.conftest import Bayeux

ACCOUNTS = "/data/AccountChangeEvent"
HANDSHAKE: dict[str, Any] = {
    "channel": "/meta/handshake",
    "version": "1.0",
    "minimumVersion": "1.0",
    "supportedConnectionTypes": ["long-polling"],
    "id": "1",
}


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=30.0, reconnect_gap_s=40.0, seed=7)


async def _raw(
    http: aiohttp.ClientSession,
    url: str,
    token: str,
    body: bytes,
    content_type: str = "application/json",
) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type}
    async with http.post(url, data=body, headers=headers) as response:
        return response.status, await response.text()


NOT_MESSAGES = {
    "garbage": b"{not json",
    "empty body": b"",
    "open": b"[",
    "unclosed": b"[{}",
    "binary": b"\xff\xfe",
    "null": b"null",
    "number": b"42",
    "string": b'"text"',
    "bool": b"true",
    "empty array": b"[]",
}


async def test_body_that_is_not_messages_is_http_400(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for name, body in NOT_MESSAGES.items():
        with subtests.test(name):
            status, _ = await _raw(http, emu.cometd_url(), token, body)
            assert status == 400
    assert emu.cometd.sessions == {}
    assert emu.cometd.stats["handshakes"] == 0


async def test_non_object_elements_are_http_400(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    for element in [1, "x", None, [], [HANDSHAKE]]:
        with subtests.test(element=element):
            body = orjson.dumps([HANDSHAKE, element])
            status, _ = await _raw(http, emu.cometd_url(), token, body)
            assert status == 400
    # Nothing of those requests was processed.
    assert emu.cometd.sessions == {}


async def test_a_single_object_is_one_message(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, text = await _raw(http, emu.cometd_url(), token, orjson.dumps(HANDSHAKE))
    assert status == 200
    body = orjson.loads(text)
    assert isinstance(body, list)
    assert len(body) == 1
    assert body[0]["successful"] is True
    assert body[0]["clientId"] in emu.cometd.sessions


async def test_content_type_is_not_required(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    status, text = await _raw(
        http, emu.cometd_url(), token, orjson.dumps([HANDSHAKE]), "text/plain"
    )
    assert status == 200
    assert orjson.loads(text)[0]["successful"] is True


async def test_unknown_meta_channel(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    status, body = await bayeux.post(
        [{"channel": "/meta/nope", "clientId": bayeux.client_id, "id": "2"}]
    )
    assert status == 200
    assert body == [
        {
            "clientId": bayeux.client_id,
            "channel": "/meta/nope",
            "id": "2",
            "error": "400::Unknown meta channel {/meta/nope}",
            "successful": False,
        }
    ]


async def test_missing_client_id_is_an_unknown_client(
    bayeux: Bayeux, subtests: pytest.Subtests
) -> None:
    await bayeux.handshake()
    for meta in ["/meta/subscribe", "/meta/unsubscribe", "/meta/disconnect"]:
        with subtests.test(meta):
            status, body = await bayeux.post(
                [{"channel": meta, "subscription": ACCOUNTS, "id": "2"}]
            )
            assert status == 200
            assert body[0]["error"] == "403::Unknown client"
            assert body[0]["successful"] is False
            assert "clientId" not in body[0]


async def test_missing_client_id_on_connect(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    status, body = await bayeux.post(
        [{"channel": "/meta/connect", "connectionType": "long-polling", "id": "2"}]
    )
    assert status == 200
    assert body == [
        {
            "channel": "/meta/connect",
            "id": "2",
            "advice": {"interval": 0, "reconnect": "handshake"},
            "error": "403::Unknown client",
            "successful": False,
        }
    ]


async def test_missing_channel(bayeux: Bayeux, subtests: pytest.Subtests) -> None:
    await bayeux.handshake()
    for channel in [None, 5, ["/meta/connect"]]:
        with subtests.test(channel=channel):
            message: dict[str, Any] = {"clientId": bayeux.client_id, "id": "2"}
            if channel is not None:
                message["channel"] = channel
            status, body = await bayeux.post([message])
            assert status == 200
            assert body[0]["error"] == "400::channel_missing"
            assert body[0]["successful"] is False
            assert body[0]["id"] == "2"


async def test_publishing_over_cometd_is_refused(
    emu: Emulator, bayeux: Bayeux, subtests: pytest.Subtests
) -> None:
    await bayeux.handshake()
    for channel in ["/event/Order_Placed__e", ACCOUNTS, "/u/Notifications"]:
        with subtests.test(channel):
            status, body = await bayeux.post(
                [
                    {
                        "channel": channel,
                        "clientId": bayeux.client_id,
                        "data": {"Order_Number__c": "X"},
                        "id": "2",
                    }
                ]
            )
            assert status == 200
            assert body == [
                {
                    "clientId": bayeux.client_id,
                    "channel": channel,
                    "id": "2",
                    "error": f"403::Publishing is not allowed on {{{channel}}}",
                    "successful": False,
                }
            ]
    assert emu.bus.published_total == 0


async def test_two_connects_in_one_request(bayeux: Bayeux) -> None:
    await bayeux.handshake()
    connect = {
        "channel": "/meta/connect",
        "clientId": bayeux.client_id,
        "connectionType": "long-polling",
    }
    status, body = await bayeux.post([{**connect, "id": "2"}, {**connect, "id": "3"}])
    assert status == 200
    replies = {m["id"]: m for m in body}
    assert replies["2"]["successful"] is True
    assert replies["3"]["successful"] is False
    assert replies["3"]["error"].startswith("400::")


def _padded_handshake(size: int) -> bytes:
    base = orjson.dumps([{**HANDSHAKE, "ext": {"replay": True, "pad": ""}}])
    return orjson.dumps([{**HANDSHAKE, "ext": {"replay": True, "pad": "x" * (size - len(base))}}])


async def test_body_over_32768_bytes_is_http_413(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    body = _padded_handshake(32769)
    assert len(body) == 32769
    status, text = await _raw(http, emu.cometd_url(), token, body)
    assert status == 413
    assert text == "Maximum Request Size Exceeded"
    assert emu.cometd.sessions == {}


async def test_body_of_32768_bytes_is_accepted(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    body = _padded_handshake(32768)
    assert len(body) == 32768
    status, text = await _raw(http, emu.cometd_url(), token, body)
    assert status == 200
    assert orjson.loads(text)[0]["successful"] is True


async def test_chunked_body_over_the_limit_is_http_413(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    body = _padded_handshake(40000)

    async def chunks() -> Any:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    async with http.post(emu.cometd_url(), data=chunks(), headers=headers) as response:
        assert response.status == 413
    assert emu.cometd.sessions == {}


# Every bad request above, replayed while another client is subscribed.
Sender = Callable[[Emulator, aiohttp.ClientSession, str, Bayeux], Awaitable[Any]]


async def _garbage(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    await _raw(http, emu.cometd_url(), token, b"{not json")


async def _number(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    await _raw(http, emu.cometd_url(), token, b"42")


async def _empty(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    await _raw(http, emu.cometd_url(), token, b"[]")


async def _elements(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    await _raw(http, emu.cometd_url(), token, b'[1, "two", null]')


async def _oversized(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    await _raw(http, emu.cometd_url(), token, _padded_handshake(50000))


async def _meta(emu: Emulator, http: aiohttp.ClientSession, token: str, victim: Bayeux) -> None:
    attacker = Bayeux(http, emu.cometd_url(), token)
    await attacker.post([{"channel": "/meta/nope", "clientId": victim.client_id, "id": "x"}])


async def _no_client(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    attacker = Bayeux(http, emu.cometd_url(), token)
    await attacker.post([{"channel": "/meta/subscribe", "subscription": ACCOUNTS}])
    await attacker.post([{"channel": "/meta/connect", "connectionType": "long-polling"}])


async def _no_channel(emu: Emulator, http: aiohttp.ClientSession, token: str, _: Bayeux) -> None:
    attacker = Bayeux(http, emu.cometd_url(), token)
    await attacker.post([{"id": "1"}])


async def _publish(emu: Emulator, http: aiohttp.ClientSession, token: str, victim: Bayeux) -> None:
    attacker = Bayeux(http, emu.cometd_url(), token)
    await attacker.post([{"channel": ACCOUNTS, "clientId": victim.client_id, "data": {}}])


async def _no_auth(emu: Emulator, http: aiohttp.ClientSession, token: str, victim: Bayeux) -> None:
    attacker = Bayeux(http, emu.cometd_url(), token)
    await attacker.post(
        [{"channel": "/meta/unsubscribe", "clientId": victim.client_id, "subscription": ACCOUNTS}],
        headers={},
    )


async def _stolen(emu: Emulator, http: aiohttp.ClientSession, token: str, victim: Bayeux) -> None:
    # Another browser (no cookie) tries to take over the victim's clientId.
    async with aiohttp.ClientSession() as other:
        attacker = Bayeux(other, emu.cometd_url(), token)
        attacker.client_id = victim.client_id
        await attacker.post(
            [
                {
                    "channel": "/meta/unsubscribe",
                    "clientId": victim.client_id,
                    "subscription": ACCOUNTS,
                },
                {"channel": "/meta/disconnect", "clientId": victim.client_id},
            ]
        )


async def _bad_version(
    emu: Emulator, http: aiohttp.ClientSession, token: str, victim: Bayeux
) -> None:
    attacker = Bayeux(http, emu.cometd_url("36.0"), token)
    await attacker.post([{"channel": "/meta/disconnect", "clientId": victim.client_id}])


SENDERS: list[Sender] = [
    _garbage,
    _number,
    _empty,
    _elements,
    _oversized,
    _meta,
    _no_client,
    _no_channel,
    _publish,
    _no_auth,
    _stolen,
    _bad_version,
]


async def test_bad_requests_do_not_disturb_other_clients(
    emu: Emulator, http: aiohttp.ClientSession, token: str, subtests: pytest.Subtests
) -> None:
    async with aiohttp.ClientSession() as own:
        victim = Bayeux(own, emu.cometd_url(), token)
        assert (await victim.start(ACCOUNTS, -1))["successful"]
        for send in SENDERS:
            with subtests.test(send.__name__.strip("_")):
                await send(emu, http, token, victim)
                emu.create_record("Account", {"Name": f"After {send.__name__}"})
                events, reply = await victim.connect()
                assert reply["successful"] is True
                assert [e["data"]["payload"]["Name"] for e in events] == [f"After {send.__name__}"]
