"""The plan of a chaos run: what is published, how often the connector is killed, which faults.

Also the layout of a run's working directory and the records and events the publisher can
raise, which the plan checks its channels against.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from sfstream.errors import ConfigError
from sfstream.streams import ChannelKind, parse_channel
from sfstream_emulator import ChaosSettings

if TYPE_CHECKING:
    from bench.chaos.destinations import Destination

__all__ = [
    "BATCH_CHOICES",
    "CONFIG_FILE",
    "DEFAULT_CHANNELS",
    "EVENT_VALUES",
    "LOG_DIR",
    "MARKER",
    "RECORD_VALUES",
    "SECRETS_FILE",
    "SINK_FILE",
    "STATE_FILE",
    "UPDATE_FIELD",
    "ChaosPlan",
    "default_faults",
    "publisher_for",
]

DEFAULT_CHANNELS: Final = (
    "/data/AccountChangeEvent",
    "/data/ContactChangeEvent",
    "/event/Order_Placed__e",
    "/event/Low_Ink__e",
)
"""Two change event channels (views of the one CDC stream) and two platform events."""

# A run's working directory: the connector's inputs, its sink and state, one log per run.
SECRETS_FILE: Final = "secrets.env"
CONFIG_FILE: Final = "sfstream.yaml"
SINK_FILE: Final = "records.jsonl"
STATE_FILE: Final = "state.db"
LOG_DIR: Final = "logs"
MARKER: Final = ".sfstream-chaos"

# Required fields of the objects and events the publisher raises, and a field to update.
RECORD_VALUES: Final[Mapping[str, Callable[[int], dict[str, Any]]]] = {
    "Account": lambda n: {"Name": f"Chaos Account {n}", "Industry": "Energy"},
    "Contact": lambda n: {"LastName": f"Chaos {n}", "FirstName": "Contact"},
    "Opportunity": lambda n: {
        "Name": f"Chaos Deal {n}",
        "StageName": "Prospecting",
        "CloseDate": "2026-12-31",
        "Amount": n % 250_000,
    },
    "Employee__c": lambda n: {"Name": f"Chaos Employee {n}", "Level__c": n % 10},
}
UPDATE_FIELD: Final = {
    "Account": "Description",
    "Contact": "Title",
    "Opportunity": "NextStep",
    "Employee__c": "First_Name__c",
}
EVENT_VALUES: Final[Mapping[str, Callable[[int], dict[str, Any]]]] = {
    "Order_Placed__e": lambda n: {"Order_Number__c": f"O-{n}", "Amount__c": n % 1000 + 0.5},
    "Low_Ink__e": lambda n: {"Printer_Model__c": f"XZ-{n % 100}", "Ink_Percentage__c": 0.05},
}
BATCH_CHOICES: Final = {
    "max_records": (7, 50, 500, 2000),
    "max_wait_ms": (5, 50, 200),
    "max_inflight": (1, 2, 4),
}


def default_faults(seed: int) -> ChaosSettings:
    """The fault mix of a chaos run: the emulator's chaos defaults with 3 s stalls.

    Rates are per CometD request: 1% dropped, 1% cut, 2% HTTP 503, 0.5% stalled, 0.5%
    `403::Unknown client`, and before 0.2% of requests every access token is revoked,
    before another 0.2% every client is forgotten.
    """
    return ChaosSettings(seed=seed, stall_s=3.0)


@dataclass(frozen=True, slots=True)
class ChaosPlan:
    """What a chaos run does.

    Attributes:
        workdir: where the configuration, sink, state and logs go: an empty or new
            directory, or one an earlier chaos run used (it is emptied first).
        events: how many events to publish, spread over `channels`.
        duration_s: how long publishing takes (a steady rate); the kills fall in it.
        kills: how many times the connector is SIGKILLed (and restarted).
        seed: drives the events, the channel mix, the kill moments, the batch settings of
            each connector run and the emulator's faults.
        channels: `/data/<Entity>ChangeEvent` and `/event/<Name>__e` channels to publish on
            and stream.
        faults: the emulator's chaos settings (`default_faults(seed)` when None); all
            rates at zero turn chaos off.
        poll_timeout_s: the emulator's long-poll timeout (Salesforce's is 110 s; short so
            that idle connects and stalls cost seconds, not minutes).
        catch_up_timeout_s: how long the last run may take to deliver every event after
            publishing ended.
        shutdown_timeout_s: the connector's `runtime.shutdown_timeout_s`, and how long the
            final SIGTERM may take.
        python: the interpreter that runs `python -m sfstream.cli run`.
        destination: where the connector writes, read back at the end
            (`bench.chaos.destinations`: Kafka, PostgreSQL, S3); None: the file sink, a file
            in `workdir` read as it grows.
    """

    workdir: Path
    events: int = 100_000
    duration_s: float = 180.0
    kills: int = 20
    seed: int = 1
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    faults: ChaosSettings | None = None
    poll_timeout_s: float = 2.0
    catch_up_timeout_s: float = 600.0
    shutdown_timeout_s: float = 20.0
    python: str = sys.executable
    destination: Destination | None = None

    def __post_init__(self) -> None:
        if self.events < 1 or self.kills < 0 or self.duration_s <= 0:
            raise ValueError("events >= 1, kills >= 0 and duration_s > 0 are required")
        if not self.channels:
            raise ValueError("at least one channel is required")
        for channel in self.channels:
            publisher_for(channel)  # raises ValueError for a channel it cannot feed

    @property
    def sink(self) -> str:
        """The sink's type: `file`, `kafka`, `postgres` or `s3`."""
        return "file" if self.destination is None else self.destination.name

    def fault_settings(self) -> ChaosSettings:
        return self.faults if self.faults is not None else default_faults(self.seed)

    def describe(self) -> dict[str, Any]:
        """The plan as JSON-ready values."""
        return {
            "events": self.events,
            "duration_s": self.duration_s,
            "kills": self.kills,
            "seed": self.seed,
            "channels": list(self.channels),
            "faults": self.fault_settings().model_dump(),
            "poll_timeout_s": self.poll_timeout_s,
            "catch_up_timeout_s": self.catch_up_timeout_s,
            "shutdown_timeout_s": self.shutdown_timeout_s,
        }


def publisher_for(channel: str) -> tuple[str, str]:
    """("record", entity) or ("event", name) for a channel the publisher can feed."""
    try:
        info = parse_channel(channel)
    except ConfigError as exc:
        raise ValueError(str(exc)) from exc
    if info.kind is ChannelKind.CHANGE_EVENTS and info.entity in RECORD_VALUES:
        return "record", info.entity
    if info.kind is ChannelKind.PLATFORM_EVENT and info.entity in EVENT_VALUES:
        return "event", info.entity
    known = [f"/data/{e}ChangeEvent" for e in RECORD_VALUES if not e.endswith("__c")]
    known += [f"/event/{e}" for e in EVENT_VALUES]
    raise ValueError(f"the chaos publisher cannot raise events on {channel}; use {known}")
