"""Sinks: where the output protocol's messages go.

- `StdoutSink`: JSON lines on standard output, flushed on every write.
- `FileSink`: JSON lines appended to a file, fsynced on every write, readable back for
  high-water marks.

Every sink satisfies the `Sink` port and passes `sfstream.testing.sinks.check_sink`.
"""

from sfstream.sinks.base import Sink
from sfstream.sinks.file import FileSink
from sfstream.sinks.stdout import StdoutSink

__all__ = ["FileSink", "Sink", "StdoutSink"]
