"""Fixtures for driving the emulator over real HTTP, as an independent client would."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from sfstream_emulator import Emulator, EmulatorSettings


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    # Short timings keep held polls and expiry tests fast; seeded for stable replay ids.
    return EmulatorSettings(poll_timeout_s=1.0, reconnect_gap_s=40.0, seed=7)


@pytest_asyncio.fixture
async def emu(sfstream_emulator: Emulator) -> Emulator:
    return sfstream_emulator


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest_asyncio.fixture
async def token(emu: Emulator, http: aiohttp.ClientSession) -> str:
    creds = emu.credentials
    async with http.post(
        emu.token_url,
        data={
            "grant_type": "refresh_token",
            "client_id": creds["client_id"],
            "client_secret": creds["client_secret"],
            "refresh_token": creds["refresh_token"],
        },
    ) as response:
        assert response.status == 200
        body = await response.json()
    return str(body["access_token"])


class Bayeux:
    """A deliberately plain Bayeux client: it sends exactly what a test tells it to."""

    def __init__(self, http: aiohttp.ClientSession, url: str, token: str) -> None:
        self.http = http
        self.url = url
        self.token = token
        self.client_id: str | None = None
        self._next_id = 0

    def next_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)

    async def post(
        self, messages: list[dict[str, Any]] | Any, *, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        sent = {"Authorization": f"Bearer {self.token}"} if headers is None else headers
        async with self.http.post(self.url, json=messages, headers=sent) as response:
            text = await response.text()
            try:
                body: Any = await response.json(content_type=None)
            except ValueError:
                body = text
            return response.status, body

    async def handshake(self, **extra: Any) -> dict[str, Any]:
        message = {
            "channel": "/meta/handshake",
            "version": "1.0",
            "minimumVersion": "1.0",
            "supportedConnectionTypes": ["long-polling"],
            "id": self.next_id(),
            "ext": {"replay": True},
            **extra,
        }
        status, body = await self.post([message])
        assert status == 200, body
        reply: dict[str, Any] = body[0]
        if reply.get("successful"):
            self.client_id = reply["clientId"]
        return reply

    async def subscribe(self, channel: str, replay: Any = None, **extra: Any) -> dict[str, Any]:
        message: dict[str, Any] = {
            "channel": "/meta/subscribe",
            "clientId": self.client_id,
            "subscription": channel,
            "id": self.next_id(),
            **extra,
        }
        if replay is not None:
            message["ext"] = {"replay": {channel.partition("?")[0]: replay}}
        status, body = await self.post([message])
        assert status == 200, body
        reply: dict[str, Any] = body[0]
        return reply

    async def connect(self, **extra: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """One `/meta/connect`: (events, connect reply)."""
        message = {
            "channel": "/meta/connect",
            "clientId": self.client_id,
            "connectionType": "long-polling",
            "id": self.next_id(),
            **extra,
        }
        status, body = await self.post([message])
        assert status == 200, body
        events = [m for m in body if not m["channel"].startswith("/meta/")]
        replies = [m for m in body if m["channel"] == "/meta/connect"]
        assert len(replies) == 1, body
        return events, replies[0]

    async def start(self, channel: str, replay: Any = -1) -> dict[str, Any]:
        """Handshake, first connect and subscribe; returns the subscribe reply."""
        reply = await self.handshake()
        assert reply["successful"], reply
        await self.connect()
        return await self.subscribe(channel, replay)


@pytest_asyncio.fixture
async def bayeux(emu: Emulator, http: aiohttp.ClientSession, token: str) -> Bayeux:
    return Bayeux(http, emu.cometd_url(), token)
