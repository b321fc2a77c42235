"""Fuzzing the configuration loader: any file, any environment, only `ConfigError`.

`load_config` gets random YAML documents, random text, and mutations of a valid
configuration (keys removed, added, renamed; values of the wrong type, huge, unicode,
nested garbage; `${secret:...}` references in odd places), with random `SFSTREAM_*`
overrides. It returns a `Config` or raises `ConfigError`; an error message never contains a
secret value nor the validation library's vocabulary, and says where each problem is (a path
or an `SFSTREAM_*` variable); a loaded `Config` never holds a malformed secret reference as a
value. Loading offline (without the Salesforce secrets) obeys the same rules. A duplicated key
is always an error naming both lines. The CLI (`sfstream discover --config FILE`) exits 2
without a traceback for a sample of the rejected files.

The inputs fuzzing once found escaping `load_config` as other exceptions (PyYAML's
ValueError and RecursionError, a file that is not UTF-8, an override that is not YAML) are
pinned by the tests at the end.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st

from sfstream.engine.config import Config, SalesforceConfig, load_config
from sfstream.errors import ConfigError
from tests.fuzz.budget import fuzz_settings

SECRET_VALUES = {
    "SF_CLIENT_SECRET": "fuzz-client-secret-3f9c2a7e",
    "SF_REFRESH_TOKEN": "fuzz-refresh-token-b81d44c0",
}
VALID: dict[str, Any] = {
    "salesforce": {
        "login_url": "https://example.my.salesforce.com",
        "client_id": "3MVG9consumerKey",
        "client_secret": "${secret:SF_CLIENT_SECRET}",
        "refresh_token": "${secret:SF_REFRESH_TOKEN}",
        "api_version": "62.0",
    },
    "secrets": {"backend": "file", "file": "secrets.env"},
    "streams": [
        {"channel": "/data/AccountChangeEvent", "initial_replay": "earliest"},
        {"channel": "/event/Order_Placed__e", "key_field": "Order_Number__c"},
        {"channel": "/topic/HighValueDeals", "id": "sf.topic.big_deals"},
    ],
    "discovery": {"mode": "config", "include": ["/data/*"], "exclude": []},
    "state": {"backend": "sqlite", "path": "state.db"},
    "sink": {"type": "file", "path": "records.jsonl"},
    "batch": {"max_records": 500, "max_wait_ms": 200, "max_inflight": 2},
    "runtime": {"shutdown_timeout_s": 20, "on_subscription_lost": "fail"},
    "logging": {"level": "info", "format": "json"},
}
WORDS = sorted(
    {
        *VALID,
        *(key for section in VALID.values() if isinstance(section, dict) for key in section),
        "channel",
        "id",
        "key_field",
        "initial_replay",
        "on_invalid_replay",
        "on_breaking_change",
        "grant_type",
        "username",
        "password",
        "dsn",
        "aws_secret_id",
        "schema_registry",
        "summary_interval_s",
        "max_pending_events",
    }
)
SCALARS: tuple[Any, ...] = (
    None,
    True,
    False,
    0,
    -1,
    2**63,
    10**30,
    1e308,
    -0.0,
    math.inf,
    math.nan,
    "",
    " ",
    "latest",
    "earliest",
    "fail",
    "postgres",
    "aws",
    "file",
    "stdout",
    "metadata",
    "password",
    "client_credentials",
    "/data/ChangeEvents",
    "/event/X__e?a=b",
    "/topic/Deals?Amount=5",
    "data/NoSlash",
    "/data/",
    "http://localhost:8787",
    "ftp://x",
    "${secret:SF_CLIENT_SECRET}",
    "${secret:MISSING}",
    "${secret:}",
    "${secret:../../etc/passwd}",
    "${env:HOME}",
    "${secrets:SF_CLIENT_SECRET}",
    "${secret:SF_CLIENT_SECRET",
    "x${secret:SF_CLIENT_SECRET}",
    "${secret:SF_CLIENT_SECRET} y",
    "{secret:SF_CLIENT_SECRET}",
    "${SECRET:SF_CLIENT_SECRET}",
    "/dev/null",
    "a\x00b",
    "\u00e9\u00e8 \U0001f600 \u202e",
    "x" * 5000,
)


values = st.recursive(
    st.sampled_from(SCALARS)
    | st.integers()
    | st.floats()
    | st.text(max_size=40)
    | st.booleans()
    | st.none(),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(WORDS) | st.text(max_size=10), children, max_size=5)
    ),
    max_leaves=15,
)


@st.composite
def mutated_valid(draw: st.DrawFn) -> Any:
    """The valid document with 1 to 4 structural mutations."""
    document: Any = yaml.safe_load(yaml.safe_dump(VALID))

    def mutate(value: Any, depth: int) -> Any:
        if isinstance(value, dict) and value and draw(st.integers(0, 9)) < 7 and depth < 5:
            key = draw(st.sampled_from(sorted(value, key=str)))
            changed = dict(value)
            operation = draw(st.integers(0, 4))
            if operation == 0:
                del changed[key]
            elif operation == 1:
                changed[draw(st.sampled_from(WORDS) | st.text(max_size=8))] = draw(values)
            elif operation == 2:
                changed[draw(st.sampled_from(WORDS))] = changed.pop(key)  # renamed
            else:
                changed[key] = mutate(value[key], depth + 1)
            return changed
        if isinstance(value, list) and value and draw(st.booleans()) and depth < 5:
            index = draw(st.integers(0, len(value) - 1))
            changed_list = list(value)
            operation = draw(st.integers(0, 3))
            if operation == 0:
                del changed_list[index]
            elif operation == 1:
                changed_list.append(changed_list[index])  # a duplicated stream
            else:
                changed_list[index] = mutate(value[index], depth + 1)
            return changed_list
        return draw(values)

    for _ in range(draw(st.integers(1, 4))):
        document = mutate(document, 0)
    return document


def dump(document: Any) -> str:
    return yaml.safe_dump(document, allow_unicode=True, sort_keys=False)


@st.composite
def edited_text(draw: st.DrawFn) -> str:
    """The valid document's YAML text with characters inserted, deleted or replaced."""
    text = dump(VALID)
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(text)))
        insert = draw(st.text(alphabet=":-[]{}&*!|>'\"%@`#,? \n\t\\0aZ", max_size=4))
        cut = draw(st.integers(0, 3))
        text = text[:at] + insert + text[at + cut :]
    return text


documents = st.one_of(
    mutated_valid().map(dump),
    edited_text(),
    values.map(dump),
    st.text(max_size=300),
    st.binary(max_size=200).map(lambda raw: raw.decode("utf-8", "replace")),
)
environments = st.dictionaries(
    st.sampled_from(
        [
            "SFSTREAM_SINK__PATH",
            "SFSTREAM_BATCH__MAX_RECORDS",
            "SFSTREAM_SALESFORCE__LOGIN_URL",
            "SFSTREAM_STATE__BACKEND",
            "SFSTREAM_STREAMS__0__CHANNEL",
            "SFSTREAM_RUNTIME__SHUTDOWN_TIMEOUT_S",
            "SFSTREAM___",
            "SFSTREAM_X",
            "SFSTREAM_STREAMS",
            "SFSTREAM_SINK",
            "SFSTREAM_SNIK__PATH",
            "SFSTREAM_SINK__PTH",
            "SFSTREAM_DISCOVERY__INCLUDE",
            "SFSTREAM_DISCOVERY__INCLUDE__0",
            "SFSTREAM_SALESFORCE__CLIENT_SECRET",
            "SFSTREAM_SALESFORCE__CLIENT_ID__X",
            "SFSTREAM_CONFIG",
            "OTHER",
        ]
    ),
    st.sampled_from(
        [
            "",
            "1",
            "-5",
            "file",
            "null",
            "{}",
            "[1, 2]",
            "x: y",
            "\u00e9",
            "0x10",
            "true",
            "${secret:SF_CLIENT_SECRET}",
            "${secrets:SF_CLIENT_SECRET}",
            "&a [*a]",
            "{a: 1, a: 2}",
            "[&x [a, a, a, a], [*x, *x, *x, *x]]",
        ]
    ),
    max_size=3,
)


def load(text: str, environ: dict[str, str], *, offline: bool = False) -> Config:
    """Load `text` as a config file next to a valid secrets file."""
    with tempfile.TemporaryDirectory() as scratch:
        directory = Path(scratch)
        secrets = directory / "secrets.env"
        secrets.write_text("".join(f"{k}={v}\n" for k, v in SECRET_VALUES.items()))
        secrets.chmod(0o600)
        path = directory / "sfstream.yaml"
        path.write_text(text, encoding="utf-8")
        if offline:
            return asyncio.run(load_config(path, environ=environ, offline=True))
        return asyncio.run(load_config(path, environ=environ))


INTERNALS = (
    "Input should",
    "Extra inputs",
    "Field required",
    "literal[",
    "constrained-",
    "function-after",
    "function-before",
    "lax-or-strict",
    "valid tuple",
    "<class",
    "Value error,",
)
"""The validation library's vocabulary, which no message may use."""
PROBLEM_LINE = re.compile(r"^  \S.*?: \S")
MALFORMED_REFERENCE = re.compile(r"(?i)\{+\s*secrets?\s*(?::|\}|$)")


def check_outcome(
    text: str, environ: dict[str, str], *, offline: bool = False
) -> ConfigError | None:
    """Load; a Config must be sound, an error a ConfigError that reveals no secret, speaks
    the user's words and says where each problem is."""
    try:
        config = load(text, environ, offline=offline)
    except ConfigError as exc:
        message = str(exc)
        for secret in SECRET_VALUES.values():
            assert secret not in message, "a configuration error revealed a secret"
        for internal in INTERNALS:
            assert internal not in message, message
        head, *problems = message.splitlines()
        if problems and "problem(s)" in head:
            for line in problems:
                assert PROBLEM_LINE.match(line), line
        return exc
    assert config.state.path.is_absolute()
    assert config.sink.path is None or config.sink.path.is_absolute()
    assert config.streams or config.discovery.mode == "metadata"
    for secret in SECRET_VALUES.values():
        assert secret not in repr(config)
    values = [*config.secret_values(), *_strings(config.model_dump(mode="json"))]
    assert not [v for v in values if MALFORMED_REFERENCE.search(v)], "a malformed reference"
    for path in config.unresolved_secrets:
        assert path.startswith("salesforce."), "offline loading left a needed secret out"
        if path != "salesforce.client_id":
            assert getattr(config.salesforce, path.removeprefix("salesforce.")) in (
                None,
                SalesforceConfig.model_fields[path.removeprefix("salesforce.")].default,
            )
    return None


def _strings(value: Any) -> list[str]:
    if isinstance(value, dict):
        return [s for item in value.values() for s in _strings(item)]
    if isinstance(value, list):
        return [s for item in value for s in _strings(item)]
    return [value] if isinstance(value, str) else []


@fuzz_settings(250)
@given(text=documents, environ=environments)
def test_any_document_loads_or_raises_config_error(text: str, environ: dict[str, str]) -> None:
    check_outcome(text, environ)


@fuzz_settings(150)
@given(document=mutated_valid())
def test_mutations_of_a_valid_config_load_or_raise_config_error(document: Any) -> None:
    check_outcome(dump(document), {})


@fuzz_settings(100)
@given(text=documents, environ=environments)
def test_loading_offline_obeys_the_same_rules(text: str, environ: dict[str, str]) -> None:
    check_outcome(text, environ, offline=True)


@fuzz_settings(50)
@given(
    document=mutated_valid(),
    section=st.sampled_from(sorted(VALID)),
    again=st.sampled_from(["x: 1\n", "{}\n", "[]\n", "null\n"]),
)
def test_a_duplicated_key_is_always_an_error_naming_both_lines(
    document: Any, section: str, again: str
) -> None:
    text = dump(document if isinstance(document, dict) else VALID)
    assume(re.search(rf"^{section}:", text, re.MULTILINE))
    lines = text.splitlines()
    first = next(n for n, line in enumerate(lines, 1) if line.startswith(f"{section}:"))
    second = len(lines) + 1
    text += f"{section}:" + ("\n  " + again if again.startswith("x") else " " + again)
    error = check_outcome(text, {})
    assert error is not None
    assert f"{section}: duplicate key (lines {first} and {second})" in str(error)


def test_the_valid_document_loads() -> None:
    config = load(dump(VALID), {})
    assert config.salesforce.client_secret is not None
    assert config.salesforce.client_secret.get_secret_value() == SECRET_VALUES["SF_CLIENT_SECRET"]


def run_cli(text: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "sfstream.yaml"
        path.write_text(text, encoding="utf-8")
        (Path(scratch) / "secrets.env").write_text("SF_CLIENT_SECRET=x\n")
        (Path(scratch) / "secrets.env").chmod(0o600)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SFSTREAM_")}
        return subprocess.run(
            [sys.executable, "-m", "sfstream.cli", "discover", "--config", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
            check=False,
        )


@fuzz_settings(4)
@given(text=st.one_of(mutated_valid().map(dump), edited_text()))
def test_the_cli_exits_2_without_a_traceback_for_rejected_files(text: str) -> None:
    assume(isinstance(check_outcome(text, {}), ConfigError))
    result = run_cli(text)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "configuration error" in result.stderr
    assert result.stdout == ""


# -- inputs that once escaped load_config as other exceptions ---------------------------

ESCAPES: dict[str, Callable[[Path], None]] = {
    "an unquoted invalid date": lambda path: path.write_text(
        dump(VALID) + "extra: 2024-02-30\n", encoding="utf-8"
    ),
    "an integer of more than 4300 digits": lambda path: path.write_text(
        dump(VALID).replace("max_records: 500", "max_records: " + "9" * 5000),
        encoding="utf-8",
    ),
    "deeply nested YAML": lambda path: path.write_text(
        dump(VALID) + "extra: " + "[" * 3000 + "]" * 3000 + "\n", encoding="utf-8"
    ),
    "a file that is not UTF-8": lambda path: path.write_bytes(
        dump(VALID).encode() + b"# caf\xe9\n"
    ),
    "a recursive alias": lambda path: path.write_text(
        dump(VALID) + "extra: &loop [1, *loop]\n", encoding="utf-8"
    ),
    "a billion laughs": lambda path: path.write_text(
        dump(VALID)
        + "".join(
            f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10 if i else ['lol'] * 10)}]\n"
            for i in range(9)
        ),
        encoding="utf-8",
    ),
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_an_input_that_once_escaped_is_a_config_error(case: str, tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text("SF_CLIENT_SECRET=a\nSF_REFRESH_TOKEN=b\n")
    (tmp_path / "secrets.env").chmod(0o600)
    path = tmp_path / "sfstream.yaml"
    ESCAPES[case](path)
    with pytest.raises(ConfigError):
        asyncio.run(load_config(path, environ={}))


def test_an_environment_override_that_is_not_yaml_becomes_config_error(tmp_path: Path) -> None:
    (tmp_path / "secrets.env").write_text("SF_CLIENT_SECRET=a\nSF_REFRESH_TOKEN=b\n")
    (tmp_path / "secrets.env").chmod(0o600)
    path = tmp_path / "sfstream.yaml"
    path.write_text(dump(VALID), encoding="utf-8")
    with pytest.raises(ConfigError, match="SFSTREAM_SINK__PATH") as caught:
        asyncio.run(load_config(path, environ={"SFSTREAM_SINK__PATH": "[unclosed"}))
    assert "[unclosed" not in str(caught.value)


def test_a_secrets_file_that_is_not_utf8_or_a_path_with_nul_is_a_config_error(
    tmp_path: Path,
) -> None:
    (tmp_path / "secrets.env").write_bytes(b"SF_CLIENT_SECRET=caf\xe9\nSF_REFRESH_TOKEN=b\n")
    (tmp_path / "secrets.env").chmod(0o600)
    path = tmp_path / "sfstream.yaml"
    path.write_text(dump(VALID), encoding="utf-8")
    with pytest.raises(ConfigError, match="not UTF-8") as caught:
        asyncio.run(load_config(path, environ={}))
    assert "caf" not in str(caught.value)
    document = {**VALID, "secrets": {"backend": "file", "file": "secrets\x00.env"}}
    path.write_text(dump(document), encoding="utf-8")
    with pytest.raises(ConfigError, match="secrets file"):
        asyncio.run(load_config(path, environ={}))
