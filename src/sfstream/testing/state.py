"""The conformance suite of `sfstream.state.StateStore`: every backend runs it unchanged.

```python
async def test_my_store(tmp_path):
    async def factory() -> StateStore:
        return MyStore(tmp_path / "state")

    await check_state_store(factory)
```

or, one test per check:

```python
@pytest.mark.parametrize(("name", "check"), STATE_STORE_CHECKS, ids=[n for n, _ in ...])
async def test_conformance(name, check, factory):
    await check(factory)
```

The factory returns a new store on the same location at every call, so that a check can
close a store and open the location again. Checks use stream ids of their own, so they may
share a location (but not run at the same time on one: the ownership check needs the
location's run lock to itself); each closes every store it opens. A failed check raises
`AssertionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final, cast

from sfstream.errors import ConfigError
from sfstream.state.base import Checkpoint, Override, StateStore, StreamOwnedError

__all__ = ["STATE_STORE_CHECKS", "StoreFactory", "check_state_store"]

StoreFactory = Callable[[], Awaitable[StateStore]]
"""Returns a new store on the same location at every call."""

_INT64_MAX: Final = 2**63 - 1
# A database server's clock may differ a little from ours; local time mislabelled as UTC
# is off by whole hours.
_CLOCK_TOLERANCE: Final = timedelta(minutes=10)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _streams(label: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:12]
    return [f"check.{label}.{run}.{index:05d}" for index in range(count)]


@contextlib.asynccontextmanager
async def _opened(factory: StoreFactory) -> AsyncIterator[StateStore]:
    store = await factory()
    try:
        yield store
    finally:
        await store.close()


async def _ids(store: StateStore, streams: list[str]) -> dict[str, int]:
    return {stream: point.replay_id for stream, point in (await store.load(streams)).items()}


def _parse_time(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise AssertionError(f"updated_at {text!r} is not ISO-8601") from None
    _expect(moment.utcoffset() == timedelta(0), f"updated_at {text!r} is not in UTC")
    return moment


async def check_empty_load(factory: StoreFactory) -> None:
    """A location without these streams loads nothing for them."""
    first, second = _streams("empty", 2)
    async with _opened(factory) as store:
        _expect(await store.load([first, second]) == {}, "unknown streams were loaded")
        _expect(await store.load([]) == {}, "load([]) returned checkpoints")
        everything = await store.load()
        _expect(isinstance(everything, dict), "load() did not return a dict")
        _expect(first not in everything, "load() returned a stream never committed")


async def check_round_trip(factory: StoreFactory) -> None:
    """What a commit stores, a load returns: Checkpoint values with int replay ids."""
    first, second = _streams("round-trip", 2)
    async with _opened(factory) as store:
        _expect(isinstance(store, StateStore), "the store does not implement StateStore")
        await store.commit({first: 1, second: 42})
        loaded = await store.load([first, second])
        _expect(set(loaded) == {first, second}, f"loaded {sorted(loaded)} after a commit")
        for stream, expected in ((first, 1), (second, 42)):
            point = loaded[stream]
            _expect(isinstance(point, Checkpoint), f"load returned {point!r}")
            _expect(point.stream == stream, f"{point!r} is keyed as {stream!r}")
            _expect(type(point.replay_id) is int, f"replay_id of {point!r} is not an int")
            _expect(point.replay_id == expected, f"{point!r}: expected replay_id {expected}")
            _expect(point.event_time is None, f"{point!r}: an event time nobody gave")
        everything = await store.load()
        _expect(
            everything.get(first) == loaded[first] and everything.get(second) == loaded[second],
            "load() disagrees with load(streams)",
        )
        await store.commit({})
        _expect(await store.load([first, second]) == loaded, "an empty commit changed state")


async def check_load_subset(factory: StoreFactory) -> None:
    """`load(streams)` returns exactly the committed streams among those asked for."""
    first, second, third, missing = _streams("subset", 4)
    async with _opened(factory) as store:
        await store.commit({first: 1, second: 2, third: 3})
        got = await _ids(store, [first, third, missing])
        _expect(got == {first: 1, third: 3}, f"load of a subset returned {got}")
        got = await _ids(store, cast(list[str], iter([third, third, second])))
        _expect(got == {second: 2, third: 3}, f"load of an iterator with repeats returned {got}")


async def check_overwrite(factory: StoreFactory) -> None:
    """A commit replaces a checkpoint, also with a lower replayId (after a replay gap)."""
    moved, other = _streams("overwrite", 2)
    async with _opened(factory) as store:
        await store.commit({moved: 100, other: 7})
        untouched = (await store.load([other]))[other]
        await store.commit({moved: 250})
        _expect(await _ids(store, [moved]) == {moved: 250}, "a higher replayId was not stored")
        await store.commit({moved: 3})
        _expect(await _ids(store, [moved]) == {moved: 3}, "a lower replayId was not stored")
        await store.commit({moved: 3})
        _expect(await _ids(store, [moved]) == {moved: 3}, "re-committing the same id failed")
        after = (await store.load([other]))[other]
        _expect(after == untouched, f"{other} changed to {after!r}, though not committed")


async def check_atomic_batch(factory: StoreFactory) -> None:
    """A batch with a bad entry half-way raises ConfigError and stores none of it."""
    first, second, third = _streams("atomic", 3)
    bad_batches: list[Mapping[object, object]] = [
        {first: 2, second: "3", third: 4},
        {first: 2, second: 3.0, third: 4},
        {first: 2, second: None, third: 4},
        {first: 2, second: True, third: 4},
        {first: 2, second: -1, third: 4},
        {first: 2, second: _INT64_MAX + 1, third: 4},
        {first: 2, "": 3, third: 4},
        {first: 2, 5: 3, third: 4},
    ]
    async with _opened(factory) as store:
        await store.commit({first: 1})
        before = await store.load([first, second, third])
        for batch in bad_batches:
            try:
                await store.commit(cast(Mapping[str, int], batch))
            except ConfigError:
                pass
            else:
                raise AssertionError(f"commit accepted the invalid batch {batch!r}")
            after = await store.load([first, second, third])
            _expect(after == before, f"the refused batch {batch!r} left {after!r}")
    async with _opened(factory) as store:
        after = await store.load([first, second, third])
        _expect(after == before, f"after reopening, refused batches left {after!r}")


async def check_reset(factory: StoreFactory) -> None:
    """`reset` forgets one stream, says whether it had a checkpoint, and persists."""
    gone, kept, never = _streams("reset", 3)
    async with _opened(factory) as store:
        await store.commit({gone: 1, kept: 2})
        _expect(await store.reset(gone) is True, "reset of a stored stream returned False")
        _expect(await store.reset(gone) is False, "a second reset returned True")
        _expect(await store.reset(never) is False, "reset of an unknown stream returned True")
        _expect(await _ids(store, [gone, kept]) == {kept: 2}, "reset removed the wrong stream")
        await store.commit({gone: 5})
        _expect(await _ids(store, [gone]) == {gone: 5}, "a reset stream cannot be committed")
        await store.reset(gone)
    async with _opened(factory) as store:
        got = await _ids(store, [gone, kept])
        _expect(got == {kept: 2}, f"after reopening, reset streams are {got}")


async def check_reopen_persistence(factory: StoreFactory) -> None:
    """A new store on the same location sees every commit of a closed one."""
    first, second = _streams("reopen", 2)
    async with _opened(factory) as store:
        await store.commit({first: 11, second: 12})
        committed = await store.load([first, second])
    async with _opened(factory) as store:
        reopened = await store.load([first, second])
        _expect(reopened == committed, f"after reopening: {reopened!r}, not {committed!r}")
        await store.commit({second: 13})
    async with _opened(factory) as store:
        got = await _ids(store, [first, second])
        _expect(got == {first: 11, second: 13}, f"after a second reopening: {got}")


async def check_int64(factory: StoreFactory) -> None:
    """Replay ids are exact across the int64 range (no float, no 32-bit column)."""
    top, unsafe_float, past_int32, zero = _streams("int64", 4)
    values = {top: _INT64_MAX, unsafe_float: 2**53 + 1, past_int32: 2**32 + 7, zero: 0}
    async with _opened(factory) as store:
        await store.commit(values)
        _expect(await _ids(store, list(values)) == values, "a large replayId changed")
    async with _opened(factory) as store:
        loaded = await store.load(list(values))
        _expect({s: p.replay_id for s, p in loaded.items()} == values, "changed on reopen")
        _expect(all(type(p.replay_id) is int for p in loaded.values()), "ids are not ints")


async def check_many_streams(factory: StoreFactory) -> None:
    """A batch of thousands of streams, and loads larger than any bind-parameter limit."""
    streams = _streams("many", 5000)
    batch = {stream: index * 1_000_003 for index, stream in enumerate(streams)}
    async with _opened(factory) as store:
        await store.commit(batch)
        loaded = await store.load(streams)
        _expect({s: p.replay_id for s, p in loaded.items()} == batch, "a large batch changed")
        _expect(len({p.updated_at for p in loaded.values()}) == 1, "one commit, many times")
        half = streams[::2]
        got = await _ids(store, half)
        _expect(got == {stream: batch[stream] for stream in half}, "a large subset is wrong")
        everything = await store.load()
        _expect(all(stream in everything for stream in streams), "load() missed streams")


async def check_concurrent_commits(factory: StoreFactory) -> None:
    """Commits from many tasks on two stores never interleave within a batch."""
    tasks, rounds = 8, 5
    shared = _streams("concurrent", 40)
    own = _streams("concurrent-own", tasks)

    async def writer(index: int, store: StateStore) -> None:
        for round_ in range(rounds):
            value = round_ * tasks + index + 1
            await store.commit({**dict.fromkeys(shared, value), own[index]: value})

    async with _opened(factory) as one, _opened(factory) as two:
        async with asyncio.TaskGroup() as group:
            for index in range(tasks):
                group.create_task(writer(index, one if index % 2 else two))
        loaded = await one.load([*shared, *own])
        _expect(await two.load([*shared, *own]) == loaded, "two stores disagree")
    values = {loaded[stream].replay_id for stream in shared}
    _expect(len(values) == 1, f"concurrent batches interleaved: shared streams hold {values}")
    final = values.pop()
    # The commit applied last is the last round of some task: tasks commit in sequence.
    winner = final - (rounds - 1) * tasks - 1
    _expect(0 <= winner < tasks, f"shared streams hold {final}, not a last-round value")
    for index, stream in enumerate(own):
        expected = (rounds - 1) * tasks + index + 1
        _expect(loaded[stream].replay_id == expected, f"task {index} lost its last commit")
    times = {loaded[stream].updated_at for stream in [*shared, own[winner]]}
    _expect(len(times) == 1, f"one batch carries several updated_at values: {times}")


async def check_updated_at(factory: StoreFactory) -> None:
    """`updated_at` is ISO-8601 UTC, one per commit, never moving backwards."""
    moving, still = _streams("updated-at", 2)
    async with _opened(factory) as store:
        before = datetime.now(UTC)
        await store.commit({moving: 1, still: 1})
        after = datetime.now(UTC)
        first = await store.load([moving, still])
        stamp = _parse_time(first[moving].updated_at)
        _expect(
            before - _CLOCK_TOLERANCE <= stamp <= after + _CLOCK_TOLERANCE,
            f"updated_at {stamp.isoformat()} is not the time of the commit",
        )
        _expect(first[still].updated_at == first[moving].updated_at, "one commit, two times")
        previous = stamp
        for replay_id in range(2, 6):
            await store.commit({moving: replay_id})
            current = _parse_time((await store.load([moving]))[moving].updated_at)
            _expect(current >= previous, f"updated_at moved back from {previous} to {current}")
            previous = current
        _expect(
            (await store.load([still]))[still] == first[still],
            "a stream outside the batch got a new updated_at",
        )


async def check_event_time(factory: StoreFactory) -> None:
    """A commit stores the event times it is given, exactly, as floats; a stream committed
    without one, or moved by an operator, has none."""
    timed, whole, untimed, operated = _streams("event-time", 4)
    moment = 1_714_521_600.123456
    async with _opened(factory) as store:
        await store.commit(
            {timed: 1, whole: 2, untimed: 3, operated: 4},
            {timed: moment, whole: 1_714_521_601, operated: moment},
        )
        loaded = await store.load([timed, whole, untimed, operated])
        times = {stream: point.event_time for stream, point in loaded.items()}
        expected = {timed: moment, whole: 1_714_521_601.0, untimed: None, operated: moment}
        _expect(times == expected, f"event times {times}, not {expected}")
        _expect(type(times[whole]) is float, f"an int event time loads as {times[whole]!r}")
        everything = await store.load()
        _expect(everything.get(timed) == loaded[timed], "load() disagrees with load(streams)")
        await store.override(operated, 2)
        point = (await store.load([operated]))[operated]
        _expect(point.event_time is None, f"an operator's position kept an event time: {point!r}")
        await store.commit({whole: 5}, {})
    async with _opened(factory) as store:
        loaded = await store.load([timed, whole, untimed])
        times = {stream: point.event_time for stream, point in loaded.items()}
        expected = {timed: moment, whole: None, untimed: None}
        _expect(times == expected, f"after reopening, event times are {times}, not {expected}")
        await store.commit({timed: 6})
        point = (await store.load([timed]))[timed]
        _expect(point.event_time is None, f"a commit without an event time kept one: {point!r}")


async def check_event_time_invalid(factory: StoreFactory) -> None:
    """Event times of streams outside the commit, or that are not finite numbers, are
    refused with ConfigError, and the commit stores none of its batch."""
    first, second = _streams("event-time-invalid", 2)
    bad: list[object] = [
        {second: 1_714_521_600.0},
        {first: "1714521600"},
        {first: True},
        {first: None},
        {first: float("nan")},
        {first: float("inf")},
        [(first, 1_714_521_600.0)],
    ]
    async with _opened(factory) as store:
        await store.commit({first: 1}, {first: 1_714_521_600.0})
        before = await store.load([first, second])
        for event_times in bad:
            try:
                await store.commit({first: 2}, cast(Mapping[str, float], event_times))
            except ConfigError:
                pass
            else:
                raise AssertionError(f"commit accepted the event times {event_times!r}")
            after = await store.load([first, second])
            _expect(after == before, f"the refused event times {event_times!r} left {after!r}")


async def check_invalid_arguments(factory: StoreFactory) -> None:
    """Stream ids that are not non-empty strings are refused with ConfigError."""
    async with _opened(factory) as store:
        for call in (
            lambda: store.load(cast(list[str], "check.a-bare-string")),
            lambda: store.load(cast(list[str], [""])),
            lambda: store.reset(""),
            lambda: store.commit(cast(Mapping[str, int], [("check.pairs", 1)])),
        ):
            try:
                await call()
            except ConfigError:
                continue
            raise AssertionError("an invalid argument was accepted")


async def check_close_idempotent(factory: StoreFactory) -> None:
    """`close` may be called twice, also on a store never used; commits outlive it."""
    (stream,) = _streams("close", 1)
    unused = await factory()
    await unused.close()
    await unused.close()
    store = await factory()
    await store.commit({stream: 9})
    await store.close()
    await store.close()
    async with _opened(factory) as reopened:
        _expect(await _ids(reopened, [stream]) == {stream: 9}, "a commit was lost on close")


async def check_override_position(factory: StoreFactory) -> None:
    """`override` with a replayId sets the checkpoint and stays pending until a commit."""
    moved, fresh, other = _streams("override", 3)
    async with _opened(factory) as store:
        await store.commit({moved: 100, other: 5})
        before = datetime.now(UTC)
        first = await store.override(moved, 40)
        _expect(isinstance(first, Override), f"override returned {first!r}")
        _expect(
            (first.stream, first.start, first.previous) == (moved, 40, 100),
            f"override of a checkpoint 100 to 40 returned {first!r}",
        )
        stamp = _parse_time(first.requested_at)
        _expect(
            before - _CLOCK_TOLERANCE <= stamp <= datetime.now(UTC) + _CLOCK_TOLERANCE,
            f"requested_at {first.requested_at} is not the time of the override",
        )
        _expect(await _ids(store, [moved]) == {moved: 40}, "override did not set the checkpoint")
        pending = await store.overrides([moved, fresh, other])
        _expect(pending == {moved: first}, f"pending overrides are {pending!r}")
        second = await store.override(moved, 30)
        _expect(
            (second.start, second.previous) == (30, 100),
            f"a second override must keep the first one's previous checkpoint: {second!r}",
        )
        new = await store.override(fresh, 7)
        _expect(new.previous is None, f"a stream without a checkpoint had one: {new!r}")
        _expect(await _ids(store, [fresh]) == {fresh: 7}, "override of a new stream was lost")
    async with _opened(factory) as store:
        pending = await store.overrides([moved, fresh])
        _expect(pending == {moved: second, fresh: new}, f"after reopening: {pending!r}")
        everything = await store.overrides()
        _expect(
            everything.get(moved) == second and everything.get(fresh) == new,
            "overrides() disagrees with overrides(streams)",
        )
        await store.commit({moved: 31})
        pending = await store.overrides([moved, fresh, other])
        _expect(pending == {fresh: new}, f"a commit did not clear its override: {pending!r}")
        _expect(await _ids(store, [moved, other]) == {moved: 31, other: 5}, "commit failed")
        await store.commit({fresh: 8})


async def check_override_forget(factory: StoreFactory) -> None:
    """`override` with -2, -1 or None forgets the checkpoint; `reset` clears an override."""
    earliest, latest, initial, reset = _streams("override-forget", 4)
    async with _opened(factory) as store:
        await store.commit({earliest: 100, latest: 101, initial: 102, reset: 103})
        made = {
            earliest: await store.override(earliest, -2),
            latest: await store.override(latest, -1),
            initial: await store.override(initial, None),
        }
        for stream, start, previous in (
            (earliest, -2, 100),
            (latest, -1, 101),
            (initial, None, 102),
        ):
            got = made[stream]
            _expect(
                (got.start, got.previous) == (start, previous),
                f"override({start}) of checkpoint {previous} returned {got!r}",
            )
        _expect(
            await store.load([earliest, latest, initial]) == {},
            "an override to earliest, latest or the initial replay kept the checkpoint",
        )
        _expect(await store.overrides(list(made)) == made, "overrides were not recorded")
        await store.override(reset, 50)
        _expect(await store.reset(reset) is True, "reset of an overridden checkpoint: False")
        _expect(await store.reset(initial) is False, "reset found a checkpoint after override")
        pending = await store.overrides([reset, initial])
        _expect(pending == {}, f"reset did not clear the overrides: {pending!r}")
    async with _opened(factory) as store:
        pending = await store.overrides(list(made))
        _expect(
            pending == {earliest: made[earliest], latest: made[latest]},
            f"after reopening, the overrides are {pending!r}",
        )
        await store.commit({earliest: 1, latest: 1})
        _expect(await store.overrides(list(made)) == {}, "commits left overrides")


async def check_override_invalid(factory: StoreFactory) -> None:
    """Positions that are not a replayId, -2, -1 or None are refused; nothing is stored."""
    (stream,) = _streams("override-invalid", 1)
    async with _opened(factory) as store:
        await store.commit({stream: 9})
        for start in (-3, _INT64_MAX + 1, True, "5", 5.0):
            try:
                await store.override(stream, cast(int, start))
            except ConfigError:
                continue
            raise AssertionError(f"override accepted the position {start!r}")
        try:
            await store.override("", 1)
        except ConfigError:
            pass
        else:
            raise AssertionError("override accepted an empty stream id")
        _expect(await _ids(store, [stream]) == {stream: 9}, "a refused override changed state")
        _expect(await store.overrides([stream]) == {}, "a refused override was recorded")


class _BlockFailedError(Exception):
    """Raised inside an `owner` block, to check that the block's failure releases it."""


def _fail_inside() -> None:
    raise _BlockFailedError


async def check_owner(factory: StoreFactory) -> None:
    """`owner` is exclusive across stores, never waits, and ends with its block."""
    first, second = _streams("owner", 2)
    async with _opened(factory) as one, _opened(factory) as two:
        async with one.owner([first, second]):
            try:
                async with two.owner([first]):
                    raise AssertionError("two stores owned one stream at once")
            except StreamOwnedError as exc:
                _expect(exc.retryable, "StreamOwnedError is not retryable")
                _expect(first in str(exc), f"the refusal does not name the stream: {exc}")
                _expect(exc.streams == [first], f"the refusal names {exc.streams}")
            # Ownership is for operators' tools and runs: reads and commits go on.
            await two.commit({first: 1})
            _expect(await _ids(two, [first]) == {first: 1}, "a commit failed while owned")
        async with two.owner([first, second]):
            pass
        with contextlib.suppress(_BlockFailedError):
            async with one.owner([first]):
                _fail_inside()
        async with two.owner([first]):
            pass


STATE_STORE_CHECKS: Final[list[tuple[str, Callable[[StoreFactory], Awaitable[None]]]]] = [
    ("empty_load", check_empty_load),
    ("round_trip", check_round_trip),
    ("load_subset", check_load_subset),
    ("overwrite", check_overwrite),
    ("atomic_batch", check_atomic_batch),
    ("reset", check_reset),
    ("reopen_persistence", check_reopen_persistence),
    ("int64", check_int64),
    ("many_streams", check_many_streams),
    ("concurrent_commits", check_concurrent_commits),
    ("updated_at", check_updated_at),
    ("event_time", check_event_time),
    ("event_time_invalid", check_event_time_invalid),
    ("invalid_arguments", check_invalid_arguments),
    ("close_idempotent", check_close_idempotent),
    ("override_position", check_override_position),
    ("override_forget", check_override_forget),
    ("override_invalid", check_override_invalid),
    ("owner", check_owner),
]
"""Every check, by name: parametrize over it to get one test per check."""


async def check_state_store(factory: StoreFactory) -> None:
    """Run every check of `STATE_STORE_CHECKS` against the stores `factory` returns.

    Raises:
        AssertionError: a check failed; the message starts with its name.
    """
    for name, check in STATE_STORE_CHECKS:
        try:
            await check(factory)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
