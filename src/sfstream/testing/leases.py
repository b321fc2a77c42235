"""The conformance suite of `sfstream.state.base.LeaseStore`: every backend with leases runs it.

```python
async def test_my_leases(factory):
    await check_lease_store(factory)
```

The factory is a `sfstream.testing.state.StoreFactory` whose stores are also lease stores.
Checks use stream and worker ids of their own, so they may share a location; each closes
every store it opens. Some wait for a short lease to expire (about a second each). A failed
check raises `AssertionError`.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Final, cast

from sfstream.errors import ConfigError, LeaseLostError
from sfstream.state.base import Fence, Lease, LeaseStore, StateStore
from sfstream.testing.state import StoreFactory

__all__ = ["LEASE_STORE_CHECKS", "check_lease_store"]

_SHORT_TTL_S: Final = 0.4
_LONG_TTL_S: Final = 30.0
_WAIT_S: Final = 1.0
# Clocks of a database server and of this process may differ a little.
_CLOCK_TOLERANCE_S: Final = 120.0


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def _names(label: str, count: int) -> list[str]:
    run = uuid.uuid4().hex[:12]
    return [f"lease.{label}.{run}.{index:03d}" for index in range(count)]


def _workers(count: int) -> list[str]:
    run = uuid.uuid4().hex[:8]
    return [f"worker-{index}-{run}" for index in range(count)]


@contextlib.asynccontextmanager
async def _opened(factory: StoreFactory) -> AsyncIterator[LeaseStore]:
    store = await factory()
    try:
        _expect(isinstance(store, LeaseStore), f"{store!r} does not implement LeaseStore")
        yield cast(LeaseStore, store)
    finally:
        await store.close()


def _state(store: LeaseStore) -> StateStore:
    return cast(StateStore, store)


def _tokens(leases: dict[str, Lease]) -> dict[str, int]:
    return {stream: lease.token for stream, lease in leases.items()}


async def check_acquire(factory: StoreFactory) -> None:
    """A free lease is taken with token 1; a held one is not taken by another worker."""
    streams = _names("acquire", 3)
    one, two = _workers(2)
    async with _opened(factory) as a, _opened(factory) as b:
        got = await a.acquire(streams, one, _LONG_TTL_S)
        _expect(set(got) == set(streams), f"free leases not all taken: {sorted(got)}")
        now = time.time()
        for stream, lease in got.items():
            _expect(isinstance(lease, Lease), f"acquire returned {lease!r}")
            _expect(lease.stream == stream, f"{lease!r} is keyed as {stream!r}")
            _expect(lease.owner == one, f"{lease!r}: owner is not {one}")
            _expect(lease.token == 1, f"{lease!r}: the first token is not 1")
            _expect(lease.held, f"{lease!r}: a lease just taken is not held")
            _expect(
                abs(lease.expires_at - (now + _LONG_TTL_S)) < _CLOCK_TOLERANCE_S,
                f"{lease!r}: expires_at is not about now + ttl",
            )
            _expect(lease.acquired_at <= lease.expires_at, f"{lease!r}: acquired after expiry")
            _expect(lease.refused == 0, f"{lease!r}: refusals nobody caused")
        _expect(await b.acquire(streams, two, _LONG_TTL_S) == {}, "a held lease was taken")
        seen = await b.leases(streams)
        _expect(
            {s: (x.owner, x.token, x.held) for s, x in seen.items()}
            == dict.fromkeys(streams, (one, 1, True)),
            f"leases() disagrees with acquire: {seen}",
        )
        everything = await b.leases()
        _expect(all(s in everything for s in streams), "leases() left some out")
        _expect(await b.leases([]) == {}, "leases([]) returned leases")
        _expect(await b.leases(_names("never", 1)) == {}, "a lease never taken was returned")


async def check_acquire_own(factory: StoreFactory) -> None:
    """Acquiring a lease one holds renews it: same token, later expiry."""
    (stream,) = _names("own", 1)
    (one,) = _workers(1)
    async with _opened(factory) as a:
        first = (await a.acquire([stream], one, 5.0))[stream]
        again = (await a.acquire([stream], one, _LONG_TTL_S))[stream]
        _expect(again.token == first.token, f"re-acquiring changed the token: {again!r}")
        _expect(again.expires_at > first.expires_at, f"re-acquiring did not extend: {again!r}")


async def check_renew(factory: StoreFactory) -> None:
    """`renew` extends what the worker holds with those tokens, and nothing else."""
    held, other = _names("renew", 2)
    one, two = _workers(2)
    async with _opened(factory) as a, _opened(factory) as b:
        taken = await a.acquire([held, other], one, 5.0)
        renewed = await a.renew({held: taken[held].token}, one, _LONG_TTL_S)
        _expect(set(renewed) == {held}, f"renew returned {sorted(renewed)}")
        _expect(renewed[held].token == taken[held].token, "renew changed the token")
        _expect(renewed[held].expires_at > taken[held].expires_at, "renew did not extend")
        stale = await a.renew({other: taken[other].token + 1}, one, _LONG_TTL_S)
        _expect(stale == {}, "a lease was renewed with a token it does not have")
        foreign = await b.renew(_tokens(taken), two, _LONG_TTL_S)
        _expect(foreign == {}, "a worker renewed another worker's lease")
        _expect(await a.renew({}, one, _LONG_TTL_S) == {}, "renew({}) returned leases")


async def check_release(factory: StoreFactory) -> None:
    """A released lease is free at once; the next owner gets the next token."""
    streams = _names("release", 2)
    one, two = _workers(2)
    async with _opened(factory) as a, _opened(factory) as b:
        taken = await a.acquire(streams, one, _LONG_TTL_S)
        await b.release(_tokens(taken), two)  # not b's: nothing happens
        _expect(await b.acquire(streams, two, _LONG_TTL_S) == {}, "another worker released")
        await a.release({streams[0]: taken[streams[0]].token}, one)
        seen = (await b.leases([streams[0]]))[streams[0]]
        _expect(not seen.held and seen.owner is None, f"released but {seen!r}")
        _expect(seen.token == taken[streams[0]].token, "release changed the token")
        got = await b.acquire(streams, two, _LONG_TTL_S)
        _expect(set(got) == {streams[0]}, f"after one release, taken: {sorted(got)}")
        _expect(got[streams[0]].token == taken[streams[0]].token + 1, "token did not grow")
        renewed = await a.renew(_tokens(taken), one, _LONG_TTL_S)
        _expect(renewed.keys() == {streams[1]}, f"after a release, renewed {sorted(renewed)}")
        await a.release({}, one)


async def check_expiry(factory: StoreFactory) -> None:
    """An expired lease is free; nobody taking it, its owner may renew it (same token)."""
    taken_over, kept = _names("expiry", 2)
    one, two = _workers(2)
    async with _opened(factory) as a, _opened(factory) as b:
        first = await a.acquire([taken_over, kept], one, _SHORT_TTL_S)
        await asyncio.sleep(_WAIT_S)
        seen = await b.leases([taken_over, kept])
        _expect(not any(lease.held for lease in seen.values()), f"expired but held: {seen}")
        got = await b.acquire([taken_over], two, _LONG_TTL_S)
        _expect(set(got) == {taken_over}, "an expired lease was not taken")
        _expect(got[taken_over].token == first[taken_over].token + 1, "token did not grow")
        _expect(got[taken_over].owner == two, f"taken over but {got[taken_over]!r}")
        renewed = await a.renew(_tokens(first), one, _LONG_TTL_S)
        _expect(set(renewed) == {kept}, f"after expiry, renewed {sorted(renewed)}")
        _expect(renewed[kept].token == first[kept].token, "renewing after expiry bumped it")
        _expect(renewed[kept].held, f"{renewed[kept]!r} is not held after renewal")


async def check_fenced_commit(factory: StoreFactory) -> None:
    """A commit with a stale token stores nothing, raises, and is recorded in the lease."""
    mine, theirs = _names("fence", 2)
    zombie, heir = _workers(2)
    async with _opened(factory) as a, _opened(factory) as b:
        first = await a.acquire([mine, theirs], zombie, _SHORT_TTL_S)
        old = Fence(zombie, _tokens(first))
        await _state(a).commit({mine: 10, theirs: 10}, fence=old)
        loaded = await _state(b).load([mine, theirs])
        _expect({s: c.replay_id for s, c in loaded.items()} == {mine: 10, theirs: 10}, "commit")
        await asyncio.sleep(_WAIT_S)
        new = await b.acquire([theirs], heir, _LONG_TTL_S)
        try:
            await _state(a).commit({mine: 20, theirs: 5}, fence=old)
        except LeaseLostError as exc:
            _expect(exc.streams == [theirs], f"the refusal names {exc.streams}")
            _expect(theirs in str(exc), f"the refusal does not name the stream: {exc}")
            _expect(not exc.retryable, "LeaseLostError is retryable")
        else:
            raise AssertionError("a commit with a stale token was stored")
        loaded = await _state(b).load([mine, theirs])
        got = {s: c.replay_id for s, c in loaded.items()}
        _expect(got == {mine: 10, theirs: 10}, f"a refused commit changed checkpoints: {got}")
        lease = (await b.leases([theirs]))[theirs]
        _expect(lease.refused == 1, f"the refusal was not recorded: {lease!r}")
        _expect(lease.refused_token == first[theirs].token, f"refused_token: {lease!r}")
        _expect(lease.refused_worker == zombie, f"refused_worker: {lease!r}")
        _expect(
            lease.refused_at is not None and abs(lease.refused_at - time.time()) < 120,
            f"refused_at: {lease!r}",
        )
        _expect(lease.owner == heir and lease.token == new[theirs].token, f"{lease!r}")
        await _state(b).commit({theirs: 11}, fence=Fence(heir, _tokens(new)))
        # The zombie's other stream was not taken: its token still fences it, and holds.
        await _state(a).commit({mine: 21}, fence=old)
        loaded = await _state(b).load([mine, theirs])
        got = {s: c.replay_id for s, c in loaded.items()}
        _expect(got == {mine: 21, theirs: 11}, f"fenced commits stored {got}")
        _expect((await b.leases([mine]))[mine].refused == 0, "a valid commit was counted")


async def check_fence_arguments(factory: StoreFactory) -> None:
    """A fence without a lease refuses; one without a token for a stream is a ConfigError."""
    leased, never = _names("fence-args", 2)
    (one,) = _workers(1)
    async with _opened(factory) as a:
        taken = await a.acquire([leased], one, _LONG_TTL_S)
        try:
            await _state(a).commit({leased: 1, never: 1}, fence=Fence(one, _tokens(taken)))
        except ConfigError as exc:
            _expect(never in str(exc), f"the error does not name the stream: {exc}")
        else:
            raise AssertionError("a fence without a token for a stream was accepted")
        try:
            await _state(a).commit({never: 1}, fence=Fence(one, {never: 1}))
        except LeaseLostError as exc:
            _expect(exc.streams == [never], f"the refusal names {exc.streams}")
        else:
            raise AssertionError("a fenced commit of a stream never leased was stored")
        _expect(await _state(a).load([leased, never]) == {}, "a refused commit stored")


async def check_one_winner(factory: StoreFactory) -> None:
    """Workers racing for one free lease: exactly one gets it."""
    (stream,) = _names("race", 1)
    workers = _workers(6)
    stores = [await factory() for _ in workers]
    try:
        results = await asyncio.gather(
            *(
                cast(LeaseStore, store).acquire([stream], worker, _LONG_TTL_S)
                for store, worker in zip(stores, workers, strict=True)
            )
        )
    finally:
        for store in stores:
            await store.close()
    winners = [worker for worker, got in zip(workers, results, strict=True) if got]
    _expect(len(winners) == 1, f"{len(winners)} workers took one lease: {winners}")


async def check_tokens_grow(factory: StoreFactory) -> None:
    """Every acquisition after a release gets a larger token than the one before."""
    (stream,) = _names("grow", 1)
    workers = _workers(3)
    async with _opened(factory) as a:
        seen: list[int] = []
        for round_ in range(6):
            worker = workers[round_ % len(workers)]
            lease = (await a.acquire([stream], worker, _LONG_TTL_S))[stream]
            seen.append(lease.token)
            await a.release({stream: lease.token}, worker)
        _expect(seen == list(range(1, 7)), f"tokens {seen}")


async def check_members(factory: StoreFactory) -> None:
    """Members heartbeat with `join`, expire, and `leave` at once."""
    staying, expiring, leaving = _workers(3)
    async with _opened(factory) as a, _opened(factory) as b:
        await a.join(staying, _LONG_TTL_S)
        await b.join(expiring, _SHORT_TTL_S)
        await b.join(leaving, _LONG_TTL_S)
        names = [m.worker for m in await a.members()]
        for worker in (staying, expiring, leaving):
            _expect(worker in names, f"{worker} is not a member: {names}")
        first = {m.worker: m for m in await a.members()}[staying]
        await b.leave(leaving)
        await asyncio.sleep(_WAIT_S)
        await a.join(staying, _LONG_TTL_S)
        members = {m.worker: m for m in await a.members()}
        _expect(staying in members, "a member that joined again is gone")
        _expect(expiring not in members, "an expired member is listed")
        _expect(leaving not in members, "a member that left is listed")
        _expect(members[staying].joined_at == first.joined_at, "joining again moved joined_at")
        _expect(members[staying].expires_at > first.expires_at, "joining again did not extend")
        ours = [m.worker for m in await a.members() if m.worker in (staying, expiring, leaving)]
        _expect(ours == sorted(ours), "members are not sorted by worker id")
        await a.leave(staying)
        await a.leave(staying)  # leaving twice is fine


async def check_invalid_lease_arguments(factory: StoreFactory) -> None:
    """Bad stream ids, workers and TTLs are ConfigErrors, before anything is stored."""
    (stream,) = _names("bad", 1)
    (one,) = _workers(1)
    async with _opened(factory) as a:
        for call in (
            lambda: a.acquire([""], one, _LONG_TTL_S),
            lambda: a.acquire([stream], "", _LONG_TTL_S),
            lambda: a.acquire([stream], one, 0),
            lambda: a.acquire([stream], one, float("nan")),
            lambda: a.renew({stream: 1}, one, -1),
            lambda: a.join("", _LONG_TTL_S),
        ):
            try:
                await call()
            except ConfigError:
                pass
            else:
                raise AssertionError("an invalid argument was accepted")
        _expect(await a.leases([stream]) == {}, "an invalid call stored a lease")


LEASE_STORE_CHECKS: Final[list[tuple[str, Callable[[StoreFactory], Awaitable[None]]]]] = [
    ("acquire", check_acquire),
    ("acquire_own", check_acquire_own),
    ("renew", check_renew),
    ("release", check_release),
    ("expiry", check_expiry),
    ("fenced_commit", check_fenced_commit),
    ("fence_arguments", check_fence_arguments),
    ("one_winner", check_one_winner),
    ("tokens_grow", check_tokens_grow),
    ("members", check_members),
    ("invalid_lease_arguments", check_invalid_lease_arguments),
]
"""Every check, by name: parametrize over it to get one test per check."""


async def check_lease_store(factory: StoreFactory) -> None:
    """Run every check of `LEASE_STORE_CHECKS` against the stores `factory` returns.

    Raises:
        AssertionError: a check failed; the message starts with its name.
    """
    for name, check in LEASE_STORE_CHECKS:
        try:
            await check(factory)
        except AssertionError as exc:
            raise AssertionError(f"{name}: {exc}") from exc
