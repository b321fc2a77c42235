"""SOQL over REST: query, queryAll and tooling/query, for streaming metadata and records."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from sfstream_emulator import Emulator

V = "62.0"
BASE = f"/services/data/v{V}"


class Api:
    def __init__(self, http: aiohttp.ClientSession, emu: Emulator, token: str) -> None:
        self.http = http
        self.emu = emu
        self.headers = {"Authorization": f"Bearer {token}"}

    async def get(self, path: str, q: str | None = None) -> tuple[int, Any]:
        params = {"q": q} if q is not None else None
        async with self.http.get(
            f"{self.emu.url}{BASE}{path}", params=params, headers=self.headers
        ) as response:
            assert response.content_type == "application/json"
            return response.status, await response.json()

    async def query(self, q: str, resource: str = "/query") -> dict[str, Any]:
        status, body = await self.get(resource, q)
        assert status == 200, body
        assert body["done"] is True
        assert body["totalSize"] == len(body["records"]) or body["records"] == []
        assert "nextRecordsUrl" not in body
        result: dict[str, Any] = body
        return result

    async def records(self, q: str, resource: str = "/query") -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.query(q, resource))["records"]
        return result

    async def error(self, q: str, resource: str = "/query") -> tuple[int, dict[str, Any]]:
        status, body = await self.get(resource, q)
        assert isinstance(body, list)
        assert len(body) == 1
        return status, body[0]

    async def create(self, sobject: str, values: dict[str, Any]) -> str:
        async with self.http.post(
            f"{self.emu.url}{BASE}/sobjects/{sobject}", json=values, headers=self.headers
        ) as response:
            body = await response.json()
            assert response.status == 201, body
            return str(body["id"])

    async def delete(self, sobject: str, record_id: str) -> None:
        async with self.http.delete(
            f"{self.emu.url}{BASE}/sobjects/{sobject}/{record_id}", headers=self.headers
        ) as response:
            assert response.status == 204


@pytest.fixture
def api(emu: Emulator, http: aiohttp.ClientSession, token: str) -> Api:
    return Api(http, emu, token)


# -- streaming metadata --------------------------------------------------------------------------


PUSH_TOPIC_FIELDS = (
    "Id, Name, Query, ApiVersion, IsActive, NotifyForFields, NotifyForOperationCreate, "
    "NotifyForOperationUpdate, NotifyForOperationDelete, NotifyForOperationUndelete"
)


async def test_push_topics(api: Api, emu: Emulator) -> None:
    (row,) = await api.records(f"SELECT {PUSH_TOPIC_FIELDS} FROM PushTopic")
    topic = emu.runtime.spec.push_topic("HighValueDeals")
    assert topic is not None
    assert row == {
        "attributes": {"type": "PushTopic", "url": f"{BASE}/sobjects/PushTopic/{topic.id}"},
        "Id": topic.id,
        "Name": "HighValueDeals",
        "Query": "SELECT Id, Name, Amount, StageName, AccountId FROM Opportunity "
        "WHERE Amount > 100000",
        "ApiVersion": 62.0,
        "IsActive": True,
        "NotifyForFields": "Referenced",
        "NotifyForOperationCreate": True,
        "NotifyForOperationUpdate": True,
        "NotifyForOperationDelete": True,
        "NotifyForOperationUndelete": True,
    }


async def test_push_topic_query_is_case_insensitive(api: Api) -> None:
    rows = await api.records("select id, NAME from pushtopic where name = 'highvaluedeals'")
    assert [set(r) for r in rows] == [{"attributes", "Id", "Name"}]
    assert rows[0]["Name"] == "HighValueDeals"
    assert await api.records("SELECT Id FROM PushTopic WHERE IsActive = false") == []


async def test_push_topics_through_tooling(api: Api) -> None:
    rows = await api.records("SELECT Name FROM PushTopic", "/tooling/query")
    assert [r["Name"] for r in rows] == ["HighValueDeals"]


async def test_streaming_channels(api: Api) -> None:
    (row,) = await api.records("SELECT Id, Name, Description FROM StreamingChannel")
    assert row["Name"] == "/u/Notifications"
    assert row["Id"].startswith("0M6")
    assert row["Description"] == "Free-form notifications pushed by integrations"
    assert row["attributes"]["type"] == "StreamingChannel"


async def test_platform_event_channel_members(api: Api, emu: Emulator) -> None:
    rows = await api.records(
        "SELECT Id, DeveloperName, EventChannel, SelectedEntity FROM PlatformEventChannelMember",
        "/tooling/query",
    )
    found = {(r["DeveloperName"], r["EventChannel"], r["SelectedEntity"]) for r in rows}
    assert found == {
        ("ChangeEvents_AccountChangeEvent", "ChangeEvents", "AccountChangeEvent"),
        ("ChangeEvents_ContactChangeEvent", "ChangeEvents", "ContactChangeEvent"),
        ("ChangeEvents_OpportunityChangeEvent", "ChangeEvents", "OpportunityChangeEvent"),
        ("ChangeEvents_Employee__ChangeEvent", "ChangeEvents", "Employee__ChangeEvent"),
        (
            "SalesEvents_chn_OpportunityChangeEvent",
            "SalesEvents__chn",
            "OpportunityChangeEvent",
        ),
    }
    full = await api.records(
        "SELECT DeveloperName, FullName FROM PlatformEventChannelMember", "/tooling/query"
    )
    assert all(r["FullName"] == r["DeveloperName"] for r in full)
    for row in rows:
        assert len(row["Id"]) == 18
        assert row["attributes"] == {
            "type": "PlatformEventChannelMember",
            "url": f"{BASE}/tooling/sobjects/PlatformEventChannelMember/{row['Id']}",
        }
    # Ids are stable.
    again = await api.records("SELECT Id FROM PlatformEventChannelMember", "/tooling/query")
    assert {r["Id"] for r in again} == {r["Id"] for r in rows}

    custom = await api.records(
        "SELECT SelectedEntity FROM PlatformEventChannelMember "
        "WHERE EventChannel = 'SalesEvents__chn'",
        "/tooling/query",
    )
    assert custom == [
        {
            "attributes": custom[0]["attributes"],
            "SelectedEntity": "OpportunityChangeEvent",
        }
    ]

    emu.select_change_events("Case", True)
    selected = await api.records(
        "SELECT DeveloperName FROM PlatformEventChannelMember WHERE SelectedEntity LIKE 'Case%'",
        "/tooling/query",
    )
    assert [r["DeveloperName"] for r in selected] == ["ChangeEvents_CaseChangeEvent"]
    emu.select_change_events("Account", False)
    count = await api.query(
        "SELECT COUNT() FROM PlatformEventChannelMember "
        "WHERE SelectedEntity = 'AccountChangeEvent'",
        "/tooling/query",
    )
    assert count["totalSize"] == 0


async def test_platform_event_channels(api: Api) -> None:
    (row,) = await api.records(
        "SELECT Id, DeveloperName, MasterLabel, FullName, ChannelType FROM PlatformEventChannel",
        "/tooling/query",
    )
    assert row["DeveloperName"] == "SalesEvents"
    assert row["FullName"] == "SalesEvents__chn"
    assert row["MasterLabel"] == "Sales Events"
    assert row["ChannelType"] == "data"


async def test_tooling_only_entities(api: Api) -> None:
    for entity in ("PlatformEventChannelMember", "PlatformEventChannel"):
        status, error = await api.error(f"SELECT Id FROM {entity}")
        assert (status, error["errorCode"]) == (400, "INVALID_TYPE")
    status, error = await api.error("SELECT Id FROM Account", "/tooling/query")
    assert (status, error["errorCode"]) == (400, "INVALID_TYPE")


# -- records -------------------------------------------------------------------------------------


@pytest.fixture
async def accounts(api: Api) -> dict[str, str]:
    values = [
        {"Name": "Acme", "Rating": "Hot", "AnnualRevenue": 5000, "BillingCity": "Paris"},
        {"Name": "Globex", "Rating": "Warm", "AnnualRevenue": 100, "Phone": "555"},
        {"Name": "Initech", "Rating": "Cold", "Industry": "Technology"},
        {"Name": "acme labs", "AnnualRevenue": 7000},
    ]
    return {v["Name"]: await api.create("Account", v) for v in values}


async def names(api: Api, where: str) -> list[str]:
    rows = await api.records(f"SELECT Name FROM Account {where}")
    return [r["Name"] for r in rows]


RECORD_QUERIES: list[tuple[str, list[str | None]]] = [
    ("WHERE Name = 'ACME'", ["Acme"]),
    ("WHERE Name LIKE 'acme%' ORDER BY Name", ["Acme", "acme labs"]),
    ("WHERE Name LIKE '_lobex'", ["Globex"]),
    ("WHERE Rating IN ('Hot', 'Warm') ORDER BY Name", ["Acme", "Globex"]),
    ("WHERE Rating NOT IN ('Hot') ORDER BY Name", ["acme labs", "Globex", "Initech"]),
    ("WHERE AnnualRevenue > 1000 ORDER BY AnnualRevenue DESC", ["acme labs", "Acme"]),
    ("WHERE AnnualRevenue <= 5000 ORDER BY AnnualRevenue", ["Globex", "Acme"]),
    ("WHERE Rating = null", ["acme labs"]),
    ("WHERE Phone != null", ["Globex"]),
    ("WHERE BillingCity = 'paris'", ["Acme"]),
    (
        "WHERE (Rating = 'Hot' OR Industry = 'Technology') AND NOT Name = 'Acme'",
        ["Initech"],
    ),
    ("WHERE IsDeleted = false ORDER BY Name DESC LIMIT 2", ["Initech", "Globex"]),
    ("ORDER BY Name LIMIT 2 OFFSET 1", ["acme labs", "Globex"]),
    ("ORDER BY Rating NULLS FIRST LIMIT 1", ["acme labs"]),
    ("ORDER BY Rating DESC NULLS LAST", ["Warm", "Hot", "Cold", None]),
    ("WHERE CreatedDate > 2000-01-01T00:00:00Z AND Name = 'Initech'", ["Initech"]),
    ("WHERE CreatedDate < 2000-01-01T00:00:00.000+0000", []),
]


async def test_record_queries(
    api: Api, accounts: dict[str, str], subtests: pytest.Subtests
) -> None:
    for where, expected in RECORD_QUERIES:
        with subtests.test(where):
            field = "Rating" if where.startswith("ORDER BY Rating DESC") else "Name"
            rows = await api.records(f"SELECT {field} FROM Account {where}")
            assert [r[field] for r in rows] == expected


async def test_record_query_shape(api: Api, accounts: dict[str, str]) -> None:
    (row,) = await api.records(
        "SELECT id, name, BillingAddress, CreatedDate FROM Account WHERE Name = 'Acme'"
    )
    assert list(row) == ["attributes", "Id", "Name", "BillingAddress", "CreatedDate"]
    assert row["attributes"] == {
        "type": "Account",
        "url": f"{BASE}/sobjects/Account/{accounts['Acme']}",
    }
    assert row["BillingAddress"]["city"] == "Paris"
    assert row["CreatedDate"].endswith("+0000")


async def test_datetime_comparisons(api: Api, emu: Emulator) -> None:
    await api.create("Account", {"Name": "Old"})
    emu.advance(3600)
    await api.create("Account", {"Name": "New"})
    (row,) = await api.records("SELECT CreatedDate FROM Account WHERE Name = 'New'")
    created = row["CreatedDate"]  # the REST form, ending in +0000
    assert created.endswith("+0000")
    for literal in (created, created.replace("+0000", "Z")):
        rows = await api.records(f"SELECT Name FROM Account WHERE CreatedDate = {literal}")
        assert [r["Name"] for r in rows] == ["New"]
        rows = await api.records(f"SELECT Name FROM Account WHERE CreatedDate < {literal}")
        assert [r["Name"] for r in rows] == ["Old"]
    rows = await api.records("SELECT Name FROM Account ORDER BY CreatedDate DESC")
    assert [r["Name"] for r in rows] == ["New", "Old"]


async def test_count(api: Api, accounts: dict[str, str]) -> None:
    result = await api.query("SELECT COUNT() FROM Account WHERE Name LIKE 'acme%'")
    assert result == {"totalSize": 2, "done": True, "records": []}
    assert (await api.query("SELECT COUNT() FROM Contact"))["totalSize"] == 0


async def test_relationship_fields(api: Api, accounts: dict[str, str]) -> None:
    acme = accounts["Acme"]
    ada = await api.create("Contact", {"LastName": "Lovelace", "AccountId": acme})
    await api.create("Contact", {"LastName": "Orphan"})
    rows = await api.records(
        "SELECT Id, LastName, Account.Name, account.Industry, Account.Rating FROM Contact "
        "ORDER BY LastName"
    )
    assert rows[0]["Id"] == ada
    assert rows[0]["Account"] == {
        "attributes": {"type": "Account", "url": f"{BASE}/sobjects/Account/{acme}"},
        "Name": "Acme",
        "Industry": None,
        "Rating": "Hot",
    }
    assert list(rows[0]) == ["attributes", "Id", "LastName", "Account"]
    assert rows[1]["LastName"] == "Orphan"
    assert rows[1]["Account"] is None
    # Relationship paths filter and order too.
    filtered = await api.records("SELECT LastName FROM Contact WHERE Account.Name = 'acme'")
    assert [r["LastName"] for r in filtered] == ["Lovelace"]
    filtered = await api.records("SELECT LastName FROM Contact WHERE Account.Rating IN ('Hot')")
    assert [r["LastName"] for r in filtered] == ["Lovelace"]
    ordered = await api.records("SELECT LastName FROM Contact ORDER BY Account.Name NULLS LAST")
    assert [r["LastName"] for r in ordered] == ["Lovelace", "Orphan"]


async def test_custom_relationship(api: Api) -> None:
    boss = await api.create("Employee__c", {"Name": "Boss"})
    await api.create("Employee__c", {"Name": "Worker", "Manager__c": boss})
    (row,) = await api.records(
        "SELECT Name, Manager__r.Name FROM Employee__c WHERE Manager__r.Name = 'Boss'"
    )
    assert row["Name"] == "Worker"
    assert row["Manager__r"]["Name"] == "Boss"


async def test_multipicklist_and_dates(api: Api) -> None:
    await api.create(
        "Employee__c", {"Name": "A", "Skills__c": "Python;SQL", "Hire_Date__c": "2024-02-29"}
    )
    await api.create(
        "Employee__c", {"Name": "B", "Skills__c": "Kafka", "Hire_Date__c": "2020-01-01"}
    )
    rows = await api.records("SELECT Name FROM Employee__c WHERE Skills__c INCLUDES ('sql')")
    assert [r["Name"] for r in rows] == ["A"]
    rows = await api.records("SELECT Name FROM Employee__c WHERE Skills__c EXCLUDES ('SQL')")
    assert [r["Name"] for r in rows] == ["B"]
    rows = await api.records("SELECT Name FROM Employee__c WHERE Hire_Date__c > 2023-01-01")
    assert [r["Name"] for r in rows] == ["A"]
    rows = await api.records("SELECT Name FROM Employee__c WHERE Hire_Date__c = 2020-01-01")
    assert [r["Name"] for r in rows] == ["B"]


async def test_query_all_includes_deleted(api: Api, accounts: dict[str, str]) -> None:
    await api.delete("Account", accounts["Globex"])
    live = await api.records("SELECT Name FROM Account ORDER BY Name")
    assert "Globex" not in [r["Name"] for r in live]
    everything = await api.records("SELECT Name, IsDeleted FROM Account ORDER BY Name", "/queryAll")
    assert len(everything) == 4
    assert [r["Name"] for r in everything if r["IsDeleted"]] == ["Globex"]
    deleted = await api.records("SELECT Id FROM Account WHERE IsDeleted = true", "/queryAll")
    assert [r["Id"] for r in deleted] == [accounts["Globex"]]
    assert await api.records("SELECT Id FROM Account WHERE IsDeleted = true") == []


# -- errors -------------------------------------------------------------------------------------


MALFORMED = [
    "",
    "SELEKT Id FROM Account",
    "SELECT Id FROM",
    "SELECT FROM Account",
    "SELECT Id, FROM Account",
    "SELECT Id FROM Account WHERE",
    "SELECT Id FROM Account WHERE Name",
    "SELECT Id FROM Account WHERE Name = ",
    "SELECT Id FROM Account LIMIT x",
    "SELECT Id FROM Account LIMIT -1",
    "SELECT Id FROM Account ORDER Name",
    "SELECT Id FROM Account WHERE Name LIKE 5",
    "SELECT Id FROM Account WHERE (Name = 'a'",
    "SELECT Id FROM Account extra",
    "SELECT Id FROM Account WHERE Name = 'unterminated",
    "SELECT Id FROM Account WHERE Name IN 'a'",
    "SELECT COUNT( FROM Account",
]


async def test_malformed_queries(api: Api, subtests: pytest.Subtests) -> None:
    for q in MALFORMED:
        for resource in ("/query", "/queryAll", "/tooling/query"):
            with subtests.test(q=q, resource=resource):
                status, error = await api.error(q, resource)
                assert status == 400
                assert error["errorCode"] == "MALFORMED_QUERY"
                assert error["message"]


async def test_missing_q_parameter(api: Api) -> None:
    status, body = await api.get("/query")
    assert (status, body[0]["errorCode"]) == (400, "MALFORMED_QUERY")


async def test_invalid_type(api: Api) -> None:
    status, error = await api.error("SELECT Id FROM Nope__c")
    assert status == 400
    assert error == {
        "message": "sObject type 'Nope__c' is not supported. If you are attempting to use a "
        "custom object, be sure to append the '__c' after the entity name. Please reference "
        "your WSDL or the describe call for the appropriate names.",
        "errorCode": "INVALID_TYPE",
    }
    status, error = await api.error("SELECT Id FROM AccountChangeEvent")
    assert (status, error["errorCode"]) == (400, "INVALID_TYPE")


INVALID_FIELDS = [
    ("SELECT Bogus FROM Account", "Bogus", "Account"),
    ("SELECT Id FROM Account WHERE Bogus = 1", "Bogus", "Account"),
    ("SELECT Id FROM Account ORDER BY Bogus", "Bogus", "Account"),
    ("SELECT Id, Account.Bogus FROM Contact", "Bogus", "Account"),
    ("SELECT Bogus FROM PushTopic", "Bogus", "PushTopic"),
    ("SELECT Id FROM PushTopic ORDER BY Bogus", "Bogus", "PushTopic"),
    ("SELECT Id FROM StreamingChannel WHERE Query = 'x'", "Query", "StreamingChannel"),
]


async def test_invalid_field(api: Api, subtests: pytest.Subtests) -> None:
    for q, field, entity in INVALID_FIELDS:
        with subtests.test(q):
            status, error = await api.error(q)
            assert status == 400
            assert error == {
                "message": f"No such column '{field}' on entity '{entity}'. If you are "
                "attempting to use a custom field, be sure to append the '__c' after the custom "
                "field name. Please reference your WSDL or the describe call for the appropriate "
                "names.",
                "errorCode": "INVALID_FIELD",
            }


async def test_invalid_field_through_tooling(api: Api) -> None:
    status, error = await api.error(
        "SELECT Bogus FROM PlatformEventChannelMember", "/tooling/query"
    )
    assert (status, error["errorCode"]) == (400, "INVALID_FIELD")


async def test_unknown_relationship(api: Api) -> None:
    status, error = await api.error("SELECT Acount.Name FROM Contact")
    assert status == 400
    assert error["errorCode"] == "INVALID_FIELD"
    assert error["message"].startswith("Didn't understand relationship 'Acount' in field path.")
