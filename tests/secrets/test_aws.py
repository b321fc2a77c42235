"""The AWS Secrets Manager store, against a stand-in for the AWS API (the outside world)."""

from __future__ import annotations

from typing import Any

import pytest

from sfstream.errors import SecretError
from sfstream.secrets import SecretsStore
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
