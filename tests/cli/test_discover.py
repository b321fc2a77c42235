"""`sfstream discover --with-schemas`: the catalog with each stream's current schema."""

from __future__ import annotations

from pathlib import Path

import orjson

from sfstream_emulator import Emulator
from tests.cli.test_schema import sfstream
from tests.conftest import MakeConfig

STREAMS = [
    {"channel": "/data/AccountChangeEvent"},
    {"channel": "/event/Order_Placed__e"},
    {"channel": "/topic/HighValueDeals"},
    {"channel": "/u/Notifications"},
    {"channel": "/data/ChangeEvents"},
]


async def test_discover_with_schemas(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    config = await make_config(emu, STREAMS)
    path = str(tmp_path / "sfstream.yaml")

    code, out, err = await sfstream("discover", "--with-schemas", "--json", "--config", path)
    assert code == 0, err
    streams = {s["id"]: s for s in orjson.loads(out)["streams"]}
    accounts = streams["sf.event.account_changes"]["schema"]
    assert accounts["subject"] == "sf.event.account_changes"
    assert accounts["origin"] == "eventSchema"
    account = emu.runtime.spec.object("Account")
    assert account is not None
    assert accounts["schema_id"] == emu.runtime.schema_id(account)
    assert accounts["json_schema"]["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    properties = accounts["json_schema"]["properties"]
    assert properties["NumberOfEmployees"]["x-salesforce-type"] == "int"
    assert "ChangeEventHeader" in properties
    assert accounts["fields"] == len(properties)
    assert accounts["avro"]["type"] == "record"
    assert len(accounts["fingerprint"]) == 64
    orders = streams["sf.event.order_placed"]["schema"]
    assert "Order_Number__c" in orders["json_schema"]["properties"]
    topic = streams["sf.topic.high_value_deals"]["schema"]
    assert sorted(topic["json_schema"]["properties"]) == [
        "AccountId",
        "Amount",
        "Id",
        "Name",
        "StageName",
    ]
    assert topic["origin"] == "describe"
    generic = streams["sf.channel.notifications"]["schema"]
    assert list(generic["json_schema"]["properties"]) == ["payload"]
    everything = streams["sf.event.all_changes"]["schema"]
    assert everything["json_schema"] is None
    assert everything["note"] == "one subject per entity, learnt from events"
    # Deriving for the catalog registers nothing.
    assert config.schema_registry.path is not None
    assert not config.schema_registry.path.exists()

    # The catalog's schema is the one `schema derive` registers.
    code, _, err = await sfstream("schema", "derive", "--config", path)
    assert code == 0, err
    code, out, _ = await sfstream("schema", "show", "sf.event.account_changes", "--config", path)
    assert code == 0
    assert orjson.loads(out) == accounts["json_schema"]

    code, out, err = await sfstream("discover", "--with-schemas", "--config", path)
    assert code == 0, err
    header, *rows = out.splitlines()
    assert header.split()[-1] == "SCHEMA"
    by_stream = {row.split()[0]: row.rstrip() for row in rows}
    assert by_stream["sf.event.account_changes"].endswith(
        f"{accounts['fields']} fields (eventSchema)"
    )
    assert by_stream["sf.event.all_changes"].endswith("per entity")

    # Without the option the catalog is as it was.
    code, out, _ = await sfstream("discover", "--json", "--config", path)
    assert code == 0
    assert all("schema" not in s for s in orjson.loads(out)["streams"])


async def test_discover_with_schemas_names_a_stream_whose_schema_is_unavailable(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(
        sfstream_emulator, [{"channel": "/data/AccountChangeEvent"}, {"channel": "/event/Nope__e"}]
    )
    path = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream("discover", "--with-schemas", "--json", "--config", path)
    assert code == 1
    assert "the schema of sf.event.nope could not be derived" in err
    streams = {s["id"]: s for s in orjson.loads(out)["streams"]}
    assert streams["sf.event.nope"]["schema"]["error"]
    assert streams["sf.event.account_changes"]["schema"]["json_schema"] is not None
    code, out, _ = await sfstream("discover", "--with-schemas", "--config", path)
    assert code == 1
    (row,) = [r for r in out.splitlines() if r.startswith("sf.event.nope")]
    assert "unavailable:" in row


async def test_discover_marks_streams_whose_change_events_are_not_selected(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    streams = [
        {"channel": "/data/CaseChangeEvent"},
        {"channel": "/event/Order_Placed__e"},
    ]
    await make_config(sfstream_emulator, streams, discovery={"mode": "metadata"})
    path = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream("discover", "--json", "--config", path)
    assert code == 0, err
    selected = {s["channel"]: s["cdc_selected"] for s in orjson.loads(out)["streams"]}
    assert selected["/data/CaseChangeEvent"] is False
    assert selected["/data/AccountChangeEvent"] is True
    assert selected["/data/SalesEvents__chn"] is True
    assert selected["/event/Order_Placed__e"] is None

    code, out, _ = await sfstream("discover", "--config", path)
    assert code == 0
    notes = [line for line in out.splitlines() if line.startswith("not selected:")]
    assert notes == [
        "not selected: sf.event.case_changes (/data/CaseChangeEvent) stays empty until Case "
        "is selected in Setup > Change Data Capture"
    ]


async def test_discover_from_the_configuration_alone_does_not_know_the_selection(
    sfstream_emulator: Emulator, make_config: MakeConfig, tmp_path: Path
) -> None:
    await make_config(sfstream_emulator, [{"channel": "/data/CaseChangeEvent"}])
    path = str(tmp_path / "sfstream.yaml")
    code, out, err = await sfstream("discover", "--json", "--config", path)
    assert code == 0, err
    (stream,) = orjson.loads(out)["streams"]
    assert stream["cdc_selected"] is None
    # Asked for schemas, it asks the org, and learns it.
    code, out, _ = await sfstream("discover", "--with-schemas", "--json", "--config", path)
    (stream,) = orjson.loads(out)["streams"]
    assert stream["cdc_selected"] is False
