"""`sfstream manifest`: the seed's manifest, every field and value as the seed writes it, and
`--check`, which validates the document and each claim against the code."""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from sfstream.manifest import check_manifest, manifest_schema, manifest_text
from tests.cli.test_commands import sfstream

SEED = """\
manifest_version: 1.0
id: conn::enterprise::crm::salesforce::cloud::streaming
name: Salesforce Streaming Connector
taxonomy:
  origin: enterprise
  source: crm
  provider: salesforce
  product: cloud
  method: streaming
runtime:
  supported_runners: [fargate, lambda]
  network_patterns: [nat_allowlist]
streams:
  strategy: discovery_by_config
  defaults:
    key_strategy: source_declared_or_config
    cursor_strategy: replay_id
"""
"""The seed's manifest, copied from the seed (issue 15, "The seed's manifest")."""


def leaves(value: Any, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any]]:
    """(path, value) of every scalar and list of `value`."""
    if isinstance(value, dict):
        return [found for key, item in value.items() for found in leaves(item, (*path, key))]
    return [(path, value)]


def at(document: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        assert isinstance(document, dict), f"{'.'.join(path)}: not a mapping on the way"
        assert key in document, f"{'.'.join(path)}: missing"
        document = document[key]
    return document


async def test_manifest_holds_the_seed_field_by_field() -> None:
    code, out, _ = await sfstream("manifest")
    assert code == 0
    printed = yaml.safe_load(out)
    seed = yaml.safe_load(SEED)
    fields = leaves(seed)
    assert len(fields) == 13
    for path, value in fields:
        found = at(printed, path)
        assert found == value, f"{'.'.join(path)}: {found!r}, the seed says {value!r}"
        assert type(found) is type(value), f"{'.'.join(path)}: {type(found).__name__}"
    # Written as the seed writes it, too.
    assert SEED in out


async def test_check_passes_and_the_seed_alone_is_not_enough() -> None:
    code, out, err = await sfstream("manifest", "--check")
    assert (code, err) == (0, "")
    assert "matches the code" in out
    # The seed's fields validate; only sfstream's own part is missing.
    (problem,) = check_manifest(SEED)
    assert problem.startswith("manifest is not valid: 1 validation error")
    assert "x-sfstream" in problem


def drifted(old: str, new: str) -> list[str]:
    text = manifest_text()
    assert old in text
    return check_manifest(text.replace(old, new, 1))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "supported_runners: [fargate, lambda]",
            "supported_runners: [fargate, lambda, kubernetes]",
            "runtime.supported_runners",
        ),
        (
            "entrypoint: sfstream.runners.service:serve",
            "entrypoint: sfstream.runners.service:nope",
            "runner fargate: sfstream.runners.service:nope is not callable",
        ),
        (
            "command: sfstream run --config <file>",
            "command: sfstream serve --config <file>",
            "runner fargate: `sfstream serve --config <file>` is not a command",
        ),
        (
            "network_patterns: [nat_allowlist]",
            "network_patterns: [nat_allowlist, private_link]",
            "runtime.network_patterns",
        ),
        (
            "command: sfstream endpoints --config <file>",
            "command: sfstream egress --config <file>",
            "network pattern nat_allowlist",
        ),
        ("method: streaming", "method: polling", "differs from its taxonomy"),
        ("strategy: discovery_by_config", "strategy: discovery_by_metadata", "default discovery"),
        ("backends: [sqlite, postgres", "backends: [sqlite, postgres, redis", "state backends"),
        ("secrets: [env, file, aws]", "secrets: [env, file]", "auth.secrets"),
        ("sinks: [stdout, file, kafka, postgres, s3]", "sinks: [stdout, file, kinesis]", "sinks"),
        (
            "sfstream_lease_takeovers_total]",
            "sfstream_lease_takeovers_total, sfstream_checkpoints_total]",
            "metric families ['sfstream_checkpoints_total']",
        ),
        (
            "sfstream_errors_total,",
            "",
            "metric families ['sfstream_errors_total']",
        ),
        ("lag_seconds, errors, reconnects]", "lag_seconds, reconnects]", "lambda metrics"),
        ("lambda_namespace: sfstream", "lambda_namespace: other", "lambda_namespace"),
    ],
)
def test_check_catches_drift(old: str, new: str, expected: str) -> None:
    problems = drifted(old, new)
    assert any(expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("manifest_version: 1.0", "manifest_version: 2.0"),
        ("cursor_strategy: replay_id", "cursor_strategy: timestamp"),
        ("key_strategy: source_declared_or_config", "key_strategy: hash"),
    ],
)
def test_check_refuses_other_seed_values(old: str, new: str) -> None:
    assert drifted(old, new)


def test_json_schema_validates_the_manifest() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = manifest_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    assert list(validator.iter_errors(yaml.safe_load(manifest_text()))) == []
    errors = list(validator.iter_errors(yaml.safe_load(SEED)))
    assert [e.message for e in errors] == ["'x-sfstream' is a required property"]


async def test_the_shipped_schema_is_the_models_and_validates_the_printed_manifest() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    code, out, err = await sfstream("manifest", "--schema")
    assert code == 0, err
    shipped = json.loads(out)
    assert shipped == manifest_schema()
    code, out, err = await sfstream("manifest")
    manifest = yaml.safe_load(out)
    assert list(jsonschema.Draft202012Validator(shipped).iter_errors(manifest)) == []
    broken = dict(manifest, manifest_version="two")
    assert list(jsonschema.Draft202012Validator(shipped).iter_errors(broken))
