"""The AWS Secrets Manager store against moto's server: reading, the cache and its time to
live, writing a name back, errors in the user's words, and the connector reading the secret
again when Salesforce refuses a refresh token another process rotated."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
import yaml
from pydantic import SecretStr

from sfstream.engine.config import SecretsConfig, load_config
from sfstream.errors import AuthenticationError, ConfigError, SecretError, StorageUnavailableError
from sfstream.runners.wiring import org_session
from sfstream.secrets import RereadableSecretsStore, SecretsReadOnlyError, SecretsStore
from sfstream.secrets.aws import AwsSecretsManagerStore
from sfstream_emulator import Emulator, EmulatorSettings
from tests.aws import Aws, IamServer


def make_secret(aws: Aws, value: dict[str, Any] | str, prefix: str = "prod/sfstream") -> str:
    name = aws.name(prefix)
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    aws.client("secretsmanager").create_secret(Name=name, SecretString=text)
    return name


def stored(aws: Aws, name: str, stage: str = "AWSCURRENT") -> dict[str, Any]:
    answer = aws.client("secretsmanager").get_secret_value(SecretId=name, VersionStage=stage)
    value: dict[str, Any] = orjson.loads(answer["SecretString"])
    return value


def store_of(aws: Aws, name: str, **options: Any) -> AwsSecretsManagerStore:
    return AwsSecretsManagerStore(name, region=aws.region, endpoint_url=aws.endpoint, **options)


async def test_reads_named_values_from_one_json_secret_and_keeps_them(aws: Aws) -> None:
    name = make_secret(aws, {"SF_REFRESH_TOKEN": "rt", "SF_CLIENT_SECRET": "s", "PORT": 5432})
    store = store_of(aws, name)
    assert isinstance(store, SecretsStore)
    assert isinstance(store, RereadableSecretsStore)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "rt"
    assert (await store.get("SF_CLIENT_SECRET")).get_secret_value() == "s"
    assert (await store.get("PORT")).get_secret_value() == "5432"
    assert store.reads == 1
    # A name the copy lacks is looked up once more in the current version before it is
    # reported missing: it may have been added since.
    with pytest.raises(SecretError, match=f"'MISSING' is not in AWS secret '{name}'") as caught:
        await store.get("MISSING")
    assert not caught.value.retryable
    assert store.reads == 2
    secrets = stored(aws, name)
    aws.client("secretsmanager").put_secret_value(
        SecretId=name, SecretString=orjson.dumps({**secrets, "ADDED": "a"}).decode()
    )
    assert (await store.get("ADDED")).get_secret_value() == "a"
    assert store.reads == 3


async def test_a_copy_older_than_its_time_to_live_is_read_again(aws: Aws) -> None:
    name = make_secret(aws, {"SF_REFRESH_TOKEN": "first"})
    store = store_of(aws, name, cache_ttl_s=0.5)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "first"
    aws.client("secretsmanager").put_secret_value(
        SecretId=name, SecretString='{"SF_REFRESH_TOKEN": "second"}'
    )
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "first"
    await asyncio.sleep(0.6)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "second"
    assert store.reads == 2
    aws.client("secretsmanager").put_secret_value(
        SecretId=name, SecretString='{"SF_REFRESH_TOKEN": "third"}'
    )
    # `reread` does not wait for the copy to grow old.
    assert (await store.reread("SF_REFRESH_TOKEN")).get_secret_value() == "third"
    uncached = store_of(aws, name, cache_ttl_s=0)
    for _ in range(2):
        assert (await uncached.get("SF_REFRESH_TOKEN")).get_secret_value() == "third"
    assert uncached.reads == 2


async def test_put_updates_one_name_of_the_current_version(aws: Aws) -> None:
    name = make_secret(aws, {"SF_CLIENT_SECRET": "s", "SF_REFRESH_TOKEN": "old", "N": 5})
    store = store_of(aws, name)
    assert store.writable is True
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old"
    # Someone changes another name after the store read the secret: the write keeps it.
    aws.client("secretsmanager").put_secret_value(
        SecretId=name,
        SecretString=orjson.dumps(
            {"SF_CLIENT_SECRET": "s2", "SF_REFRESH_TOKEN": "old", "N": 5, "ADDED": "a"}
        ).decode(),
    )
    await store.put("SF_REFRESH_TOKEN", SecretStr("new"))
    assert stored(aws, name) == {
        "SF_CLIENT_SECRET": "s2",
        "SF_REFRESH_TOKEN": "new",
        "N": 5,
        "ADDED": "a",
    }
    assert stored(aws, name, "AWSPREVIOUS")["SF_REFRESH_TOKEN"] == "old"
    reads = store.reads
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "new"
    assert (await store.get("ADDED")).get_secret_value() == "a"
    assert store.reads == reads  # served from memory after the write
    await store.put("NEW_NAME", SecretStr("x"))
    assert stored(aws, name)["NEW_NAME"] == "x"
    with pytest.raises(SecretError, match="empty value"):
        await store.put("NEW_NAME", SecretStr(""))


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain text", "is not a JSON object of names and values"),
        ('["a", "b"]', "is not a JSON object of names and values"),
    ],
)
async def test_a_secret_that_is_not_a_json_object_is_refused(
    aws: Aws, value: str, expected: str
) -> None:
    name = make_secret(aws, value)
    store = store_of(aws, name)
    with pytest.raises(SecretError, match=expected) as caught:
        await store.get("A")
    assert not caught.value.retryable
    with pytest.raises(SecretError, match=expected):
        await store.put("A", SecretStr("v"))
    answer = aws.client("secretsmanager").get_secret_value(SecretId=name)
    assert answer["SecretString"] == value


async def test_a_binary_secret_is_refused(aws: Aws) -> None:
    name = aws.name("binary")
    aws.client("secretsmanager").create_secret(Name=name, SecretBinary=b"\x00\x01")
    with pytest.raises(SecretError, match="holds binary data, not text"):
        await store_of(aws, name).get("A")


async def test_a_secret_that_does_not_exist_is_terminal(aws: Aws) -> None:
    name = aws.name("missing")
    with pytest.raises(SecretError, match="does not exist") as caught:
        await store_of(aws, name).get("A")
    assert name in str(caught.value)
    assert "secrets.aws_secret_id and secrets.aws_region" in str(caught.value)
    assert not caught.value.retryable


async def test_an_unreachable_endpoint_is_retryable(aws: Aws) -> None:
    store = AwsSecretsManagerStore("prod/sfstream", endpoint_url="http://127.0.0.1:1")
    with pytest.raises(StorageUnavailableError, match="unreachable") as caught:
        await store.get("A")
    assert caught.value.retryable
    with pytest.raises(StorageUnavailableError) as caught:
        await store.put("SF_REFRESH_TOKEN", SecretStr("new-secret-value"))
    assert "new-secret-value" not in str(caught.value)


async def test_the_standard_endpoint_variable_is_honoured(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = make_secret(aws, {"A": "from the endpoint variable"})
    monkeypatch.setenv("AWS_ENDPOINT_URL", aws.endpoint)
    store = AwsSecretsManagerStore(name)
    assert (await store.get("A")).get_secret_value() == "from the endpoint variable"


async def test_without_a_region_the_store_says_how_to_set_one(
    aws: Aws, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    with pytest.raises(SecretError, match=r"set secrets\.aws_region or AWS_REGION"):
        await AwsSecretsManagerStore("prod/sfstream", endpoint_url=aws.endpoint).get("A")


async def test_an_identity_that_may_not_read_the_secret_is_told_what_to_allow(
    aws: Aws, moto_server_with_iam: IamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = moto_server_with_iam
    name = aws.name("prod/sfstream")
    server.client("secretsmanager").create_secret(Name=name, SecretString='{"A": "a"}')
    key_id, secret = server.identity(allow=[])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = AwsSecretsManagerStore(name, endpoint_url=server.endpoint)
    with pytest.raises(SecretError, match="may not") as caught:
        await store.get("A")
    assert "secretsmanager:GetSecretValue" in str(caught.value)
    assert not caught.value.retryable


async def test_put_without_permission_reports_a_read_only_store(
    aws: Aws, moto_server_with_iam: IamServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = moto_server_with_iam
    name = aws.name("prod/sfstream")
    admin = server.client("secretsmanager")
    admin.create_secret(Name=name, SecretString='{"SF_REFRESH_TOKEN": "old"}')
    key_id, secret = server.identity(allow=["secretsmanager:GetSecretValue"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    store = AwsSecretsManagerStore(name, endpoint_url=server.endpoint)
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old"
    with pytest.raises(SecretsReadOnlyError, match="PutSecretValue") as info:
        await store.put("SF_REFRESH_TOKEN", SecretStr("new-secret-value"))
    assert f"refused to update AWS secret '{name}'" in str(info.value)
    assert "new-secret-value" not in str(info.value)
    assert orjson.loads(admin.get_secret_value(SecretId=name)["SecretString"]) == {
        "SF_REFRESH_TOKEN": "old"
    }
    assert (await store.get("SF_REFRESH_TOKEN")).get_secret_value() == "old"


def test_one_store_per_secret_is_shared_by_the_process() -> None:
    config = SecretsConfig(backend="aws", aws_secret_id="shared/secret", aws_region="eu-west-1")
    first = config.open_store()
    assert first is config.open_store()
    assert isinstance(first, AwsSecretsManagerStore)
    assert first.cache_ttl_s == 300
    other = SecretsConfig(
        backend="aws", aws_secret_id="shared/secret", aws_region="eu-west-1", aws_cache_ttl_s=10
    )
    assert other.open_store() is not first


# -- through the configuration ----------------------------------------------------------------


def write_config(path: Path, aws: Aws, secret: str, login_url: str, client_id: str) -> Path:
    document = {
        "salesforce": {
            "login_url": login_url,
            "client_id": client_id,
            "client_secret": "${secret:SF_CLIENT_SECRET}",
            "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        },
        "secrets": {
            "backend": "aws",
            "aws_secret_id": secret,
            "aws_region": aws.region,
            "aws_endpoint_url": aws.endpoint,
        },
        "streams": [{"channel": "/data/AccountChangeEvent"}],
        "state": {"path": "state.db"},
    }
    config = path / "sfstream.yaml"
    config.write_text(yaml.safe_dump(document))
    return config


async def test_the_configuration_resolves_its_references_from_the_secret(
    aws: Aws, tmp_path: Path
) -> None:
    name = make_secret(aws, {"SF_CLIENT_SECRET": "cs"})
    path = write_config(tmp_path, aws, name, "https://login.example.com", "id")
    with pytest.raises(ConfigError) as caught:
        await load_config(path, environ={})
    assert f"salesforce.refresh_token: secret 'SF_REFRESH_TOKEN' is not in AWS secret '{name}'" in (
        str(caught.value)
    )
    assert "cs" not in str(caught.value).replace("secrets", "")
    secrets = stored(aws, name)
    aws.client("secretsmanager").put_secret_value(
        SecretId=name, SecretString=orjson.dumps({**secrets, "SF_REFRESH_TOKEN": "rt"}).decode()
    )
    config = await load_config(path, environ={})
    assert config.salesforce.refresh_token is not None
    assert config.salesforce.refresh_token.get_secret_value() == "rt"
    assert config.secret_reference("salesforce.refresh_token") == "SF_REFRESH_TOKEN"


@pytest.fixture
def sfstream_emulator_settings() -> EmulatorSettings:
    return EmulatorSettings(poll_timeout_s=1.0, rotate_refresh_tokens=True)


async def rotate_elsewhere(emu: Emulator, refresh_token: str) -> str:
    """Log in with `refresh_token` as another process would: Salesforce answers with a new
    one and invalidates it."""
    c = emu.credentials
    form = {
        "grant_type": "refresh_token",
        "client_id": c["client_id"],
        "client_secret": c["client_secret"],
        "refresh_token": refresh_token,
    }
    async with aiohttp.ClientSession() as http, http.post(emu.token_url, data=form) as response:
        body = await response.json()
    assert response.status == 200, body
    new: str = body["refresh_token"]
    assert new != refresh_token
    return new


async def test_a_refresh_token_rotated_by_another_process_is_read_again_and_used(
    sfstream_emulator: Emulator, aws: Aws, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    original = emu.credentials["refresh_token"]
    name = make_secret(
        aws,
        {"SF_CLIENT_SECRET": emu.credentials["client_secret"], "SF_REFRESH_TOKEN": original},
    )
    path = write_config(tmp_path, aws, name, emu.url, emu.credentials["client_id"])
    config = await load_config(path, environ={})
    # Another process (the task this one replaces) rotates the token and stores the new one,
    # after this one read the secret: its copy in memory is now refused (invalid_grant).
    elsewhere = await rotate_elsewhere(emu, original)
    aws.client("secretsmanager").put_secret_value(
        SecretId=name,
        SecretString=orjson.dumps({**stored(aws, name), "SF_REFRESH_TOKEN": elsewhere}).decode(),
    )
    async with org_session(config) as session:
        token = await session.tokens.token()
        assert token.instance_url.startswith("http")
        assert getattr(session.tokens, "rereads", None) == 1
    # The login with the stored token rotated it once more, and the new one was written back.
    newest = stored(aws, name)["SF_REFRESH_TOKEN"]
    assert newest not in (original, elsewhere)
    assert [t for t, valid in emu.tokens.refresh_tokens.items() if valid] == [newest]


async def test_a_refused_refresh_token_that_the_secret_still_holds_fails_the_login(
    sfstream_emulator: Emulator, aws: Aws, tmp_path: Path
) -> None:
    emu = sfstream_emulator
    original = emu.credentials["refresh_token"]
    name = make_secret(
        aws,
        {"SF_CLIENT_SECRET": emu.credentials["client_secret"], "SF_REFRESH_TOKEN": original},
    )
    path = write_config(tmp_path, aws, name, emu.url, emu.credentials["client_id"])
    config = await load_config(path, environ={})
    await rotate_elsewhere(emu, original)  # and nobody stores the new one
    async with org_session(config) as session:
        with pytest.raises(AuthenticationError, match="invalid_grant"):
            await session.tokens.token()
        assert getattr(session.tokens, "rereads", None) == 1
    assert stored(aws, name)["SF_REFRESH_TOKEN"] == original
