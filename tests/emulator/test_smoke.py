from sfstream_emulator import Emulator
from tests.emulator.conftest import Bayeux


async def test_create_record_reaches_subscriber(emu: Emulator, bayeux: Bayeux) -> None:
    reply = await bayeux.start("/data/AccountChangeEvent", -1)
    assert reply["successful"]
    emu.create_record("Account", {"Name": "Acme"})
    events, connect = await bayeux.connect()
    assert connect["successful"]
    assert [e["data"]["payload"]["Name"] for e in events] == ["Acme"]
