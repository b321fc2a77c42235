"""Configuration loading: overlay, secrets, every error at once."""

from __future__ import annotations

from pathlib import Path

import pytest

from sfstream.engine.config import load_config
from sfstream.errors import ConfigError

BASE = """\
salesforce:
  login_url: https://login.salesforce.com
  client_id: key
  client_secret: ${secret:SF_SECRET}
  refresh_token: ${secret:SF_REFRESH}
secrets:
  backend: file
  file: secrets.env
streams:
  - channel: /data/AccountChangeEvent
    initial_replay: earliest
  - channel: /event/Order_Placed__e
    key_field: Order_Number__c
state:
  path: state/state.db
sink:
  type: file
  path: out/records.jsonl
"""


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    secrets = tmp_path / "secrets.env"
    secrets.write_text("SF_SECRET=the-secret\nSF_REFRESH=the-refresh-token\n")
    secrets.chmod(0o600)
    return tmp_path


def write(directory: Path, text: str) -> Path:
    path = directory / "sfstream.yaml"
    path.write_text(text)
    return path


async def test_loads_resolves_secrets_and_anchors_paths(config_dir: Path) -> None:
    config = await load_config(write(config_dir, BASE), environ={})
    assert config.salesforce.client_secret is not None
    assert config.salesforce.client_secret.get_secret_value() == "the-secret"
    assert "the-secret" not in repr(config)
    assert config.state.path == config_dir / "state/state.db"
    assert config.sink.path == config_dir / "out/records.jsonl"
    assert [s.channel for s in config.streams] == [
        "/data/AccountChangeEvent",
        "/event/Order_Placed__e",
    ]
    assert config.streams[0].initial_replay == "earliest"
    assert sorted(config.secret_values()) == ["the-refresh-token", "the-secret"]


async def test_environment_overrides_single_values(config_dir: Path) -> None:
    config = await load_config(
        write(config_dir, BASE),
        environ={
            "SFSTREAM_SALESFORCE__LOGIN_URL": "https://test.salesforce.com",
            "SFSTREAM_BATCH__MAX_RECORDS": "7",
            "SFSTREAM_LOGGING__LEVEL": "debug",
            "SFSTREAM_UNRELATED": "x",
        },
    )
    assert config.salesforce.login_url == "https://test.salesforce.com"
    assert config.batch.max_records == 7
    assert config.logging.level == "debug"


async def test_every_problem_is_reported_at_once_with_its_path(config_dir: Path) -> None:
    text = (
        BASE.replace("/data/AccountChangeEvent", "/data/Account").replace(
            "type: file", "type: kafka"
        )
        + "batch:\n  max_records: 0\n"
    )
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    message = str(info.value)
    assert "streams.0.channel" in message
    assert "sink.type" in message
    assert "batch.max_records" in message
    assert "3 problem(s)" in message


async def test_missing_secrets_are_reported_with_the_rest(config_dir: Path) -> None:
    text = BASE.replace("${secret:SF_REFRESH}", "${secret:NOPE}").replace("  client_id: key\n", "")
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    message = str(info.value)
    assert "salesforce.refresh_token: secret 'NOPE' is not in" in message
    assert "salesforce.client_id: Field required" in message
    assert "the-secret" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("streams: [", "not valid YAML"),
        ("- a\n- b\n", "a mapping at the top level"),
        ("salesforce: {client_id: k, refresh_token: r}\n", "list at least one stream"),
        (
            "salesforce: {client_id: k}\nstreams: [{channel: /u/X}]\n",
            "the refresh_token grant needs refresh_token",
        ),
        (
            "salesforce: {client_id: k, refresh_token: r}\n"
            "streams: [{channel: /u/X}, {channel: /u/X}]\n",
            "channels listed twice",
        ),
        (
            "salesforce: {client_id: k, refresh_token: r}\n"
            "streams: [{channel: /u/X, id: Bad-Id}]\n",
            "must be lower case",
        ),
        (
            "salesforce: {client_id: k, refresh_token: r}\nstreams: [{channel: /u/X}]\n"
            "unexpected: 1\n",
            "unexpected: Extra inputs are not permitted",
        ),
    ],
)
async def test_bad_documents(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        await load_config(write(tmp_path, text), environ={})


async def test_unreadable_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        await load_config(tmp_path / "missing.yaml", environ={})


async def test_remembers_which_secret_each_field_came_from(
    config_dir: Path, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = BASE.replace("  client_id: key\n", "  client_id: key\n  username: inline-user\n")
    config = await load_config(write(config_dir, text), environ={})
    assert config.secret_references == {
        "salesforce.client_secret": "SF_SECRET",
        "salesforce.refresh_token": "SF_REFRESH",
    }
    assert config.secret_reference("salesforce.refresh_token") == "SF_REFRESH"
    assert config.secret_reference("salesforce.username") is None
    assert "SF_REFRESH" not in repr(config)
    # The secrets file is anchored like the other paths: the store opens it from anywhere.
    assert config.secrets.file == config_dir / "secrets.env"
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    store = config.secrets.open_store()
    assert (await store.get("SF_REFRESH")).get_secret_value() == "the-refresh-token"


async def test_a_reference_set_through_the_environment_is_remembered(config_dir: Path) -> None:
    config = await load_config(
        write(config_dir, BASE),
        environ={"SFSTREAM_SALESFORCE__REFRESH_TOKEN": "${secret:SF_SECRET}"},
    )
    assert config.secret_reference("salesforce.refresh_token") == "SF_SECRET"
    inline = await load_config(
        write(config_dir, BASE),
        environ={"SFSTREAM_SALESFORCE__REFRESH_TOKEN": "inline-token"},
    )
    assert inline.secret_reference("salesforce.refresh_token") is None


async def test_an_empty_secret_does_not_satisfy_the_grant(config_dir: Path) -> None:
    (config_dir / "secrets.env").write_text("SF_SECRET=the-secret\n")
    text = BASE.replace("${secret:SF_REFRESH}", "''")
    with pytest.raises(ConfigError, match="the refresh_token grant needs refresh_token"):
        await load_config(write(config_dir, text), environ={})
