"""The commit rule as a pure class: properties over random histories (hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sfstream.engine.ledger import CheckpointLedger

STREAMS = ("a", "b", "c")

Op = tuple[str, str, int]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.sampled_from(STREAMS), st.integers(0, 40)),
        st.tuples(st.just("restart"), st.sampled_from(STREAMS), st.just(0)),
        st.tuples(st.just("seal"), st.just(""), st.just(0)),
        st.tuples(st.just("write"), st.just(""), st.integers(0, 10)),
    ),
    max_size=120,
)


@dataclass
class Model:
    """What really happened: each admitted event, its batch, and its stream's epoch."""

    epoch: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STREAMS, 0))
    admitted: list[tuple[str, int, int, int]] = field(default_factory=list)
    """(stream, epoch, replay_id, batch seq; -1 while the batch is open)."""
    written: set[int] = field(default_factory=set)
    unwritten: list[int] = field(default_factory=list)
    last_released: dict[str, tuple[int, int]] = field(default_factory=dict)
    """stream -> (epoch, checkpoint) last released."""


@settings(max_examples=300, deadline=None)
@given(start=st.sampled_from([None, 5]), history=ops)
def test_released_checkpoints_cover_only_durable_records(
    start: int | None, history: list[Op]
) -> None:
    ledger = CheckpointLedger(dict.fromkeys(STREAMS, start))
    model = Model()
    highest: dict[str, int | None] = dict.fromkeys(STREAMS, start)
    for kind, stream, value in history:
        if kind == "admit":
            new = highest[stream] is None or value > highest[stream]  # type: ignore[operator]
            assert ledger.admit(stream, value) is new  # dedup by replayId
            if new:
                highest[stream] = value
                model.admitted.append((stream, model.epoch[stream], value, -1))
        elif kind == "restart":
            ledger.restart(stream)
            highest[stream] = None
            model.epoch[stream] += 1
        elif kind == "seal":
            sealed = ledger.seal()
            model.admitted = [
                (s, e, r, sealed.seq if b == -1 else b) for s, e, r, b in model.admitted
            ]
            model.unwritten.append(sealed.seq)
        elif model.unwritten:
            seq = model.unwritten.pop(value % len(model.unwritten))
            model.written.add(seq)
            released = ledger.written(seq)
            for name, checkpoint in released.items():
                _check_release(model, name, checkpoint)


def _check_release(model: Model, stream: str, checkpoint: int) -> None:
    # The batch that released this checkpoint, and every batch before it, is written.
    prefix = -1  # the batches written without a hole from the first one
    while prefix + 1 in model.written:
        prefix += 1
    sources = [
        (e, b)
        for s, e, r, b in model.admitted
        if s == stream and r == checkpoint and 0 <= b <= prefix
    ]
    assert sources, "a checkpoint that no written record reaches"
    epoch, batch = max(sources, key=lambda source: source[1])
    assert all(seq in model.written for seq in range(batch + 1))
    # No record of that run of replayIds at or below the checkpoint waits anywhere else.
    for s, e, r, b in model.admitted:
        if s == stream and e == epoch and r <= checkpoint:
            assert b != -1
            assert b in model.written
    # Within one run of replayIds the checkpoint never goes back.
    previous = model.last_released.get(stream)
    if previous is not None and previous[0] == epoch:
        assert checkpoint >= previous[1]
    model.last_released[stream] = (epoch, checkpoint)


def test_everything_written_releases_the_last_positions() -> None:
    ledger = CheckpointLedger({"a": None, "b": 3})
    assert ledger.admit("a", 1)
    assert not ledger.admit("b", 3)
    assert ledger.admit("b", 4)
    first = ledger.seal()
    assert ledger.admit("a", 2)
    second = ledger.seal()
    assert second.positions == {"a": 2}
    assert ledger.written(second.seq) == {}  # ahead of the first batch: nothing yet
    assert ledger.written(first.seq) == {"a": 2, "b": 4}
    assert ledger.pending == 0


def test_restart_drops_the_open_position_and_accepts_lower_ids() -> None:
    ledger = CheckpointLedger({"a": 100})
    assert ledger.admit("a", 101)
    ledger.restart("a")
    assert ledger.open_positions == {}
    assert ledger.admit("a", 7)
    assert ledger.seal().positions == {"a": 7}


def test_a_batch_is_written_once() -> None:
    ledger = CheckpointLedger({})
    sealed = ledger.seal()
    ledger.written(sealed.seq)
    with pytest.raises(ValueError, match="not waiting"):
        ledger.written(sealed.seq)
