"""pytest fixtures that run the bundled Salesforce emulator.

Enable with `pytest_plugins = ["sfstream_emulator.pytest_plugin"]`; they need pytest-asyncio.
Override `sfstream_emulator_settings` in your own conftest to change timings or limits.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from sfstream_emulator import Emulator, EmulatorSettings


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    """Settings of the `sfstream_emulator` fixture: Salesforce's, with a 2 s long poll."""
    return EmulatorSettings(poll_timeout_s=2.0)


@pytest_asyncio.fixture
async def sfstream_emulator(
    sfstream_emulator_settings: EmulatorSettings,
) -> AsyncIterator[Emulator]:
    """A running emulator on a free localhost port, stopped after the test."""
    async with Emulator(sfstream_emulator_settings) as emulator:
        yield emulator
