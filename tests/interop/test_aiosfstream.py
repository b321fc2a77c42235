"""An independent Streaming API client, aiosfstream-ng, against the emulator.

aiosfstream-ng (with aiocometd-ng underneath) was written for real Salesforce. It gets its
token from the emulator's OAuth endpoint, builds the CometD URL from the returned
`instance_url`, and must receive exactly the published events, in order, whether it
subscribes with replay -2 or resumes from a stored replayId, and it must stay connected
past the token's lifetime without re-authenticating, as on Salesforce, where the session of
a connected CometD client does not expire.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiosfstream_ng import Client, RefreshTokenAuthenticator, ReplayMarker, ReplayOption

from sfstream_emulator import Emulator, EmulatorSettings

pytestmark = [
    pytest.mark.interop,
    # aiocometd-ng predates Python 3.10's removal of the loop argument and warns about it.
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
]

CHANNEL = "/data/AccountChangeEvent"


class EmulatorAuthenticator(RefreshTokenAuthenticator):
    """aiosfstream's refresh-token authenticator, pointed at the emulator's login URL.

    It counts its authentications: aiocometd re-authenticates silently and resends when the
    server answers a message with a 401 or 403 error.
    """

    def __init__(self, token_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._emulator_token_url = token_url
        self.authentications = 0

    @property
    def _token_url(self) -> str:
        return self._emulator_token_url

    async def authenticate(self) -> None:
        self.authentications += 1
        await super().authenticate()


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=2.0, seed=11)


def _authenticator(emu: Emulator) -> EmulatorAuthenticator:
    creds = emu.credentials
    return EmulatorAuthenticator(
        emu.token_url,
        consumer_key=creds["client_id"],
        consumer_secret=creds["client_secret"],
        refresh_token=creds["refresh_token"],
    )


async def _receive(client: Client, count: int) -> list[dict[str, Any]]:
    received: list[dict[str, Any]] = []
    async with asyncio.timeout(20):
        async for message in client:
            received.append(message)
            if len(received) == count:
                break
    return received


def _names(messages: list[dict[str, Any]]) -> list[str]:
    return [m["data"]["payload"]["Name"] for m in messages]


async def test_replay_all_then_live_events(sfstream_emulator: Emulator) -> None:
    emu = sfstream_emulator
    for index in range(5):
        emu.create_record("Account", {"Name": f"Before {index}"})
    expected_ids = [m["data"]["event"]["replayId"] for m in emu.published(CHANNEL)]

    async with Client(_authenticator(emu), replay=ReplayOption.ALL_EVENTS) as client:
        await client.subscribe(CHANNEL)
        backlog = await _receive(client, 5)
        for index in range(3):
            emu.create_record("Account", {"Name": f"Live {index}"})
        live = await _receive(client, 3)

    assert _names(backlog) == [f"Before {i}" for i in range(5)]
    assert [m["data"]["event"]["replayId"] for m in backlog] == expected_ids
    assert _names(live) == [f"Live {i}" for i in range(3)]
    replay_ids = [m["data"]["event"]["replayId"] for m in backlog + live]
    assert replay_ids == sorted(replay_ids)
    assert all(m["channel"] == CHANNEL for m in backlog + live)


async def test_resume_from_stored_replay_id(sfstream_emulator: Emulator) -> None:
    emu = sfstream_emulator
    for index in range(6):
        emu.create_record("Account", {"Name": f"Account {index}"})
    published = emu.published(CHANNEL)
    stored = published[2]["data"]["event"]["replayId"]
    created = published[2]["data"]["payload"]["ChangeEventHeader"]["commitTimestamp"]
    storage = {CHANNEL: ReplayMarker(date=str(created), replay_id=stored)}

    async with Client(_authenticator(emu), replay=storage) as client:
        await client.subscribe(CHANNEL)
        resumed = await _receive(client, 3)

    assert _names(resumed) == ["Account 3", "Account 4", "Account 5"]
    # The client's own storage now holds the last replayId it processed.
    assert storage[CHANNEL].replay_id == published[-1]["data"]["event"]["replayId"]


async def test_platform_events_carry_event_uuid(sfstream_emulator: Emulator) -> None:
    emu = sfstream_emulator
    channel = "/event/Order_Placed__e"
    async with Client(_authenticator(emu), replay=ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(channel)
        uuids = [
            emu.publish_event("Order_Placed__e", {"Order_Number__c": f"O-{i}"})[1] for i in range(4)
        ]
        received = await _receive(client, 4)

    assert [m["data"]["payload"]["Order_Number__c"] for m in received] == [
        f"O-{i}" for i in range(4)
    ]
    assert [m["data"]["event"]["EventUuid"] for m in received] == uuids


TOKEN_TTL_S = 30.0
STEP_S = 20.0
"""Shorter than the token's lifetime and than the 40 s reconnect window."""


@pytest.mark.parametrize(
    "sfstream_emulator_settings",
    [EmulatorSettings(poll_timeout_s=2.0, access_token_ttl_s=TOKEN_TTL_S, seed=11)],
)
async def test_stays_connected_past_the_token_lifetime(sfstream_emulator: Emulator) -> None:
    emu = sfstream_emulator
    authenticator = _authenticator(emu)
    steps = 6  # 120 s of emulated time: four token lifetimes
    async with Client(authenticator, replay=ReplayOption.NEW_EVENTS) as client:
        await client.subscribe(CHANNEL)
        (client_id,) = emu.cometd.sessions
        during: list[dict[str, Any]] = []
        for step in range(steps):
            # Time passes while the client waits in a held connect; the event then ends the
            # poll and the client connects again.
            async with asyncio.timeout(10):
                await emu.cometd.wait_held(client_id)
            emu.advance(STEP_S)
            emu.create_record("Account", {"Name": f"During {step}"})
            during += await _receive(client, 1)
        assert emu.clock.offset_s > 2 * TOKEN_TTL_S
        for index in range(3):
            emu.create_record("Account", {"Name": f"After {index}"})
        after = await _receive(client, 3)

    assert _names(during) == [f"During {step}" for step in range(steps)]
    assert _names(after) == [f"After {index}" for index in range(3)]
    # One token, one client: no 401 made the client authenticate or handshake again.
    assert authenticator.authentications == 1
    assert len(emu.tokens.access_tokens) == 1
    assert emu.cometd.stats["handshakes"] == 1
