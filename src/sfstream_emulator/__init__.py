"""A Salesforce org emulator for streaming clients: OAuth, REST metadata, CometD.

Start one in a test with `async with Emulator(...) as emu`, from the shell with
`sfstream-emulator` (or `sfstream emulator`), or with the `sfstream_emulator` pytest fixture
of `sfstream_emulator.pytest_plugin`. See `docs/emulator.md`.

This package stands apart from the connector: it imports nothing from `sfstream`, so that it
behaves as an independent Salesforce would, and any client can be tested against it.
"""

__version__ = "0.1.0"

from sfstream_emulator.clock import Clock
from sfstream_emulator.faults import ChaosSettings, Fault, FaultKind
from sfstream_emulator.org import FieldDef, OrgError, OrgSpec, load_org
from sfstream_emulator.records import RecordError
from sfstream_emulator.server import Emulator
from sfstream_emulator.settings import EmulatorSettings

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
    "__version__",
    "load_org",
]
