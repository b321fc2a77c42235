"""Log lines are JSON on stderr, carry bound context, and never carry a secret."""

from __future__ import annotations

import io

import orjson
import structlog

from sfstream.observability import RedactSecrets, configure_logging

SECRET = "tH1s-is-the-client-secret"
TOKEN = "00D5g00000EmuOr!AQ0A9994kmUpr2DyTQNC9f8bm9FRIXglyPZhorEIVcl"


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_bound_context() -> None:
    stream = io.StringIO()
    configure_logging(json=True, stream=stream)
    log = structlog.get_logger("t")
    with structlog.contextvars.bound_contextvars(run_id="r1", channel="/data/X"):
        log.info("subscribed", replay_id=42)
    (line,) = lines(stream)
    assert line["event"] == "subscribed"
    assert line["run_id"] == "r1"
    assert line["channel"] == "/data/X"
    assert line["replay_id"] == 42
    assert line["level"] == "info"
    assert "timestamp" in line


def test_secrets_are_redacted_everywhere() -> None:
    stream = io.StringIO()
    redact = configure_logging(json=True, secrets=[SECRET], stream=stream)
    redact.add(TOKEN)
    log = structlog.get_logger("t")
    log.info("plain", detail=f"the secret is {SECRET} ok")
    log.info("nested", body={"list": [SECRET, {"deeper": f"x{SECRET}y"}]})
    log.info("by key", client_secret="anything", access_token="whatever", password="pw")
    log.info("header", header=f"Authorization: Bearer {TOKEN}")
    log.info("unknown bearer", header="Authorization: Bearer abcdefghijklmnopqrstuvwxyz")
    log.info("salesforce shaped", text="token 00DAAAAAAAAAAAA!ARbcdefghijklmnopqrstuvwxyz12")
    try:
        raise ValueError(f"failed with {SECRET}")
    except ValueError:
        log.exception("boom")
    output = stream.getvalue()
    assert SECRET not in output
    assert TOKEN not in output
    assert "abcdefghijklmnopqrstuvwxyz" not in output
    assert "ARbcdefghijklmnopqrstuvwxyz12" not in output
    assert "anything" not in output
    assert output.count("[REDACTED]") >= 9
    parsed = lines(stream)
    assert parsed[2]["client_secret"] == "[REDACTED]"
    assert "ValueError" in str(parsed[-1]["exception"])


def test_capture_logs_sees_unredacted_events_only_in_tests() -> None:
    processor = RedactSecrets([SECRET])
    event = processor(None, "info", {"event": "x", "value": SECRET, "count": 3})
    assert event == {"event": "x", "value": "[REDACTED]", "count": 3}
