"""A Salesforce org emulator for streaming clients: OAuth, REST metadata, CometD.

Start one in a test with `async with Emulator(...) as emu`, from the shell with
`sfstream emulator`, or with the `sfstream_emulator` pytest fixture of
`sfstream.testing.fixtures`. See `docs/emulator.md`.
"""

from sfstream.emulator.clock import Clock
from sfstream.emulator.faults import ChaosSettings, Fault, FaultKind
from sfstream.emulator.org import FieldDef, OrgError, OrgSpec, load_org
from sfstream.emulator.records import RecordError
from sfstream.emulator.server import Emulator
from sfstream.emulator.settings import EmulatorSettings

__all__ = [
    "ChaosSettings",
    "Clock",
    "Emulator",
    "EmulatorSettings",
    "Fault",
    "FaultKind",
    "FieldDef",
    "OrgError",
    "OrgSpec",
    "RecordError",
    "load_org",
]
