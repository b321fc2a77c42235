"""The SOAP `undelete()` call and the UNDELETE change event it raises."""

from __future__ import annotations

from typing import Any
from xml.etree import ElementTree as ET

import aiohttp
import pytest

from sfstream_emulator import Emulator
from tests.emulator.conftest import Bayeux

V = "62.0"
ENV = "http://schemas.xmlsoap.org/soap/envelope/"
PARTNER = "urn:partner.soap.sforce.com"
XSI = "http://www.w3.org/2001/XMLSchema-instance"


def envelope(session_id: str, body: str, headers: str = "") -> str:
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<soapenv:Envelope xmlns:soapenv="{ENV}" xmlns:urn="{PARTNER}">'
        "<soapenv:Header>"
        f"<urn:SessionHeader><urn:sessionId>{session_id}</urn:sessionId></urn:SessionHeader>"
        f"{headers}"
        "</soapenv:Header>"
        f"<soapenv:Body>{body}</soapenv:Body>"
        "</soapenv:Envelope>"
    )


def undelete_body(*ids: str) -> str:
    return "<urn:undelete>" + "".join(f"<urn:ids>{i}</urn:ids>" for i in ids) + "</urn:undelete>"


async def soap(
    http: aiohttp.ClientSession, emu: Emulator, text: str, version: str = V
) -> tuple[int, ET.Element]:
    async with http.post(
        f"{emu.url}/services/Soap/u/{version}",
        data=text.encode(),
        headers={"Content-Type": "text/xml; charset=UTF-8", "SOAPAction": '""'},
    ) as response:
        assert response.content_type == "text/xml"
        return response.status, ET.fromstring(await response.read())


def results(root: ET.Element) -> list[dict[str, Any]]:
    body = root.find(f"{{{ENV}}}Body")
    assert body is not None
    response = body.find(f"{{{PARTNER}}}undeleteResponse")
    assert response is not None
    parsed = []
    for result in response.findall(f"{{{PARTNER}}}result"):
        id_el = result.find(f"{{{PARTNER}}}id")
        assert id_el is not None
        success = result.find(f"{{{PARTNER}}}success")
        assert success is not None
        errors = [
            (
                error.findtext(f"{{{PARTNER}}}statusCode"),
                error.findtext(f"{{{PARTNER}}}message"),
            )
            for error in result.findall(f"{{{PARTNER}}}errors")
        ]
        parsed.append(
            {
                "id": None if id_el.get(f"{{{XSI}}}nil") == "true" else id_el.text,
                "success": success.text,
                "errors": errors,
            }
        )
    return parsed


def fault(root: ET.Element) -> tuple[str | None, str | None]:
    body = root.find(f"{{{ENV}}}Body")
    assert body is not None
    found = body.find(f"{{{ENV}}}Fault")
    assert found is not None
    return found.findtext("faultcode"), found.findtext("faultstring")


async def rest(
    http: aiohttp.ClientSession, emu: Emulator, token: str, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(
        method,
        f"{emu.url}/services/data/v{V}{path}",
        json=body,
        headers={"Authorization": f"Bearer {token}"},
    ) as response:
        return response.status, (None if response.status == 204 else await response.json())


async def deleted_account(
    http: aiohttp.ClientSession, emu: Emulator, token: str, **values: Any
) -> str:
    status, body = await rest(
        http, emu, token, "POST", "/sobjects/Account", {"Name": "Acme", **values}
    )
    assert status == 201
    record_id = str(body["id"])
    status, _ = await rest(http, emu, token, "DELETE", f"/sobjects/Account/{record_id}")
    assert status == 204
    return record_id


async def listen(bayeux: Bayeux, *channels: str) -> None:
    assert (await bayeux.start(channels[0], -1))["successful"]
    for channel in channels[1:]:
        assert (await bayeux.subscribe(channel, -1))["successful"]


async def receive(bayeux: Bayeux) -> list[dict[str, Any]]:
    events, reply = await bayeux.connect(advice={"timeout": 0})
    assert reply["successful"]
    return events


async def test_undelete_restores_the_record_and_raises_undelete(
    emu: Emulator, http: aiohttp.ClientSession, token: str, bayeux: Bayeux
) -> None:
    record_id = await deleted_account(
        http, emu, token, BillingCity="Paris", Rating="Hot", Phone="555"
    )
    await listen(bayeux, "/data/AccountChangeEvent", "/data/ChangeEvents")
    before_ms = emu.clock.now_ms()
    status, root = await soap(http, emu, envelope(token, undelete_body(record_id)))
    assert status == 200
    assert results(root) == [{"id": record_id, "success": "true", "errors": []}]

    events = await receive(bayeux)
    assert [e["channel"] for e in events] == ["/data/AccountChangeEvent", "/data/ChangeEvents"]
    assert events[0]["data"] == events[1]["data"]
    payload = events[0]["data"]["payload"]
    header = payload["ChangeEventHeader"]
    assert header["changeType"] == "UNDELETE"
    assert header["recordIds"] == [record_id]
    assert header["changeOrigin"] == f"com/salesforce/api/soap/{V}"
    assert header["changedFields"] == []
    assert header["sequenceNumber"] == 1
    assert header["commitTimestamp"] >= before_ms
    # Every non-empty field, as on CREATE.
    fields = {k: v for k, v in payload.items() if k != "ChangeEventHeader"}
    assert set(fields) == {
        "Name",
        "Rating",
        "Phone",
        "BillingAddress",
        "OwnerId",
        "CreatedDate",
        "CreatedById",
        "LastModifiedDate",
        "LastModifiedById",
    }
    assert fields["BillingAddress"] == {"City": "Paris"}
    assert (fields["Name"], fields["Rating"], fields["Phone"]) == ("Acme", "Hot", "555")

    status, record = await rest(http, emu, token, "GET", f"/sobjects/Account/{record_id}")
    assert status == 200
    assert record["IsDeleted"] is False
    status, result = await rest(
        http, emu, token, "GET", "/queryAll?q=SELECT+Id,IsDeleted+FROM+Account"
    )
    assert [(r["Id"], r["IsDeleted"]) for r in result["records"]] == [(record_id, False)]


async def test_undelete_several_ids(
    emu: Emulator, http: aiohttp.ClientSession, token: str, bayeux: Bayeux
) -> None:
    first = await deleted_account(http, emu, token, Rating="Hot")
    second = await deleted_account(http, emu, token, Rating="Cold")
    status, body = await rest(http, emu, token, "POST", "/sobjects/Account", {"Name": "Live"})
    assert status == 201
    live = body["id"]
    await listen(bayeux, "/data/AccountChangeEvent")
    unknown = "001000000000001AAA"
    status, root = await soap(
        http,
        emu,
        envelope(token, undelete_body(first[:15], unknown, live, "garbage", second)),
    )
    assert status == 200
    assert results(root) == [
        {"id": first, "success": "true", "errors": []},
        {
            "id": unknown,
            "success": "false",
            "errors": [("UNDELETE_FAILED", "Entity is not in the recycle bin")],
        },
        {
            "id": live,
            "success": "false",
            "errors": [("UNDELETE_FAILED", "Entity is not in the recycle bin")],
        },
        {"id": None, "success": "false", "errors": [("MALFORMED_ID", "malformed id garbage")]},
        {"id": second, "success": "true", "errors": []},
    ]
    events = await receive(bayeux)
    headers = [e["data"]["payload"]["ChangeEventHeader"] for e in events]
    assert [h["recordIds"] for h in headers] == [[first], [second]]
    # One call, one transaction.
    assert len({h["transactionKey"] for h in headers}) == 1
    assert [h["sequenceNumber"] for h in headers] == [1, 2]

    # Undeleting again fails: the records are live now.
    status, root = await soap(http, emu, envelope(token, undelete_body(first)))
    assert results(root)[0]["errors"] == [("UNDELETE_FAILED", "Entity is not in the recycle bin")]
    assert await receive(bayeux) == []


async def test_undelete_names_the_client_from_call_options(
    emu: Emulator, http: aiohttp.ClientSession, token: str, bayeux: Bayeux
) -> None:
    record_id = await deleted_account(http, emu, token)
    await listen(bayeux, "/data/AccountChangeEvent")
    call_options = "<urn:CallOptions><urn:client>DataLoader</urn:client></urn:CallOptions>"
    status, _ = await soap(
        http, emu, envelope(token, undelete_body(record_id), call_options), version="58.0"
    )
    assert status == 200
    (event,) = await receive(bayeux)
    origin = event["data"]["payload"]["ChangeEventHeader"]["changeOrigin"]
    assert origin == "com/salesforce/api/soap/58.0;client=DataLoader"


async def test_undelete_notifies_push_topics(
    emu: Emulator, http: aiohttp.ClientSession, token: str, bayeux: Bayeux
) -> None:
    status, body = await rest(
        http,
        emu,
        token,
        "POST",
        "/sobjects/Opportunity",
        {"Name": "Big", "Amount": 500000, "StageName": "Proposal", "CloseDate": "2025-01-31"},
    )
    assert status == 201
    deal = body["id"]
    status, _ = await rest(http, emu, token, "DELETE", f"/sobjects/Opportunity/{deal}")
    assert status == 204
    await listen(bayeux, "/topic/HighValueDeals", "/data/SalesEvents__chn")
    status, root = await soap(http, emu, envelope(token, undelete_body(deal)))
    assert results(root)[0]["success"] == "true"
    events = await receive(bayeux)
    by_channel = {e["channel"]: e["data"] for e in events}
    assert set(by_channel) == {"/data/SalesEvents__chn", "/topic/HighValueDeals"}
    assert by_channel["/topic/HighValueDeals"]["event"]["type"] == "undeleted"
    assert by_channel["/topic/HighValueDeals"]["sobject"]["Id"] == deal
    undelete = by_channel["/data/SalesEvents__chn"]["payload"]["ChangeEventHeader"]
    assert undelete["changeType"] == "UNDELETE"


async def test_undelete_of_an_unselected_entity_raises_no_event(
    emu: Emulator, http: aiohttp.ClientSession, token: str, bayeux: Bayeux
) -> None:
    status, body = await rest(http, emu, token, "POST", "/sobjects/Case", {"Subject": "S"})
    assert status == 201
    case = body["id"]
    status, _ = await rest(http, emu, token, "DELETE", f"/sobjects/Case/{case}")
    assert status == 204
    await listen(bayeux, "/data/ChangeEvents")
    status, root = await soap(http, emu, envelope(token, undelete_body(case)))
    assert results(root) == [{"id": case, "success": "true", "errors": []}]
    assert await receive(bayeux) == []


@pytest.mark.parametrize("session", ["", "not-a-session"])
async def test_invalid_session_fault(
    emu: Emulator, http: aiohttp.ClientSession, session: str
) -> None:
    status, root = await soap(http, emu, envelope(session, undelete_body("001000000000001AAA")))
    assert status == 500
    assert fault(root) == (
        "sf:INVALID_SESSION_ID",
        "INVALID_SESSION_ID: Invalid Session ID found in SessionHeader: Illegal Session",
    )
    # The detail names the exception as the fault namespace declares it.
    sf = "urn:fault.partner.soap.sforce.com"
    detail = root.find(f"{{{ENV}}}Body/{{{ENV}}}Fault/detail/{{{sf}}}UnexpectedErrorFault")
    assert detail is not None
    assert detail.findtext(f"{{{sf}}}exceptionCode") == "INVALID_SESSION_ID"
    assert detail.findtext(f"{{{sf}}}exceptionMessage") == (
        "Invalid Session ID found in SessionHeader: Illegal Session"
    )


async def test_revoked_session_fault(
    emu: Emulator, http: aiohttp.ClientSession, token: str
) -> None:
    record_id = await deleted_account(http, emu, token)
    emu.revoke_access_tokens()
    status, root = await soap(http, emu, envelope(token, undelete_body(record_id)))
    assert status == 500
    assert fault(root)[0] == "sf:INVALID_SESSION_ID"
    # Nothing was restored.
    new_token = emu.access_token()
    status, _ = await rest(http, emu, new_token, "GET", f"/sobjects/Account/{record_id}")
    assert status == 404


@pytest.mark.parametrize(
    ("body", "name"),
    [
        (
            "<urn:query><urn:queryString>SELECT Id FROM Account</urn:queryString></urn:query>",
            "query",
        ),
        ("<urn:delete><urn:ids>001000000000001AAA</urn:ids></urn:delete>", "delete"),
        ("", "(none)"),
    ],
)
async def test_other_operations_fault(
    emu: Emulator, http: aiohttp.ClientSession, token: str, body: str, name: str
) -> None:
    status, root = await soap(http, emu, envelope(token, body))
    assert status == 500
    code, message = fault(root)
    assert code == "sf:INVALID_OPERATION"
    assert message is not None
    assert message.startswith("INVALID_OPERATION:")
    assert f"not {name}()" in message


async def test_unparsable_request_fault(emu: Emulator, http: aiohttp.ClientSession) -> None:
    status, root = await soap(http, emu, "<soapenv:Envelope><oops")
    assert status == 500
    code, message = fault(root)
    assert code == "soapenv:Client"
    assert message is not None
    assert message.startswith("Unable to parse the request")
