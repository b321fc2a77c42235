"""deploy/grafana/sfstream-dashboard.json: every metric its queries use is one the connector
exports, and every panel says where its data comes from and what it shows."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sfstream.observability.metrics import Metrics
from sfstream.observability.telemetry import Telemetry

DASHBOARD = Path(__file__).parents[2] / "deploy" / "grafana" / "sfstream-dashboard.json"
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}

# PromQL words that are not metric names (functions are told apart by their parenthesis).
_KEYWORDS = frozenset(
    {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
    | {"bool", "offset", "inf", "nan"}
)
# Not within a number or a duration (`1e3`, `5m`).
_IDENTIFIER = re.compile(r"(?<![A-Za-z0-9_:.])[A-Za-z_:][A-Za-z0-9_:]*")


def metric_names(expr: str) -> set[str]:
    """The metric names an expression selects.

    Quoted strings (label values, variables), label matchers `{...}`, ranges `[...]` and
    the clauses `by (...)`, `without (...)`, `on (...)`, `ignoring (...)`, `group_left
    (...)` and `group_right (...)` are removed; what remains that is an identifier not
    followed by `(` (a function or an aggregation) and not a keyword is a metric name.
    """
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        word = match.group()
        if word.lower() in _KEYWORDS or text[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    return names


def test_the_extractor() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{x=~"$y", z!="w(v)"}[5m])))'
        " / on (job, instance) group_left (stream) b and c offset 5m > bool 0"
    ) == {"a_bucket", "b", "c"}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return document


@pytest.fixture(scope="module")
def exported() -> set[str]:
    """Every metric and sample name the connector's endpoint can serve."""
    metrics = Metrics(Telemetry(), lambda: None)
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name)
        names.update(family.name + suffix for suffix in ("_total", "_bucket", "_count", "_sum"))
        names.update(sample.name for sample in family.samples)
    return names


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])  # the panels of a collapsed row


def expressions(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable."""
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            yield f"panel {panel['title']!r}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            found = re.fullmatch(r"label_values\((.+),\s*\w+\)", text)
            assert found, f"variable {variable['name']}: unexpected query {text!r}"
            yield f"variable {variable['name']!r}", found.group(1)


def test_it_is_a_grafana_dashboard(dashboard: dict[str, Any]) -> None:
    assert dashboard["schemaVersion"] == 39
    assert dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    stream = variables["stream"]
    assert stream["type"] == "query"
    assert stream["datasource"] == DATASOURCE
    assert stream["query"]["query"] == "label_values(sfstream_events_received_total, stream)"


def test_every_panel_has_a_datasource_and_a_title(dashboard: dict[str, Any]) -> None:
    ids = []
    for panel in panels(dashboard):
        if panel["type"] == "row":
            continue
        ids.append(panel["id"])
        assert panel.get("title"), panel
        assert panel.get("datasource") == DATASOURCE, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target.get("datasource") == DATASOURCE, panel["title"]
            assert target["expr"].strip(), panel["title"]
    assert len(ids) == len(set(ids)), "panel ids repeat"


def test_every_metric_used_is_exported(dashboard: dict[str, Any], exported: set[str]) -> None:
    used: dict[str, list[str]] = {}
    for where, expr in expressions(dashboard):
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        for name in names:
            used.setdefault(name, []).append(where)
    unknown = {name: places for name, places in used.items() if name not in exported}
    assert not unknown, f"metrics the connector does not export: {unknown}"
    # What the dashboard is for: each family of the connector, and the process figures.
    assert {
        "sfstream_events_received_total",
        "sfstream_records_written_total",
        "sfstream_lag_seconds",
        "sfstream_checkpoint_replay_id",
        "sfstream_subscription_up",
        "sfstream_errors_total",
        "sfstream_reconnects_total",
        "sfstream_token_refreshes_total",
        "sfstream_gaps_total",
        "sfstream_schema_changes_total",
        "sfstream_sink_write_seconds_bucket",
        "sfstream_checkpoint_commit_seconds_bucket",
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
    } <= set(used)
