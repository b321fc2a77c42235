"""Structured logging: JSON lines (or readable console lines on a terminal) on stderr.

stdout belongs to data (records, `tail` output); every log line goes to stderr. Context
(run id, stream, channel, replayId) is bound with `structlog.contextvars` and merged into
every line. `RedactSecrets` runs last before rendering, after exceptions are formatted, so
that no secret value reaches a log line, wherever it came from.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, Final, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

REDACTED: Final = "[REDACTED]"
_SENSITIVE_KEY: Final = re.compile(
    r"(secret|password|passwd|token|authorization|api[_-]?key|credential)", re.IGNORECASE
)
_BEARER: Final = re.compile(r"(?i)\b(bearer|oauth)\s+[A-Za-z0-9!._~+/=-]{12,}")
_SF_TOKEN: Final = re.compile(r"\b00D[A-Za-z0-9]{12,15}![A-Za-z0-9._]{20,}")


class RedactSecrets:
    """Replace secret values, and values of secret-sounding keys, in every event.

    Args:
        secrets: values that must never appear (tokens, client secrets, passwords); more can
            be added later with `add`, e.g. a refreshed access token.
    """

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        for secret in secrets:
            self.add(secret)

    def add(self, secret: str) -> None:
        if len(secret) < 4 or secret in self._secrets:
            return
        self._secrets.add(secret)
        ordered = sorted(self._secrets, key=len, reverse=True)
        self._pattern = re.compile("|".join(re.escape(s) for s in ordered))

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            if self._pattern is not None:
                value = self._pattern.sub(REDACTED, value)
            value = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", value)
            return _SF_TOKEN.sub(REDACTED, value)
        if isinstance(value, dict):
            return {k: self._value(k, v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self._scrub(v) for v in value]
        return value

    def _value(self, key: Any, value: Any) -> Any:
        sensitive = isinstance(key, str) and _SENSITIVE_KEY.search(key) is not None
        if sensitive and value not in (None, "") and not isinstance(value, dict | list):
            return REDACTED
        return self._scrub(value)

    def __call__(self, logger: WrappedLogger, name: str, event: EventDict) -> EventDict:
        return {key: self._value(key, value) for key, value in event.items()}


def _orjson_dumps(obj: Any, **_: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(
    *,
    level: str = "info",
    json: bool | None = None,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> RedactSecrets:
    """Set up structlog (and the stdlib root logger) once, at process start.

    Args:
        level: minimum level name.
        json: JSON lines when True, console lines when False; by default JSON unless stderr
            is a terminal.
        secrets: values to redact from every line.
        stream: where lines go (stderr by default).

    Returns the redaction processor, to register secrets learnt later.
    """
    out = stream or sys.stderr
    as_json = json if json is not None else not out.isatty()
    redact = RedactSecrets(secrets)
    renderer: Processor = (
        structlog.processors.JSONRenderer(serializer=_orjson_dumps)
        if as_json
        else structlog.dev.ConsoleRenderer(colors=out.isatty())
    )
    processors: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        structlog.processors.format_exc_info,
        redact,
        renderer,
    ]
    numeric = logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(max(numeric, logging.WARNING))
    return redact
