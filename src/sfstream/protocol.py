"""The output protocol: one JSON object per line.

| type | fields |
|---|---|
| `RECORD` | `stream`, `key`, `replay_id`, `data`, `meta`, `emitted_at` |
| `STATE` | `stream`, `replay_id`: everything of the stream up to this replayId is written |
| `SCHEMA` | `stream`, `version`, `schema` (and `diff`): the shape of later records |
| `GAP` | `stream`, `reason`, `from_replay_id`, `to`: events may be missing here |

Logs never go to stdout. Messages are serialized once, by `encode_lines`: records around
their payload's JSON text as it arrived, everything else with orjson.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import msgspec
import orjson

from sfstream.errors import EncodingError

RECORD: Final = "RECORD"
STATE: Final = "STATE"
SCHEMA: Final = "SCHEMA"
GAP: Final = "GAP"


@dataclass(slots=True)
class Record:
    """One event (or one record of a merged change event) of a stream.

    `data` is the event's payload: the JSON text it arrived as (`msgspec.Raw`, written out
    unchanged; `record_data` decodes it) or, for records built from decoded values, those
    values.
    """

    stream: str
    key: str | None
    replay_id: int
    data: Any
    meta: dict[str, Any]
    emitted_at: str
    type: Literal["RECORD"] = "RECORD"


@dataclass(slots=True)
class StateMessage:
    """The stream is written up to `replay_id`."""

    stream: str
    replay_id: int
    type: Literal["STATE"] = "STATE"


@dataclass(slots=True)
class GapMessage:
    """Events of `stream` may be missing between `from_replay_id` and the next record."""

    stream: str
    reason: str
    from_replay_id: int | None
    to: str
    detail: str | None = None
    type: Literal["GAP"] = "GAP"


@dataclass(slots=True)
class SchemaMessage:
    """The schema the following records of `stream` (with this `schema_version`) follow.

    `subject` is the stream id, or `<stream id>.<entity>` for streams that carry several
    entities (`/data/ChangeEvents`, custom channels).
    """

    stream: str
    subject: str
    version: int
    schema: dict[str, Any]
    diff: list[dict[str, Any]] = field(default_factory=list)
    breaking: bool = False
    schema_id: str | None = None
    type: Literal["SCHEMA"] = "SCHEMA"


Message = Record | StateMessage | GapMessage | SchemaMessage


def encode(message: Message) -> bytes:
    """One line of output, without the newline."""
    return encode_lines([message])[:-1]


def record_data(record: Record) -> Any:
    """A record's `data` as objects: decoded once here when it is the payload's JSON text
    (`msgspec.Raw`), for sinks that map fields to columns."""
    data = record.data
    return msgspec.json.decode(data) if isinstance(data, msgspec.Raw) else data


def encode_lines(messages: Sequence[Message]) -> bytes:
    """Messages as JSON lines, each with its newline: what a sink writes.

    A record whose `data` is the payload's JSON text
    (`msgspec.Raw`) is assembled around those bytes, copied once into the result: the
    payload is never encoded again. Keys come in the order of `Record`'s fields, as for every other
    message.

    Raises:
        EncodingError: a message cannot be encoded (a payload nested deeper than the
            encoder allows, say); it names the stream and replayId of the first such one.
    """
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    parts: list[Any] = []
    append = parts.append
    prefixes = _STREAM_PREFIXES
    emitted: str | None = None
    suffix = b""
    for message in messages:
        try:
            if type(message) is not Record:
                append(dumps(message, option=newline))
                continue
            stream = message.stream
            prefix = prefixes.get(stream)
            if prefix is None:
                prefix = prefixes.setdefault(stream, b'{"stream":' + dumps(stream) + b',"key":')
            append(prefix)
            append(dumps(message.key))
            append(b',"replay_id":%d,"data":' % message.replay_id)
            data = message.data
            append(data if type(data) is msgspec.Raw else dumps(data, default=_fragment))
            append(b',"meta":')
            append(dumps(message.meta))
            if message.emitted_at is not emitted:
                emitted = message.emitted_at
                suffix = b',"emitted_at":' + dumps(emitted) + b',"type":"RECORD"}\n'
            append(suffix)
        except (orjson.JSONEncodeError, TypeError) as exc:
            raise _unencodable(message, exc) from None
    return b"".join(parts)


def _fragment(value: Any) -> orjson.Fragment:
    """JSON text kept as it arrived (`msgspec.Raw`) inside other data, as is."""
    if isinstance(value, msgspec.Raw):
        return orjson.Fragment(bytes(value))
    raise TypeError(f"Type is not JSON serializable: {type(value).__name__}")


_STREAM_PREFIXES: dict[str, bytes] = {}
"""`{"stream":<id>,"key":` per stream id, the start of each of its RECORD lines."""


def _unencodable(message: Message, exc: Exception) -> EncodingError:
    replay_id = getattr(message, "replay_id", None)
    where = f"the event at replayId {replay_id} of stream {message.stream}"
    if not isinstance(message, Record):
        where = f"a {message.type} message of stream {message.stream}"
    skip = (
        f"; to skip it, run `sfstream state set {message.stream} {replay_id}` and restart"
        if isinstance(message, Record)
        else ""
    )
    return EncodingError(
        f"{where} cannot be written as JSON ({exc}){skip}",
        replay_id=replay_id if isinstance(replay_id, int) else None,
    )


def decode(line: bytes) -> dict[str, Any]:
    """Parse one output line (for readers of sink output and tests).

    Raises:
        ValueError: the line is not a JSON object with a `type`.
    """
    value = orjson.loads(line)
    if not isinstance(value, dict) or "type" not in value:
        raise ValueError("not an sfstream output message")
    return value
