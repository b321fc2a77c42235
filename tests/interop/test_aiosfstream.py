"""An independent Streaming API client, aiosfstream-ng, against the emulator.

aiosfstream-ng (with aiocometd-ng underneath) was written for real Salesforce. It gets its
token from the emulator's OAuth endpoint, builds the CometD URL from the returned
`instance_url`, and must receive exactly the published events, in order, whether it
subscribes with replay -2 or resumes from a stored replayId.
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
    """aiosfstream's refresh-token authenticator, pointed at the emulator's login URL."""

    def __init__(self, token_url: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._emulator_token_url = token_url

    @property
    def _token_url(self) -> str:
        return self._emulator_token_url


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
