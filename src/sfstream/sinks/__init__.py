"""Sinks: where the output protocol's messages go (see docs/sinks.md).

- `StdoutSink`: JSON lines on standard output, flushed on every write.
- `FileSink`: JSON lines appended to a file, fsynced on every write, readable back for
  high-water marks.
- `KafkaSink`: records to a topic per stream, SCHEMA/STATE/GAP to a control topic, acknowledged
  by every in-sync replica (the `kafka` extra).
- `PostgresSink`: one table, one transaction per batch, with the checkpoints when the state
  store is in the same database (the `postgres` extra).
- `S3Sink`: one object per batch per stream (the `aws` extra).

Every sink satisfies the `Sink` port and passes `sfstream.testing.sinks.check_sink`. The
sinks of the extras are imported on first use: a run loads only the one it is configured with.
"""

import typing

from sfstream import _lazy
from sfstream.sinks.base import Sink
from sfstream.sinks.file import FileSink
from sfstream.sinks.stdout import StdoutSink

if typing.TYPE_CHECKING:
    from sfstream.sinks.kafka import KafkaSink
    from sfstream.sinks.postgres import PostgresSink
    from sfstream.sinks.s3 import S3Sink
else:
    __getattr__, __dir__ = _lazy.exports(
        __name__,
        {
            "KafkaSink": "sfstream.sinks.kafka",
            "PostgresSink": "sfstream.sinks.postgres",
            "S3Sink": "sfstream.sinks.s3",
        },
    )

__all__ = ["FileSink", "KafkaSink", "PostgresSink", "S3Sink", "Sink", "StdoutSink"]
