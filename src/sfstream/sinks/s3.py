"""`S3Sink`: one S3 object per batch and stream, JSON lines (gzipped by default).

Needs the `aws` extra (`pip install 'sfstream[aws]'`): boto3 is imported by the first call,
in a worker thread, never when `sfstream` is. Credentials and region come from the AWS chain
(task or execution role, `AWS_*` variables, a profile); `endpoint_url` points the client at
another endpoint (a VPC endpoint, MinIO, LocalStack, moto).

## The objects

A batch becomes one object per stream it holds: the stream's messages, in order, as the very
bytes the file sink writes (RECORDs, and the stream's SCHEMA and GAP messages where they came;
its STATE messages, which the engine puts at the end of a batch, end the object)::

    {prefix}/{stream}/dt={YYYY-MM-DD}/{generation}-{position}-{kind}-{first}-{last}-{digest}.jsonl.gz

- `dt`: the UTC date the batch's first record of the stream was emitted (`emitted_at`; for an
  object without records, the date it is written), but never before the stream's newest
  object: a stream's dates never go backwards, even when clocks do.
- `generation` (6 digits) and `position` (19 digits) are the stream's count of GAP messages
  and its position (the replayId of its latest RECORD or STATE since its latest GAP, -1 when
  none) *after* the object, both **inverted** (999999 - generation, 10**19 - 1 - (position
  + 1)): within a date, names sort newest first. So a restart finds a stream's position from
  its newest object alone, in two LIST calls, however many objects a day holds (in ascending
  order it would have to list the whole day: up to one object per batch, 86,400 a day for one
  batch a second).
- `kind`: `m` (its RECORDs or STATEs set the position), `g` (a GAP after its last RECORD or
  STATE: the stream has no position), `c` (SCHEMA messages only: the position carries over).
  It orders an object after the one it follows when both leave the same position.
- `first`, `last`: the replayIds of its first and last RECORD or STATE, zero-padded to 19
  digits (`none` when it has none), for people looking for an event.
- `digest`: 16 hex digits of the BLAKE2b hash of its JSON lines. Two different objects never
  share a key; a batch rewritten identically lands on the same key (a write retried after a
  lost answer overwrites its own object instead of adding one).

Read a stream in order by taking its dates in ascending order and the names of each date in
descending order. Every stream's objects keep their own order; the interleaving of streams
within a batch is not kept.

## Guarantees

- **Durable and atomic on return.** A `write` returns once every PUT of the batch succeeded
  (botocore 1.36 and later add a CRC32 checksum that S3 verifies). The PUTs of different streams
  run concurrently, `max_concurrency` at a time. An object is whole or absent; a failed
  write may leave the objects of some streams, never part of one.
- **Exact high-water marks.** `high_watermarks` reads each stream's newest object's name:
  one LIST of its date prefixes (one more per thousand dates), one LIST of the newest date
  (`MaxKeys` 20; more only when that date holds foreign objects and no sink object). Every
  object says the position after it, so a crash anywhere leaves the marks exact, and the
  engine resumes after what the bucket holds: exactly once.
- **One writer per stream.** The generation of a new object comes from the newest one the sink
  knows (read on the first write of a stream, or by `high_watermarks`); two sinks writing the
  same stream at once would mix their counts. A lease fence is not checked: S3 cannot.

**Errors.** Throttling (`SlowDown`), S3's 5xx answers and an unreachable endpoint are
`StorageUnavailableError` (retryable; botocore has already tried 3 times); a missing bucket,
an identity without `s3:PutObject` or `s3:ListBucket`, refused credentials, a bucket in
another region are `StorageError` (terminal).

All blocking calls run in a worker thread under a `threading.Lock`, so that the event loop
keeps polling while S3 answers, and a call abandoned by a cancelled caller finishes before
the next starts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import gzip
import hashlib
import importlib.util
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from sfstream.errors import ConfigError, SfStreamError, StorageError, StorageUnavailableError
from sfstream.protocol import GapMessage, Message, Record, StateMessage, encode_lines
from sfstream.secrets import _boto

if TYPE_CHECKING:
    from sfstream.state.base import Fence

T = TypeVar("T")

GENERATION_DIGITS: Final = 6
POSITION_DIGITS: Final = 19
"""Digits of a replayId in a key: 0 .. 2**63 - 1 fit."""
MAX_REPLAY_ID: Final = 2**63 - 1
LIST_KEYS: Final = 20
"""Keys a LIST of a date asks for: the newest is enough unless foreign objects come first."""

_NAME: Final = re.compile(
    r"(?P<generation>\d{6})-(?P<position>\d{19})-(?P<kind>[cgm])-"
    r"(?:none|\d{19}-\d{19})-(?P<digest>[0-9a-f]{16})\.jsonl(?:\.gz)?"
)
_DATE_PREFIX: Final = re.compile(r"dt=(\d{4}-\d{2}-\d{2})/")
_BUCKET: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\-]{1,254}")
_CONTENT_TYPES: Final = {"none": "application/x-ndjson", "gzip": "application/gzip"}

# S3's error codes that a later attempt may not get (throttling, its own failures).
_TRANSIENT_CODES: Final = frozenset(
    {
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequestsException",
        "InternalError",
        "ServiceUnavailable",
        "RequestTimeout",
        "OperationAborted",
        "ExpiredToken",
        "ExpiredTokenException",
        "KMS.ThrottlingException",
    }
)
_DENIED_CODES: Final = frozenset({"AccessDenied", "AllAccessDisabled", "AccountProblem"})
_CREDENTIAL_CODES: Final = frozenset(
    {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken", "InvalidSecurity"}
)
_REGION_CODES: Final = frozenset(
    {"PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraintException"}
)


class BucketMissingError(StorageError):
    """The S3 bucket does not exist."""


@dataclass(frozen=True, slots=True)
class _Head:
    """A stream's newest object, as far as the sink knows: where the next one goes."""

    date: str = ""
    """Its `dt` ("" when the stream has no object)."""
    generation: int = 0
    position: int = -1
    key: str | None = None
    digest: str | None = None


@dataclass(frozen=True, slots=True)
class _Piece:
    """One stream's part of a batch, encoded, with what its key needs."""

    stream: str
    data: bytes
    gaps: int
    after: int | None
    """The replayId of its last RECORD or STATE after its last GAP (None: none after)."""
    first: int | None
    last: int | None
    day: str | None
    """The date its first record was emitted."""


class S3Sink:
    """Writes each batch as one object per stream to an S3 bucket; `write` returns once every
    object is stored.

    Args:
        bucket: the bucket; it must exist.
        prefix: the key prefix (leading and trailing `/` ignored; "" for the bucket's root).
        region: the bucket's region; None takes the AWS chain's (`AWS_REGION`, the profile).
        endpoint_url: the S3 endpoint; None takes boto3's (which honours
            `AWS_ENDPOINT_URL_S3` and `AWS_ENDPOINT_URL`).
        compression: `gzip` (`.jsonl.gz` objects) or `none` (`.jsonl`).
        max_concurrency: PUTs (and LISTs of `high_watermarks`) run at once.

    Raises:
        ConfigError: boto3 is not installed, or the arguments are not usable.
    """

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "sfstream",
        region: str | None = None,
        endpoint_url: str | None = None,
        compression: Literal["none", "gzip"] = "gzip",
        max_concurrency: int = 8,
    ) -> None:
        # Only looked for: importing boto3 takes a while, and happens in the worker thread.
        if importlib.util.find_spec("boto3") is None:
            raise ConfigError("the S3 sink needs boto3: pip install 'sfstream[aws]'")
        if not isinstance(bucket, str) or not _BUCKET.fullmatch(bucket):
            raise ConfigError(f"S3 bucket name {bucket!r} must be letters, digits, '.', '_', '-'")
        if compression not in _CONTENT_TYPES:
            raise ConfigError(f"S3 sink compression must be none or gzip, not {compression!r}")
        if max_concurrency < 1:
            raise ConfigError("max_concurrency must be positive")
        self.bucket = bucket
        self.region = region
        self.endpoint_url = endpoint_url
        self.compression = compression
        stripped = prefix.strip("/")
        self._base = f"{stripped}/" if stripped else ""
        self._suffix = ".jsonl.gz" if compression == "gzip" else ".jsonl"
        self._max_concurrency = max_concurrency
        self._heads: dict[str, _Head] = {}
        # Held by the worker thread for every call, so that a call abandoned by a cancelled
        # caller finishes before the next one starts; the client lock only guards its making.
        self._lock = threading.Lock()
        self._client_lock = threading.Lock()
        self._client: Any = None
        self._pool: concurrent.futures.ThreadPoolExecutor | None = None
        self._closed = False
        self._calls_lock = threading.Lock()
        self._list_calls = 0
        self._last_scan_list_calls = 0

    def describe(self) -> str:
        """`S3 bucket 'x' (eu-west-1)`, for messages."""
        return f"S3 bucket {self.bucket!r}" + (f" ({self.region})" if self.region else "")

    def __repr__(self) -> str:
        return f"S3Sink({self.bucket!r}, prefix={self._base!r}, compression={self.compression!r})"

    @property
    def last_scan_list_calls(self) -> int:
        """LIST calls the latest `high_watermarks` made."""
        return self._last_scan_list_calls

    async def __aenter__(self) -> S3Sink:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    async def write(self, messages: Sequence[Message], fence: Fence | None = None) -> None:
        """Store `messages` as one object per stream; every object is stored on return.

        An empty batch writes nothing. The first write of a stream this sink has not read the
        marks of reads its newest object first (two LIST calls).

        Raises:
            StorageError: S3 refused (a missing bucket, permissions, credentials, region), a
                stream id or replayId cannot make a key, or the sink is closed.
            StorageUnavailableError: S3 cannot be reached or asks to slow down; the objects of
                some streams may be stored, never part of one.
            EncodingError: a message cannot be written as JSON (nothing is stored).
        """
        if self._closed:
            raise StorageError(f"{self.describe()}: the sink is closed")
        if not messages:
            return
        # Encoded here, before any I/O: the worker threads never touch the caller's objects,
        # and a message that cannot be encoded fails the batch before anything is stored.
        pieces = _pieces(messages)
        await asyncio.to_thread(self._locked, lambda: self._write_sync(pieces))

    async def high_watermarks(self, streams: Iterable[str]) -> dict[str, int]:
        """Each stream's position, from the name of its newest object: the replayId of its
        latest RECORD or STATE since its latest GAP. Streams without one are absent.

        Raises:
            StorageError: S3 refused (see `write`), or the sink is closed.
            StorageUnavailableError: S3 cannot be reached or asks to slow down.
        """
        wanted = sorted(set(streams))
        if self._closed:
            raise StorageError(f"{self.describe()}: the sink is closed")
        heads = await asyncio.to_thread(self._locked, lambda: self._scan_sync(wanted))
        return {stream: head.position for stream, head in heads.items() if head.position >= 0}

    async def close(self) -> None:
        """Release the client and the threads; idempotent. Written objects are stored."""
        self._closed = True
        await asyncio.to_thread(self._locked, self._close_sync)

    # Everything below runs in worker threads.

    def _locked(self, work: Callable[[], T]) -> T:
        with self._lock:
            return work()

    def _write_sync(self, pieces: list[_Piece]) -> None:
        if self._closed:
            raise StorageError(f"{self.describe()}: the sink is closed")
        self._read_heads([piece.stream for piece in pieces if piece.stream not in self._heads])
        today = datetime.now(UTC).date().isoformat()
        planned = [(piece, self._plan(piece, self._heads[piece.stream], today)) for piece in pieces]
        outcomes = self._each([partial(self._put, piece, head) for piece, head in planned])
        failures: list[SfStreamError] = []
        for (piece, head), outcome in zip(planned, outcomes, strict=True):
            if isinstance(outcome, SfStreamError):
                # Stored or not, nobody knows: the next write of the stream reads its head again.
                self._heads.pop(piece.stream, None)
                failures.append(outcome)
            else:
                self._heads[piece.stream] = head
        if failures:
            raise _first(failures)

    def _plan(self, piece: _Piece, head: _Head, today: str) -> _Head:
        """The stream's head once `piece` is stored, with the key it is stored at."""
        digest = hashlib.blake2b(piece.data, digest_size=8).hexdigest()
        if digest == head.digest and head.key is not None and head.key.endswith(self._suffix):
            return head  # the newest object again (a retried write): the same key
        generation = head.generation + piece.gaps
        if piece.after is not None:
            kind, position = "m", piece.after
        elif piece.gaps:
            kind, position = "g", -1
        else:
            kind, position = "c", head.position
        if generation >= 10**GENERATION_DIGITS:
            raise StorageError(
                f"{self.describe()}: stream {piece.stream} has had {generation} GAPs, more than "
                f"its keys can count; give it a new prefix"
            )
        day = max(piece.day or today, head.date)
        span = "none" if piece.first is None else f"{piece.first:019d}-{piece.last:019d}"
        name = (
            f"{10**GENERATION_DIGITS - 1 - generation:06d}-"
            f"{10**POSITION_DIGITS - 2 - position:019d}-{kind}-{span}-{digest}{self._suffix}"
        )
        key = f"{self._base}{piece.stream}/dt={day}/{name}"
        return _Head(day, generation, position, key, digest)

    def _put(self, piece: _Piece, head: _Head) -> None:
        assert head.key is not None
        body = piece.data
        if self.compression == "gzip":
            body = gzip.compress(body, compresslevel=6, mtime=0)  # mtime 0: the same bytes
        self._call(
            f"store s3://{self.bucket}/{head.key}",
            "put_object",
            Bucket=self.bucket,
            Key=head.key,
            Body=body,
            ContentType=_CONTENT_TYPES[self.compression],
        )

    def _scan_sync(self, streams: list[str]) -> dict[str, _Head]:
        if self._closed:
            raise StorageError(f"{self.describe()}: the sink is closed")
        with self._calls_lock:
            before = self._list_calls
        try:
            return self._read_heads(streams)
        finally:
            with self._calls_lock:
                self._last_scan_list_calls = self._list_calls - before

    def _read_heads(self, streams: list[str]) -> dict[str, _Head]:
        """The heads of `streams`, read from the bucket (and remembered)."""
        for stream in streams:
            _check_stream(stream)
        outcomes = self._each([partial(self._newest, stream) for stream in streams])
        heads: dict[str, _Head] = {}
        failures: list[SfStreamError] = []
        for stream, outcome in zip(streams, outcomes, strict=True):
            if isinstance(outcome, SfStreamError):
                failures.append(outcome)
            else:
                heads[stream] = self._heads[stream] = outcome
        if failures:
            raise _first(failures)
        return heads

    def _newest(self, stream: str) -> _Head:
        """The head of `stream` from its newest object (see the module)."""
        base = f"{self._base}{stream}/"
        dates = sorted(
            found.group(1)
            for listed in self._list(base, Delimiter="/")
            for entry in listed.get("CommonPrefixes", ())
            if (found := _DATE_PREFIX.fullmatch(str(entry.get("Prefix", ""))[len(base) :]))
        )
        for day in reversed(dates):
            for listed in self._list(f"{base}dt={day}/", MaxKeys=LIST_KEYS):
                for entry in listed.get("Contents", ()):
                    key = str(entry.get("Key", ""))
                    found = _NAME.fullmatch(key.rpartition("/")[2])
                    if found is None:
                        continue  # not one of ours (a folder placeholder, a manifest)
                    return _Head(
                        day,
                        10**GENERATION_DIGITS - 1 - int(found["generation"]),
                        10**POSITION_DIGITS - 2 - int(found["position"]),
                        key,
                        found["digest"],
                    )
        return _Head()

    def _list(self, prefix: str, **params: Any) -> Iterator[dict[str, Any]]:
        """The pages of `ListObjectsV2` under `prefix`, fetched as they are consumed."""
        token: str | None = None
        while True:
            with self._calls_lock:
                self._list_calls += 1
            page = self._call(
                f"list s3://{self.bucket}/{prefix}",
                "list_objects_v2",
                Bucket=self.bucket,
                Prefix=prefix,
                **params,
                **({"ContinuationToken": token} if token else {}),
            )
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated") or not token:
                return

    def _each(self, work: list[Callable[[], T]]) -> list[T | SfStreamError]:
        """Run every function, `max_concurrency` at a time; each one's result or sfstream
        error, in order, once all have ended (none runs on after this returns)."""
        if len(work) <= 1:
            return [_outcome(function) for function in work]
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                self._max_concurrency, thread_name_prefix="sfstream-s3"
            )
        futures = [self._pool.submit(_outcome, function) for function in work]
        concurrent.futures.wait(futures)
        return [future.result() for future in futures]

    def _call(self, action: str, operation: str, **params: Any) -> dict[str, Any]:
        client = self._client_sync()
        try:
            response: dict[str, Any] = getattr(client, operation)(**params)
        except Exception as exc:
            raise self.translate(action, exc) from exc
        return response

    def _client_sync(self) -> Any:
        with self._client_lock:
            if self._client is None:
                try:
                    self._client = _boto.client(
                        "s3", region=self.region, endpoint_url=self.endpoint_url
                    )
                except ImportError as exc:
                    raise ConfigError(
                        "the S3 sink needs boto3: pip install 'sfstream[aws]'"
                    ) from exc
                except Exception as exc:
                    raise self.translate("connect", exc) from exc
            return self._client

    def _close_sync(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)
        with self._client_lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()
        self._heads.clear()

    def translate(self, action: str, exc: Exception) -> SfStreamError:
        """The sfstream error for what boto3 raised: the one place that maps them."""
        where = self.describe()
        code, said, status = _boto.error_of(exc)
        if code is None:
            kind = type(exc).__name__
            if kind in ("NoCredentialsError", "PartialCredentialsError"):
                return StorageError(
                    f"{where}: no AWS credentials were found (a task or execution role, "
                    f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a profile)"
                )
            if kind == "NoRegionError":
                return StorageError(f"{where}: no AWS region is configured; set sink.region")
            if isinstance(exc, ValueError | TypeError) or kind == "ParamValidationError":
                return StorageError(f"{where}: cannot {action}: {kind}: {exc}")
            return StorageUnavailableError(
                f"{where}: cannot {action}: S3 cannot be reached ({kind}: {exc})"
            )
        detail = f"{code}: {said}" if said else code
        if code in _TRANSIENT_CODES or (status is not None and status >= 500):
            return StorageUnavailableError(f"{where}: cannot {action} for now ({detail})")
        if code == "NoSuchBucket" or (code == "404" and action.startswith("list")):
            return BucketMissingError(
                f"{where} does not exist; create it, or check sink.bucket and sink.region"
            )
        if code in _DENIED_CODES:
            return StorageError(
                f"{where}: the AWS identity in use may not {action} ({detail}); allow it "
                f"s3:PutObject and s3:ListBucket on the bucket (and kms:GenerateDataKey when "
                f"the bucket encrypts with a KMS key)"
            )
        if code in _CREDENTIAL_CODES:
            return StorageError(f"{where}: AWS refused the credentials in use ({detail})")
        if code in _REGION_CODES:
            return StorageError(
                f"{where}: cannot {action}: the bucket is in another region ({detail}); "
                f"set sink.region to it"
            )
        return StorageError(f"{where}: cannot {action}: refused ({detail})")


def _first(failures: list[SfStreamError]) -> SfStreamError:
    """The error to raise of several: a refusal first (retrying will not get past it)."""
    return next((failure for failure in failures if not failure.retryable), failures[0])


def _outcome(work: Callable[[], T]) -> T | SfStreamError:
    try:
        return work()
    except SfStreamError as exc:
        return exc


def _pieces(messages: Sequence[Message]) -> list[_Piece]:
    """The messages split by stream, in order, each part encoded (see the module)."""
    groups: dict[str, list[Message]] = {}
    for message in messages:
        groups.setdefault(message.stream, []).append(message)
    pieces = []
    for stream, group in groups.items():
        _check_stream(stream)
        gaps = 0
        after = first = last = None
        day = None
        for message in group:
            if type(message) is GapMessage:
                gaps += 1
                after = None
            elif type(message) is Record or type(message) is StateMessage:
                replay_id = message.replay_id
                if not 0 <= replay_id <= MAX_REPLAY_ID:
                    raise StorageError(
                        f"a {message.type} message of stream {stream} has replayId {replay_id}, "
                        f"outside 0..2**63-1: it cannot be named in S3"
                    )
                after = last = replay_id
                if first is None:
                    first = replay_id
                if day is None and type(message) is Record:
                    day = _day(message.emitted_at)
        pieces.append(_Piece(stream, encode_lines(group), gaps, after, first, last, day))
    return pieces


def _day(emitted_at: object) -> str | None:
    """The date of an ISO 8601 UTC time (`2024-05-01T12:00:00.000Z`), if it is one."""
    if not isinstance(emitted_at, str):
        return None
    try:
        return date.fromisoformat(emitted_at[:10]).isoformat()
    except ValueError:
        return None


def _check_stream(stream: str) -> None:
    if not stream or "/" in stream or stream in (".", "..") or not stream.isprintable():
        raise StorageError(f"stream id {stream!r} cannot be part of an S3 key")
