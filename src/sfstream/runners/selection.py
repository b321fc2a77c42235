"""Streams on entities not selected for Change Data Capture, looked at again on resubscribe.

A run checks its streams at start (`Connector._validate`) and logs `stream_not_selected` for
each stream whose entity nothing is selected for: the subscription succeeds and delivers
nothing until an admin selects the entity. `SelectionWatch` looks again when the session
starts over and resubscribes (a re-handshake, a dropped session): at most once every
`RECHECK_S`, and only while some stream was found unselected. A stream still unselected is
logged again (`stream_not_selected`, `on: resubscribe`); one selected since is logged as
`stream_selected`. Each look is one describe global and the Tooling queries of the start-up
check.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Final

import structlog

from sfstream.engine.config import Config
from sfstream.engine.discovery import Problem, validate_streams
from sfstream.errors import SfStreamError
from sfstream.observability.telemetry import BatchReport
from sfstream.salesforce.rest import RestClient

log = structlog.get_logger("sfstream.connector")

RECHECK_S: Final = 300.0
"""The least time between two looks at the selection."""


def warn_unselected(problem: Problem, stream: str | None, *, on: str | None = None) -> None:
    """Log `stream_not_selected` for a stream whose entity is not selected (at start, or
    `on="resubscribe"`)."""
    seen = {} if on is None else {"on": on}
    log.warning(
        "stream_not_selected",
        stream=stream,
        channel=problem.channel,
        entity=problem.entity,
        warning=problem.message,
        action=problem.action,
        **seen,
    )


class SelectionWatch:
    """A telemetry listener that re-checks the unselected streams on resubscribe.

    Args:
        unselected: channel -> stream id of the streams found unselected at start.
    """

    def __init__(
        self,
        config: Config,
        rest: RestClient,
        unselected: dict[str, str | None],
        *,
        clock: Callable[[], float] = time.monotonic,
        recheck_s: float = RECHECK_S,
    ) -> None:
        self.config = config
        self.rest = rest
        self.pending = dict(unselected)
        self._clock = clock
        self._recheck_s = recheck_s
        self._last = -float("inf")
        self._task: asyncio.Task[None] | None = None

    def session_started(self) -> None:
        pass

    def session_ended(self, error: SfStreamError | None) -> None:
        pass

    def batch_written(self, batch: BatchReport) -> None:
        pass

    def reconnected(self, reason: str, error: SfStreamError) -> None:
        """The session starts over: look at the selection again, unless looked lately."""
        if not self.pending or (self._task is not None and not self._task.done()):
            return
        now = self._clock()
        if now - self._last < self._recheck_s:
            return
        self._last = now
        self._task = asyncio.get_running_loop().create_task(
            self.recheck(), name="sfstream-selection"
        )

    async def recheck(self) -> None:
        """Log each pending stream as still unselected or as selected since."""
        try:
            _, problems = await validate_streams(self.config, self.rest)
        except SfStreamError as exc:
            log.warning("selection_check_failed", error=str(exc), note="looked at again later")
            return
        still = {problem.channel: problem for problem in problems if problem.unselected}
        for channel, stream in list(self.pending.items()):
            problem = still.get(channel)
            if problem is None:
                log.info("stream_selected", stream=stream, channel=channel)
                del self.pending[channel]
                continue
            warn_unselected(problem, stream, on="resubscribe")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
