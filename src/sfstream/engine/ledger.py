"""The commit rule, without I/O: a checkpoint moves only over records the sink durably holds.

The pipeline tells the ledger what happens, in order:

- `admit(stream, replay_id)`: an event is about to join the open batch. False means a
  duplicate (at or below the last admitted replayId of that stream): drop it.
- `restart(stream)`: Salesforce rejected the stream's position and it resumes from a
  fallback (a GAP): replayIds start over, and the open batch no longer moves its checkpoint.
- `seal()`: the open batch is complete; it gets a sequence number and the positions it
  reaches (what its STATE messages say).
- `written(seq)`: the sink durably holds batch `seq`. The answer is the checkpoints that may
  be committed now: those of the longest run of written batches that follows the last one
  already released, the later batch's position winning. A batch written ahead of an earlier
  one releases nothing until the earlier one is written too.

Everything the ledger returns is safe to commit: for every stream, each admitted replayId at
or below a released checkpoint (within the same run of replayIds, see `restart`) is in a
batch the sink holds. `tests/engine/test_ledger.py` checks this with hypothesis.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec


class Sealed(msgspec.Struct, frozen=True):
    """A batch closed for writing: its sequence number and the positions it reaches."""

    seq: int
    positions: dict[str, int]


class CheckpointLedger:
    """Dedup by replayId and the commit rule for one run of the pipeline.

    Args:
        start: each stream's position when the run starts (its checkpoint, or what the sink
            already holds); None for a stream with no position yet.
    """

    __slots__ = ("_admitted", "_next_seq", "_open", "_released", "_sealed", "_written")

    def __init__(self, start: Mapping[str, int | None]) -> None:
        self._admitted: dict[str, int | None] = dict(start)
        self._open: dict[str, int] = {}
        self._next_seq = 0
        self._sealed: dict[int, dict[str, int]] = {}
        self._written: set[int] = set()
        self._released = -1
        """The highest sequence number whose checkpoints have been released."""

    def last_admitted(self, stream: str) -> int | None:
        """The replayId of the stream's last admitted event (or its start position)."""
        return self._admitted.get(stream)

    def admit(self, stream: str, replay_id: int) -> bool:
        """Whether the event is new; if so it joins the open batch."""
        last = self._admitted.get(stream)
        if last is not None and replay_id <= last:
            return False
        self._admitted[stream] = replay_id
        self._open[stream] = replay_id
        return True

    def add(self, stream: str, start: int | None) -> None:
        """Take `stream` on from `start` (its position; None: none yet), forgetting what
        the ledger knew of it before (a stream that moves between workers)."""
        self._admitted[stream] = start
        self._open.pop(stream, None)

    def remove(self, stream: str) -> None:
        """Forget `stream` (it stopped); sealed batches still release what they reach."""
        self._admitted.pop(stream, None)
        self._open.pop(stream, None)

    def restart(self, stream: str) -> None:
        """The stream resumes from a fallback position: its replayIds start over."""
        self._admitted[stream] = None
        self._open.pop(stream, None)

    @property
    def open_positions(self) -> dict[str, int]:
        """What the open batch reaches so far, stream by stream."""
        return self._open

    def seal(self) -> Sealed:
        """Close the open batch (possibly empty) and start a new one."""
        sealed = Sealed(self._next_seq, self._open)
        self._sealed[sealed.seq] = sealed.positions
        self._next_seq += 1
        self._open = {}
        return sealed

    def written(self, seq: int) -> dict[str, int]:
        """The sink durably holds batch `seq`: the checkpoints that may be committed now."""
        if seq not in self._sealed or seq <= self._released:
            raise ValueError(f"batch {seq} is not waiting to be written")
        self._written.add(seq)
        release: dict[str, int] = {}
        while self._released + 1 in self._written:
            self._released += 1
            self._written.discard(self._released)
            release.update(self._sealed.pop(self._released))
        return release

    @property
    def last_sealed(self) -> int:
        """The sequence number of the last batch sealed (-1: none yet)."""
        return self._next_seq - 1

    @property
    def pending(self) -> int:
        """Sealed batches whose checkpoints are not released yet."""
        return len(self._sealed)
