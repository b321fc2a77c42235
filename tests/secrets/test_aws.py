"""The AWS Secrets Manager store, against a stand-in for the AWS API (the outside world)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import SecretStr

from sfstream.errors import SecretError, StorageUnavailableError
from sfstream.secrets import SecretsReadOnlyError, SecretsStore
from sfstream.secrets.aws import AwsSecretsManagerStore


class SecretsManagerAPI:
    """Answers get_secret_value like AWS does, and counts the calls."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.secrets = secrets
        self.calls = 0

    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        self.calls += 1
        return {"Name": SecretId, "SecretString": self.secrets[SecretId]}


async def test_reads_named_values_from_one_json_secret_once() -> None:
    api = SecretsManagerAPI({"prod/sfstream": '{"SF_REFRESH_TOKEN": "rt", "SF_SECRET": "s"}'})
    store = AwsSecretsManagerStore("prod/sfstream", client=api)
    assert isinstance(store, SecretsStore)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "rt"
    assert (await store.get("SF_SECRET")).get_secret_value() == "s"
    assert api.calls == 1
    with pytest.raises(SecretError, match="'MISSING' is not in AWS secret 'prod/sfstream'"):
        await store.get("MISSING")


async def test_a_secret_that_is_not_a_json_object_is_refused() -> None:
    store = AwsSecretsManagerStore("x", client=SecretsManagerAPI({"x": "plain text"}))
    with pytest.raises(SecretError, match="not a JSON object"):
        await store.get("A")


class RefusingAPI:
    def get_secret_value(self, SecretId: str) -> dict[str, Any]:
        error = RuntimeError("An error occurred (AccessDeniedException)")
        error.response = {"Error": {"Code": "AccessDeniedException"}}  # type: ignore[attr-defined]
        raise error


async def test_a_refusal_names_the_aws_error_code() -> None:
    store = AwsSecretsManagerStore("prod/sfstream", client=RefusingAPI())
    with pytest.raises(SecretError, match="refused 'prod/sfstream': AccessDeniedException"):
        await store.get("A")


class WritableSecretsManagerAPI(SecretsManagerAPI):
    """Also answers put_secret_value like AWS does: each write is a new current version."""

    def __init__(self, secrets: dict[str, str], refuse_put: str | None = None) -> None:
        super().__init__(secrets)
        self.versions: list[str] = []
        self.refuse_put = refuse_put

    def put_secret_value(self, SecretId: str, SecretString: str) -> dict[str, Any]:
        if self.refuse_put is not None:
            error = RuntimeError(f"An error occurred ({self.refuse_put})")
            error.response = {"Error": {"Code": self.refuse_put}}  # type: ignore[attr-defined]
            raise error
        self.secrets[SecretId] = SecretString
        self.versions.append(SecretString)
        return {"Name": SecretId, "VersionId": f"v{len(self.versions)}"}


async def test_put_updates_one_name_of_the_current_version() -> None:
    api = WritableSecretsManagerAPI(
        {"prod/sfstream": '{"SF_CLIENT_SECRET": "s", "SF_REFRESH_TOKEN": "old", "N": 5}'}
    )
    store = AwsSecretsManagerStore("prod/sfstream", client=api)
    assert store.writable is True
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old"
    # Someone changes another name after the store read the secret: the write keeps it.
    api.secrets["prod/sfstream"] = (
        '{"SF_CLIENT_SECRET": "s2", "SF_REFRESH_TOKEN": "old", "N": 5, "ADDED": "a"}'
    )
    await store.put("SF_REFRESH_TOKEN", SecretStr("new"))
    assert orjson.loads(api.secrets["prod/sfstream"]) == {
        "SF_CLIENT_SECRET": "s2",
        "SF_REFRESH_TOKEN": "new",
        "N": 5,
        "ADDED": "a",
    }
    assert len(api.versions) == 1
    calls = api.calls
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "new"
    assert (await store.get("ADDED")).get_secret_value() == "a"
    assert api.calls == calls  # served from memory after the write
    await store.put("NEW_NAME", SecretStr("x"))
    assert orjson.loads(api.secrets["prod/sfstream"])["NEW_NAME"] == "x"


async def test_put_without_permission_reports_a_read_only_store() -> None:
    api = WritableSecretsManagerAPI(
        {"prod/sfstream": '{"SF_REFRESH_TOKEN": "old"}'}, refuse_put="AccessDeniedException"
    )
    store = AwsSecretsManagerStore("prod/sfstream", client=api)
    with pytest.raises(SecretsReadOnlyError, match="PutSecretValue") as info:
        await store.put("SF_REFRESH_TOKEN", SecretStr("new-secret-value"))
    assert "refused to update 'prod/sfstream': AccessDeniedException" in str(info.value)
    assert "new-secret-value" not in str(info.value)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old"


async def test_put_refused_for_another_reason_is_a_secret_error() -> None:
    api = WritableSecretsManagerAPI(
        {"prod/sfstream": '{"SF_REFRESH_TOKEN": "old"}'}, refuse_put="LimitExceededException"
    )
    store = AwsSecretsManagerStore("prod/sfstream", client=api)
    with pytest.raises(SecretError, match="LimitExceededException") as info:
        await store.put("SF_REFRESH_TOKEN", SecretStr("new-secret-value"))
    assert not isinstance(info.value, SecretsReadOnlyError)


async def test_put_into_a_secret_that_is_not_a_json_object_is_refused() -> None:
    api = WritableSecretsManagerAPI({"x": "plain text"})
    with pytest.raises(SecretError, match="not a JSON object"):
        await AwsSecretsManagerStore("x", client=api).put("A", SecretStr("v"))
    assert api.secrets["x"] == "plain text"


class UnreachableOnPutAPI(SecretsManagerAPI):
    def put_secret_value(self, SecretId: str, SecretString: str) -> dict[str, Any]:
        raise ConnectionError("endpoint unreachable")


async def test_put_while_aws_is_unreachable_is_retryable() -> None:
    api = UnreachableOnPutAPI({"prod/sfstream": '{"SF_REFRESH_TOKEN": "old"}'})
    store = AwsSecretsManagerStore("prod/sfstream", client=api)
    with pytest.raises(StorageUnavailableError, match="unreachable for 'prod/sfstream'") as info:
        await store.put("SF_REFRESH_TOKEN", SecretStr("new-secret-value"))
    assert info.value.retryable
    assert "new-secret-value" not in str(info.value)
