"""`decode`: a response decoded once, payloads kept as the JSON text they arrived as."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson
import pytest

from sfstream.bayeux import Event, MalformedEvent, decode, parse

CHANNEL = "/data/AccountChangeEvent"


def change_event(payload: Any, replay_id: Any = 7, **data: Any) -> bytes:
    message = {
        "channel": CHANNEL,
        "data": {"schema": "S1", "payload": payload, "event": {"replayId": replay_id}, **data},
    }
    return orjson.dumps([message, {"channel": "/meta/connect", "successful": True}])


HEADER = {
    "entityName": "Account",
    "recordIds": ["001A", "001B"],
    "changeType": "UPDATE",
    "changeOrigin": "com/salesforce/api/rest/62.0;client=sfstream",
    "transactionKey": "t-1",
    "sequenceNumber": 1,
    "commitTimestamp": 1_700_000_000_000,
}


@pytest.mark.parametrize(
    "payload",
    [
        {"ChangeEventHeader": HEADER, "Name": "Acme"},
        # A `}` inside a string of the header.
        {"ChangeEventHeader": {**HEADER, "changeOrigin": "client=a}b"}, "Name": "x"},
        # A nested object in the header (not Salesforce's shape, decoded all the same).
        {"ChangeEventHeader": {**HEADER, "extra": {"a": 1}}, "Name": "x"},
        # The header not first.
        {"Name": "Acme", "ChangeEventHeader": HEADER},
        {"Name": "no header"},
    ],
)
def test_the_change_header_is_the_one_of_the_decoded_payload(payload: dict[str, Any]) -> None:
    raw = change_event(payload)
    (event,) = decode(raw)[1]
    (expected,) = parse(orjson.loads(raw))[1]
    assert isinstance(event, Event)
    assert isinstance(expected, Event)
    assert event.change_header() == expected.change_header()
    assert event.body is not None  # the fast path
    text = event.payload_json()
    assert isinstance(text, msgspec.Raw)
    assert orjson.loads(bytes(text)) == payload  # as it arrived


def test_a_payload_that_is_not_an_object_gives_an_empty_one() -> None:
    (event,) = decode(change_event("text"))[1]
    assert isinstance(event, Event)
    assert bytes(event.payload_json()) == b"{}"
    assert event.payload_json(object_only=False) is not None
    assert event.data["payload"] == "text"


def test_an_unknown_member_of_data_takes_the_slow_path_and_keeps_it() -> None:
    (event,) = decode(change_event({"a": 1}, extra=[1, 2]))[1]
    assert isinstance(event, Event)
    assert event.body is None  # decoded whole, nothing dropped
    assert event.data["extra"] == [1, 2]


@pytest.mark.parametrize("replay_id", ["7", 7.5, -1, 2**63, True, None])
def test_a_bad_replay_id_is_a_malformed_event(replay_id: Any) -> None:
    (event,) = decode(change_event({"a": 1}, replay_id))[1]
    assert isinstance(event, MalformedEvent)


def test_a_body_with_line_breaks_is_decoded_whole() -> None:
    raw = orjson.dumps(orjson.loads(change_event({"a": 1})), option=orjson.OPT_INDENT_2)
    (event,) = decode(raw)[1]
    assert isinstance(event, Event)
    assert event.body is None
    assert event.replay_id == 7
