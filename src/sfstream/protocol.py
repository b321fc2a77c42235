"""The output protocol: one JSON object per line.

| type | fields |
|---|---|
| `RECORD` | `stream`, `key`, `replay_id`, `data`, `meta`, `emitted_at` |
| `STATE` | `stream`, `replay_id`: everything of the stream up to this replayId is written |
| `SCHEMA` | `stream`, `version`, `schema` (and `diff`): the shape of later records |
| `GAP` | `stream`, `reason`, `from_replay_id`, `to`: events may be missing here |

Logs never go to stdout. Messages are serialized once, by `encode_lines` (msgspec): a
record around its payload's JSON text as it arrived.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

import msgspec
import orjson

from sfstream.errors import EncodingError

RECORD: Final = "RECORD"
STATE: Final = "STATE"
SCHEMA: Final = "SCHEMA"
GAP: Final = "GAP"


class Record(msgspec.Struct, gc=False):
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


class StateMessage(msgspec.Struct, gc=False):
    """The stream is written up to `replay_id`."""

    stream: str
    replay_id: int
    type: Literal["STATE"] = "STATE"


class GapMessage(msgspec.Struct, gc=False):
    """Events of `stream` may be missing between `from_replay_id` and the next record."""

    stream: str
    reason: str
    from_replay_id: int | None
    to: str
    detail: str | None = None
    type: Literal["GAP"] = "GAP"


class SchemaMessage(msgspec.Struct):
    """The schema the following records of `stream` (with this `schema_version`) follow.

    `subject` is the stream id, or `<stream id>.<entity>` for streams that carry several
    entities (`/data/ChangeEvents`, custom channels).
    """

    stream: str
    subject: str
    version: int
    schema: dict[str, Any]
    diff: list[dict[str, Any]] = msgspec.field(default_factory=list)
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

    One call encodes the whole batch (msgspec). A record whose `data` is the payload's JSON
    text (`msgspec.Raw`) gets those bytes copied in as they are: the payload is never
    encoded again. Keys come in the order of each message's fields.

    Raises:
        EncodingError: a message cannot be encoded (a payload nested deeper than the
            encoder allows, say); it names the stream and replayId of the first such one.
    """
    try:
        return _ENCODER.encode_lines(messages)
    except (msgspec.EncodeError, TypeError, ValueError, RecursionError):
        for message in messages:
            try:
                _ENCODER.encode(message)
            except (msgspec.EncodeError, TypeError, ValueError, RecursionError) as exc:
                raise _unencodable(message, exc) from None
        raise


_ENCODER: Final = msgspec.json.Encoder()


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
