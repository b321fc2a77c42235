"""What every state backend shares: argument checks and commit timestamps.

Backends check a batch completely before they touch storage, so a bad entry half-way
through a batch can never leave the first half committed; the storage transaction is the
second line of defence (a crash, a killed process, a lost connection).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Final

from sfstream.errors import ConfigError

INT64_MAX: Final = 2**63 - 1
"""The largest replayId a store holds: Salesforce replay ids are signed 64-bit integers."""


def check_stream(stream: object) -> str:
    """`stream` if it is a usable stream id, else `ConfigError`.

    NUL is refused because PostgreSQL cannot store it in `text`; every backend refuses it
    so that a stream id valid for one is valid for all.
    """
    if not isinstance(stream, str) or not stream:
        raise ConfigError(f"a stream id must be a non-empty string, not {stream!r}")
    if "\x00" in stream:
        raise ConfigError(f"stream id {stream!r} contains a NUL character")
    return stream


def check_batch(replay_ids: Mapping[str, int]) -> list[tuple[str, int]]:
    """The batch as `(stream, replay_id)` pairs sorted by stream.

    Sorting gives every writer the same lock order, so concurrent commits to overlapping
    streams cannot deadlock in backends with row locks.

    Raises:
        ConfigError: an entry is not a stream id and a replayId in `0..2**63-1`. Negative
            numbers are Salesforce's subscribe policies (-1 latest, -2 earliest), never a
            position that events were written up to, so a store refuses them.
    """
    if not isinstance(replay_ids, Mapping):
        raise ConfigError(
            f"checkpoints must be a mapping of stream id to replayId, "
            f"not {type(replay_ids).__name__}"
        )
    pairs: list[tuple[str, int]] = []
    for stream, replay_id in replay_ids.items():
        check_stream(stream)
        if isinstance(replay_id, bool) or not isinstance(replay_id, int):
            raise ConfigError(
                f"the checkpoint of stream {stream!r} must be an int replayId, "
                f"not {type(replay_id).__name__}"
            )
        if not 0 <= replay_id <= INT64_MAX:
            raise ConfigError(
                f"the checkpoint of stream {stream!r} must be a replayId in 0..{INT64_MAX}, "
                f"not {replay_id}"
            )
        pairs.append((stream, replay_id))
    pairs.sort()
    return pairs


def check_start(stream: str, start: object) -> int | None:
    """`start` if it is an override's start (see `Override.start`), else `ConfigError`."""
    check_stream(stream)
    if start is None:
        return None
    if isinstance(start, bool) or not isinstance(start, int):
        raise ConfigError(
            f"the position of stream {stream!r} must be an int replayId, -2, -1 or None, "
            f"not {type(start).__name__}"
        )
    if not -2 <= start <= INT64_MAX:
        raise ConfigError(
            f"the position of stream {stream!r} must be a replayId in 0..{INT64_MAX}, "
            f"-2 (earliest) or -1 (latest), not {start}"
        )
    return start


def check_streams(streams: Iterable[str] | None) -> list[str] | None:
    """The distinct stream ids of `streams`, sorted (None stays None: every stream)."""
    if streams is None:
        return None
    if isinstance(streams, str):
        # A bare string is an iterable of characters: almost certainly a mistake.
        raise ConfigError(f"streams must be a collection of stream ids, not the string {streams!r}")
    return sorted({check_stream(stream) for stream in streams})


def utc_now() -> datetime:
    """The current time, timezone-aware, in UTC."""
    return datetime.now(UTC)


def iso_utc(moment: datetime) -> str:
    """`moment` as the ISO-8601 text of `Checkpoint.updated_at`: UTC, microseconds."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def owned_message(streams: list[str], holder: str | None) -> str:
    """What a refused `owner` says: which streams, and who owns them."""
    subject = (
        f"stream {streams[0]} is" if len(streams) == 1 else f"streams {', '.join(streams)} are"
    )
    return f"{subject} being streamed by a running `sfstream run`" + (
        f" ({holder})" if holder else ""
    )


def check_worker(worker: object) -> str:
    """`worker` if it is a usable worker id (a non-empty string without NUL), else
    `ConfigError`."""
    if not isinstance(worker, str) or not worker or "\x00" in worker:
        raise ConfigError(f"a worker id must be a non-empty string, not {worker!r}")
    return worker


def check_ttl(ttl_s: object) -> float:
    """`ttl_s` as a float if it is a usable lease duration (finite, above 0)."""
    if (
        isinstance(ttl_s, bool)
        or not isinstance(ttl_s, int | float)
        or not math.isfinite(ttl_s)
        or ttl_s <= 0
    ):
        raise ConfigError(f"a lease TTL must be a positive number of seconds, not {ttl_s!r}")
    return float(ttl_s)


def check_tokens(tokens: Mapping[str, int]) -> list[tuple[str, int]]:
    """`tokens` (stream -> lease token) as sorted pairs, each checked."""
    if not isinstance(tokens, Mapping):
        raise ConfigError(f"lease tokens must be a mapping, not {type(tokens).__name__}")
    pairs = []
    for stream, token in tokens.items():
        check_stream(stream)
        if isinstance(token, bool) or not isinstance(token, int) or not 0 < token <= INT64_MAX:
            raise ConfigError(f"the lease token of stream {stream!r} must be a positive int")
        pairs.append((stream, token))
    pairs.sort()
    return pairs
