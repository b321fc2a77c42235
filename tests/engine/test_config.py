"""Configuration loading: overlay, secrets, every error at once."""

from __future__ import annotations

import time
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
            "type: file", "type: kinesis"
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
    assert "salesforce.client_id: required" in message
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
            "unexpected: unknown section",
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


# -- secret references ---------------------------------------------------------------------

MINIMAL = """\
salesforce:
  client_id: key
  client_secret: CLIENT_SECRET
  refresh_token: ${secret:SF_REFRESH}
secrets:
  backend: file
  file: secrets.env
streams:
  - channel: /data/AccountChangeEvent
"""


@pytest.mark.parametrize(
    "written",
    [
        "${secrets:SF_SECRET}",
        "${secret:}",
        "${secret:SF_SECRET",
        "${secret:SF_SECRET} trailing",
        "prefix${secret:SF_SECRET}",
        "${SECRET:SF_SECRET}",
        "${ secret: SF_SECRET }",
        "{secret:SF_SECRET}",
    ],
)
async def test_a_malformed_secret_reference_is_an_error_naming_the_field(
    config_dir: Path, written: str
) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", f"'{written}'")
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    assert (
        f"salesforce.client_secret: `{written}` looks like a secret reference but is not one; "
        "write ${secret:NAME}" in str(info.value)
    )


async def test_a_malformed_reference_anywhere_is_reported_with_the_others(
    config_dir: Path,
) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "${secrets:SF_SECRET}").replace(
        "channel: /data/AccountChangeEvent", "channel: ${secret:CHANNEL"
    ) + ("sink:\n  type: file\n  path: ${secret:OUT\n")
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    message = str(info.value)
    # Once each: the channel is not also reported as a bad channel name.
    assert "3 problem(s)" in message
    assert "salesforce.client_secret: `${secrets:SF_SECRET}` looks like" in message
    assert "streams.0.channel: `${secret:CHANNEL` looks like" in message
    assert "sink.path: `${secret:OUT` looks like" in message


async def test_a_secret_that_cannot_be_read_is_one_problem(config_dir: Path) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "${secret:SF_SECRET}").replace(
        "client_id: key", "client_id: ${secret:NOPE}"
    )
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    message = str(info.value)
    assert "1 problem(s)" in message
    assert "salesforce.client_id: secret 'NOPE' is not in" in message


async def test_a_malformed_reference_from_the_environment_names_the_variable(
    config_dir: Path,
) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "${secret:SF_SECRET}")
    with pytest.raises(ConfigError) as info:
        await load_config(
            write(config_dir, text),
            environ={"SFSTREAM_SALESFORCE__CLIENT_SECRET": "${secrets:SF_SECRET}"},
        )
    assert "SFSTREAM_SALESFORCE__CLIENT_SECRET: `${secrets:SF_SECRET}` looks like" in str(
        info.value
    )


async def test_a_reference_with_spaces_around_it_is_still_a_reference(config_dir: Path) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "'  ${secret:SF_SECRET}  '")
    config = await load_config(write(config_dir, text), environ={})
    assert config.salesforce.client_secret is not None
    assert config.salesforce.client_secret.get_secret_value() == "the-secret"


async def test_inline_secrets_are_warned_about_by_field_never_by_value(config_dir: Path) -> None:
    text = (
        MINIMAL.replace("CLIENT_SECRET", "inline-client-secret")
        .replace("${secret:SF_REFRESH}", "inline-refresh-token")
        .replace("  client_id: key\n", "  client_id: key\n  password: inline-password\n")
        + "state:\n  backend: postgres\n  dsn: postgresql://sfstream:inline-pw@db/sfstream\n"
    )
    config = await load_config(write(config_dir, text), environ={})
    assert [w.field for w in config.warnings] == [
        "salesforce.client_secret",
        "salesforce.refresh_token",
        "salesforce.password",
        "state.dsn",
    ]
    for warning in config.warnings:
        assert "${secret:NAME}" in warning.message
        for value in ("inline-client-secret", "inline-refresh-token", "inline-password"):
            assert value not in str(warning)
        assert "inline-pw" not in str(warning)


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://sfstream@db/sfstream",
        "host=db dbname=sfstream user=sfstream",
        "${secret:SF_SECRET}",
    ],
)
async def test_a_dsn_without_a_password_or_a_referenced_secret_earns_no_warning(
    config_dir: Path, dsn: str
) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "${secret:SF_SECRET}") + (
        f"state:\n  backend: postgres\n  dsn: '{dsn}'\n"
    )
    config = await load_config(write(config_dir, text), environ={})
    assert config.warnings == ()


async def test_a_libpq_dsn_with_a_password_is_warned_about(config_dir: Path) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "${secret:SF_SECRET}") + (
        "state:\n  backend: postgres\n  dsn: host=db user=u password=hunter22\n"
    )
    config = await load_config(write(config_dir, text), environ={})
    assert [w.field for w in config.warnings] == ["state.dsn"]
    assert "hunter22" not in repr(config.warnings)


async def test_a_secret_set_by_the_environment_earns_no_inline_warning(config_dir: Path) -> None:
    text = MINIMAL.replace("CLIENT_SECRET", "inline-client-secret")
    config = await load_config(
        write(config_dir, text),
        environ={"SFSTREAM_SALESFORCE__CLIENT_SECRET": "${secret:SF_SECRET}"},
    )
    assert config.warnings == ()


# -- YAML structure ------------------------------------------------------------------------


async def test_a_duplicate_section_is_an_error_naming_the_key_and_both_lines(
    config_dir: Path,
) -> None:
    text = BASE + "sink:\n  type: stdout\n"
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    assert "sink: duplicate key (lines 16 and 19)" in str(info.value)


async def test_a_duplicate_key_at_any_depth_is_an_error_with_its_path(config_dir: Path) -> None:
    text = BASE.replace(
        "    key_field: Order_Number__c\n",
        "    key_field: Order_Number__c\n    key_field: Other__c\n",
    ).replace("  client_id: key\n", "  client_id: key\n  client_id: other\n")
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={})
    message = str(info.value)
    assert "salesforce.client_id: duplicate key (lines 3 and 4)" in message
    assert "streams.1.key_field: duplicate key (lines 14 and 15)" in message
    assert "2 problem(s)" in message


async def test_a_duplicate_key_on_one_line_says_so(config_dir: Path) -> None:
    text = BASE + "batch: {max_records: 5, max_records: 6, max_records: 7}\n"
    with pytest.raises(
        ConfigError, match=r"batch\.max_records: duplicate key \(3 times on line 19\)"
    ):
        await load_config(write(config_dir, text), environ={})


async def test_yaml_merge_keys_are_not_duplicates(config_dir: Path) -> None:
    text = BASE + "batch:\n  <<: {max_records: 10, max_wait_ms: 5}\n  max_records: 20\n"
    config = await load_config(write(config_dir, text), environ={})
    assert (config.batch.max_records, config.batch.max_wait_ms) == (20, 5)
    merged = BASE.replace(
        "  - channel: /data/AccountChangeEvent\n",
        "  - &first\n    channel: /data/AccountChangeEvent\n",
    ).replace(
        "  - channel: /event/Order_Placed__e\n",
        "  - <<: *first\n    channel: /event/Order_Placed__e\n",
    )
    config = await load_config(write(config_dir, merged), environ={})
    assert config.streams[1].initial_replay == "earliest"


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.timeout(10)
async def test_an_alias_bomb_fails_fast(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(ConfigError) as info:
        await load_config(write(tmp_path, BILLION_LAUGHS), environ={})
    assert time.monotonic() - started < 1
    assert "expands to more than" in str(info.value)
    assert "aliases" in str(info.value)


@pytest.mark.timeout(10)
async def test_a_recursive_alias_is_an_error(tmp_path: Path) -> None:
    text = "salesforce: &s {client_id: k, refresh_token: r, loop: *s}\n"
    with pytest.raises(ConfigError, match="refers to itself"):
        await load_config(write(tmp_path, text), environ={})


@pytest.mark.timeout(10)
async def test_an_alias_bomb_in_an_environment_value_fails_fast(config_dir: Path) -> None:
    bomb = (
        "["
        + ", ".join(
            ["&x0 [a, a, a, a, a, a, a, a, a, a]"]
            + [f"&x{i} [{', '.join([f'*x{i - 1}'] * 10)}]" for i in range(1, 9)]
        )
        + "]"
    )
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, BASE), environ={"SFSTREAM_DISCOVERY__INCLUDE": bomb})
    assert "SFSTREAM_DISCOVERY__INCLUDE" in str(info.value)


# -- environment overrides -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"SFSTREAM_BATCH__MAX_RECORDS": "many"},
            "SFSTREAM_BATCH__MAX_RECORDS: expected an integer from 1 to 100000, got 'many'",
        ),
        (
            {"SFSTREAM_STREAMS": "[{channel: /u/X}]"},
            "SFSTREAM_STREAMS: the streams list cannot be set from the environment; "
            "list the streams in the configuration file",
        ),
        (
            {"SFSTREAM_STREAMS__0__CHANNEL": "/u/X"},
            "SFSTREAM_STREAMS__0__CHANNEL: the streams list cannot be set from the "
            "environment; list the streams in the configuration file",
        ),
        (
            {"SFSTREAM_DISCOVERY__INCLUDE__0": "/data/*"},
            "SFSTREAM_DISCOVERY__INCLUDE__0: one item of discovery.include cannot be set "
            "from the environment; set the whole list, as SFSTREAM_DISCOVERY__INCLUDE='[...]'",
        ),
        (
            {"SFSTREAM_SINK": "{type: stdout}"},
            "SFSTREAM_SINK: a whole section cannot be set from one variable; "
            "set its fields, as SFSTREAM_SINK__<FIELD>",
        ),
        (
            {"SFSTREAM_SNIK__PATH": "/tmp/out.jsonl"},
            "SFSTREAM_SNIK__PATH: unknown section snik (did you mean sink?)",
        ),
        (
            {"SFSTREAM_SINK__PTH": "/tmp/out.jsonl"},
            "SFSTREAM_SINK__PTH: unknown field sink.pth (did you mean path?)",
        ),
        (
            {"SFSTREAM_SALESFORCE__CLIENT_ID__X": "1"},
            "SFSTREAM_SALESFORCE__CLIENT_ID__X: salesforce.client_id is a single value; "
            "set it as SFSTREAM_SALESFORCE__CLIENT_ID",
        ),
        (
            {"SFSTREAM___": "x"},
            "SFSTREAM___: not a setting; name one as SFSTREAM_<SECTION>__<FIELD>",
        ),
        (
            {"SFSTREAM_SALESFORCE__REFRESH_TOKEN": "${secret:NOPE}"},
            "SFSTREAM_SALESFORCE__REFRESH_TOKEN: secret 'NOPE' is not in",
        ),
        (
            {"SFSTREAM_SINK__PATH": "[unclosed"},
            "SFSTREAM_SINK__PATH: not a valid YAML value",
        ),
    ],
)
async def test_an_environment_problem_names_the_variable(
    config_dir: Path, environ: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, BASE), environ=environ)
    message = str(info.value)
    assert expected in message
    assert "SFSTREAM_* environment variables: 1 problem(s)" in message


async def test_environment_and_file_problems_are_reported_together(config_dir: Path) -> None:
    text = BASE + "batch:\n  max_wait_ms: -1\n"
    with pytest.raises(ConfigError) as info:
        await load_config(
            write(config_dir, text),
            environ={"SFSTREAM_BATCH__MAX_RECORDS": "0", "SFSTREAM_CONFIG": "x.yaml"},
        )
    message = str(info.value)
    assert "2 problem(s)" in message
    assert "SFSTREAM_BATCH__MAX_RECORDS: expected an integer from 1 to 100000, got 0" in message
    assert "batch.max_wait_ms: expected an integer from 0 to 600000, got -1" in message


async def test_other_sfstream_variables_are_left_alone(config_dir: Path) -> None:
    config = await load_config(
        write(config_dir, BASE),
        environ={
            "SFSTREAM_CONFIG": "other.yaml",
            "SFSTREAM_RUN_ID": "r1",
            "SFSTREAM_CLIENT_SECRET": "x",
            "SFSTREAM_SECRETS_FILE": "secrets.env",
            "SFSTREAM_LAMBDA_MARGIN_S": "5",
            "SFSTREAM_DISCOVERY__INCLUDE": "['/data/*', '/event/*']",
        },
    )
    assert config.discovery.include == ("/data/*", "/event/*")


async def test_a_secret_from_the_environment_is_never_shown(config_dir: Path) -> None:
    (config_dir / "secrets.env").write_text(
        "SF_SECRET=the-secret\nSF_REFRESH=the-refresh-token\nCHANNEL=/data/Leaked-secret-1\n"
    )
    text = BASE.replace("/data/AccountChangeEvent", "${secret:CHANNEL}")
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={"SFSTREAM_SALESFORCE__PASSWORD": "7"})
    message = str(info.value)
    assert "Leaked-secret-1" not in message
    assert "streams.0.channel:" in message
    assert "SFSTREAM_SALESFORCE__PASSWORD: expected text" in message
    assert ", got a number" in message


# -- messages ----------------------------------------------------------------------------------

GOOD = {
    "salesforce": "salesforce:\n  client_id: key\n  refresh_token: r\n",
    "streams": "streams:\n  - channel: /data/AccountChangeEvent\n",
}


@pytest.mark.parametrize(
    ("section", "written", "expected"),
    [
        (
            "streams",
            "streams:\n  - channel: /u/X\n    initial_replay: lastest\n",
            "streams.0.initial_replay: expected latest, earliest or a replayId (an integer "
            "from 0), got 'lastest'",
        ),
        (
            "streams",
            "streams:\n  - channel: /u/X\n    initial_replay: -1\n",
            "streams.0.initial_replay: expected latest, earliest or a replayId (an integer "
            "from 0), got -1",
        ),
        (
            "streams",
            "streams:\n  - channel: /u/X\n    initial_replay: yes\n",
            "streams.0.initial_replay: expected latest, earliest or a replayId (an integer "
            "from 0), got true",
        ),
        (
            "streams",
            "streams: {channel: /u/X}\n",
            "streams: expected a list of streams, got a mapping",
        ),
        (
            "streams",
            "streams: [/u/X]\n",
            "streams.0: expected a stream (a mapping with `channel`), got '/u/X'",
        ),
        (
            "streams",
            "streams:\n  - channel: /u/X\n    on_invalid_replay: skip\n",
            "streams.0.on_invalid_replay: expected one of fail, earliest, latest, got 'skip'",
        ),
        (
            "streams",
            "streams:\n  - channel: /u/X\n    on_breaking_change: ignore\n",
            "streams.0.on_breaking_change: expected one of warn, fail, got 'ignore'",
        ),
        (
            "streams",
            "streams:\n  - channel: /u/X\n    chanel: /u/Y\n",
            "streams.0.chanel: unknown field (did you mean channel?)",
        ),
        ("streams", "streams:\n  - id: x\n", "streams.0.channel: required"),
        (
            "streams",
            "streams:\n  - channel: 5\n",
            "streams.0.channel: expected a channel name (/data/..., /event/..., /topic/... or "
            "/u/...), got 5",
        ),
        (
            "streams",
            "streams:\n  - channel: /u/X\n    key_field: [a]\n",
            "streams.0.key_field: expected a field name, got a list",
        ),
        (
            "x",
            "batch:\n  max_records: 0\n",
            "batch.max_records: expected an integer from 1 to 100000, got 0",
        ),
        (
            "x",
            "batch:\n  max_records: 1.5\n",
            "batch.max_records: expected an integer from 1 to 100000, got 1.5",
        ),
        (
            "x",
            "batch:\n  max_inflight: 65\n",
            "batch.max_inflight: expected an integer from 1 to 64, got 65",
        ),
        (
            "x",
            "batch:\n  max_wait_ms: true\n",
            "batch.max_wait_ms: expected an integer from 0 to 600000, got true",
        ),
        ("x", "batch: 5\n", "batch: expected a mapping of batch settings, got 5"),
        (
            "x",
            "sink:\n  type: kinesis\n",
            "sink.type: expected one of stdout, file, kafka, postgres, s3, got 'kinesis'",
        ),
        ("x", "sink:\n  pth: out.jsonl\n", "sink.pth: unknown field (did you mean path?)"),
        (
            "x",
            "sink:\n  colour: red\n",
            "sink.colour: unknown field (sink has type, path, bootstrap_servers, topic, "
            "control_topic, producer, dsn, table, bucket, prefix, region, endpoint_url, "
            "compression)",
        ),
        ("x", "snik:\n  path: x\n", "snik: unknown section (did you mean sink?)"),
        ("x", "sink:\n  type: file\n  path: 5\n", "sink.path: expected a file path, got 5"),
        ("x", "sink:\n  type: file\n", "sink: the file sink needs `path`"),
        (
            "x",
            "state:\n  backend: mysql\n",
            "state.backend: expected one of sqlite, postgres, dynamodb, got 'mysql'",
        ),
        ("x", "state:\n  backend: postgres\n", "state: the postgres backend needs `dsn`"),
        (
            "x",
            "state:\n  dsn: 5432\n",
            "state.dsn: expected a connection string (postgresql://...), got a number",
        ),
        (
            "x",
            "schema_registry:\n  backend: postgres\n",
            "config: schema_registry.backend: postgres keeps schema versions with the state, "
            "which is not in postgres (state.backend: sqlite); set it to state or sqlite",
        ),
        (
            "x",
            "runtime:\n  summary_interval_s: 0\n",
            "runtime.summary_interval_s: expected a number of seconds greater than 0, got 0",
        ),
        (
            "x",
            "runtime:\n  startup_timeout_s: soon\n",
            "runtime.startup_timeout_s: expected a number of seconds greater than 0 (or no "
            "value, for no limit), got 'soon'",
        ),
        (
            "x",
            "runtime:\n  max_pending_events: 5\n",
            "runtime.max_pending_events: expected an integer of at least 10, got 5",
        ),
        (
            "x",
            "runtime:\n  disk_io: async\n",
            "runtime.disk_io: expected one of inline, thread, got 'async'",
        ),
        (
            "x",
            "runtime:\n  on_subscription_lost: stop\n",
            "runtime.on_subscription_lost: expected one of fail, continue, got 'stop'",
        ),
        (
            "x",
            "logging:\n  level: verbose\n",
            "logging.level: expected one of debug, info, warning, error, got 'verbose'",
        ),
        (
            "x",
            "logging:\n  format: text\n",
            "logging.format: expected one of auto, json, console, got 'text'",
        ),
        (
            "x",
            "discovery:\n  mode: all\n",
            "discovery.mode: expected one of config, metadata, got 'all'",
        ),
        (
            "x",
            "discovery:\n  include: /data/*\n",
            "discovery.include: expected a list of glob patterns (like ['/data/*']), got '/data/*'",
        ),
        (
            "x",
            "discovery:\n  exclude: [5]\n",
            "discovery.exclude.0: expected a glob pattern (like /data/*), got 5",
        ),
        (
            "x",
            "discovery:\n  initial_replay: newest\n",
            "discovery.initial_replay: expected latest, earliest or a replayId (an integer "
            "from 0), got 'newest'",
        ),
        (
            "x",
            "secrets:\n  backend: vault\n",
            "secrets.backend: expected one of env, file, aws, got 'vault'",
        ),
        ("x", "secrets:\n  backend: file\n", "secrets: the file backend needs `file`"),
        (
            "x",
            "secrets:\n  backend: aws\n  aws_region: [eu]\n  aws_secret_id: s\n",
            "secrets.aws_region: expected an AWS region (like eu-west-1), got a list",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: 12345\n  refresh_token: r\n",
            "salesforce.client_id: expected the connected app's consumer key (text), got 12345",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: k\n  refresh_token: r\n  api_version: 62.0\n",
            "salesforce.api_version: expected an API version as text (like '62.0', quoted), "
            "got 62.0",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: k\n  refresh_token: r\n  api_version: 'v62'\n",
            "salesforce.api_version: expected an API version as text (like '62.0', quoted), "
            "got 'v62'",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: k\n  refresh_token: r\n  login_url: ftp://x\n",
            "salesforce.login_url: expected a URL starting with https:// (or http:// for a local "
            "emulator), got 'ftp://x'",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: k\n  refresh_token: r\n  grant_type: jwt\n",
            "salesforce.grant_type: expected one of refresh_token, password, "
            "client_credentials, jwt_bearer, got 'jwt'",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: k\n  refresh_token: 12345678\n",
            "salesforce.refresh_token: expected text (a ${secret:NAME} reference), got a number",
        ),
        (
            "salesforce",
            "salesforce:\n  client_id: k\n  refresh_token: r\n  username: [a]\n",
            "salesforce.username: expected a user name (text), got a list",
        ),
        (
            "salesforce",
            "salesforce: [k]\n",
            "salesforce: expected a mapping of salesforce settings, got a list",
        ),
        ("salesforce", "salesforce:\n  refresh_token: r\n", "salesforce.client_id: required"),
    ],
)
async def test_a_bad_value_reads_in_the_users_words(
    tmp_path: Path, section: str, written: str, expected: str
) -> None:
    text = "".join(v for k, v in GOOD.items() if k != section) + written
    with pytest.raises(ConfigError) as info:
        await load_config(write(tmp_path, text), environ={})
    message = str(info.value)
    assert f"  {expected}\n" in message + "\n"
    assert "1 problem(s)" in message
    for internal in ("Input should", "literal[", "constrained-", "function-", "tuple", "Extra "):
        assert internal not in message


async def test_the_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        await load_config(write(tmp_path, "- a\n- b\n"), environ={})
    assert str(info.value).endswith(
        "sfstream.yaml: the configuration must be a mapping at the top level (got a list)"
    )


def test_every_field_has_a_description_for_its_errors() -> None:
    from typing import get_args, get_origin

    from pydantic import BaseModel

    from sfstream.engine.config import Config, expected_value

    def fields(model: type[BaseModel], prefix: str) -> list[str]:
        found = []
        for name, info in model.model_fields.items():
            found.append(f"{prefix}{name}")
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                found += fields(annotation, f"{prefix}{name}.")
            elif get_origin(annotation) is tuple:
                (item, _) = get_args(annotation)
                found.append(f"{prefix}{name}.*")
                if isinstance(item, type) and issubclass(item, BaseModel):
                    found += fields(item, f"{prefix}{name}.*.")
        return found

    paths = fields(Config, "")
    assert {"streams.*.initial_replay", "discovery.include.*", "batch.max_records"} <= set(paths)
    for path in paths:
        described = expected_value(path)
        assert described, path
        for internal in ("typing", "<class", "Literal", "Annotated", "None"):
            assert internal not in described, path
    assert expected_value("streams.0.channel") == expected_value("streams.*.channel")
    with pytest.raises(KeyError):
        expected_value("sink.nope")


# -- loading for commands that do not call Salesforce ------------------------------------------


async def test_offline_loading_leaves_salesforce_secrets_unresolved(config_dir: Path) -> None:
    (config_dir / "secrets.env").write_text("")
    text = BASE.replace("  client_id: key\n", "  client_id: ${secret:SF_CLIENT_ID}\n")
    with pytest.raises(ConfigError, match="secret 'SF_SECRET' is not in"):
        await load_config(write(config_dir, text), environ={})
    config = await load_config(write(config_dir, text), environ={}, offline=True)
    assert config.salesforce.client_secret is None
    assert config.salesforce.refresh_token is None
    assert config.unresolved_secrets == {
        "salesforce.client_id": "SF_CLIENT_ID",
        "salesforce.client_secret": "SF_SECRET",
        "salesforce.refresh_token": "SF_REFRESH",
    }
    assert config.secret_values() == []
    assert config.state.path == config_dir / "state/state.db"


async def test_offline_loading_does_not_open_the_secrets_store(tmp_path: Path) -> None:
    text = BASE.replace("backend: file\n  file: secrets.env", "backend: file\n  file: nope.env")
    config = await load_config(write(tmp_path, text), environ={}, offline=True)
    assert config.salesforce.refresh_token is None


async def test_offline_loading_still_resolves_what_the_command_needs(config_dir: Path) -> None:
    (config_dir / "secrets.env").write_text("PG_DSN=postgresql://u:pw@db/sfstream\n")
    text = BASE + "state:\n  backend: postgres\n  dsn: ${secret:PG_DSN}\n"
    text = text.replace("state:\n  path: state/state.db\n", "")
    config = await load_config(write(config_dir, text), environ={}, offline=True)
    assert config.state.dsn is not None
    assert config.state.dsn.get_secret_value() == "postgresql://u:pw@db/sfstream"
    assert config.secret_reference("state.dsn") == "PG_DSN"
    (config_dir / "secrets.env").write_text("")
    with pytest.raises(ConfigError, match=r"state\.dsn: secret 'PG_DSN' is not in"):
        await load_config(write(config_dir, text), environ={}, offline=True)


async def test_offline_loading_still_checks_everything_else(config_dir: Path) -> None:
    (config_dir / "secrets.env").write_text("")
    text = BASE.replace("  refresh_token: ${secret:SF_REFRESH}\n", "").replace(
        "${secret:SF_SECRET}", "${secrets:SF_SECRET}"
    )
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={}, offline=True)
    message = str(info.value)
    assert "salesforce.client_secret: `${secrets:SF_SECRET}` looks like" in message
    assert "salesforce: the refresh_token grant needs refresh_token" in message


async def test_offline_loading_reports_an_unknown_salesforce_key_holding_a_reference(
    config_dir: Path,
) -> None:
    (config_dir / "secrets.env").write_text("")
    text = BASE.replace(
        "  client_secret: ${secret:SF_SECRET}\n", "  clientsecret: ${secret:SF_SECRET}\n"
    )
    assert text != BASE
    with pytest.raises(ConfigError) as info:
        await load_config(write(config_dir, text), environ={}, offline=True)
    assert "salesforce.clientsecret" in str(info.value)
