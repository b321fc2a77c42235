"""The `sfstream` command line: one module a command, each loaded only when it runs.

| command | module |
|---|---|
| `run` | `sfstream.cli.run` |
| `discover` | `sfstream.cli.discover` |
| `check` | `sfstream.cli.check` |
| `state show/set/reset` | `sfstream.cli.state` |
| `status` | `sfstream.cli.status` |
| `schema list/show/history` | `sfstream.cli.schema` |
| `manifest` | `sfstream.cli.manifest` |
| `endpoints` | `sfstream.cli.endpoints` |
| `tail` | `sfstream.cli.tail` |
| `healthcheck` | `sfstream.cli.healthcheck` |
| `emulator` | `sfstream_emulator.cli` (the emulator's own command) |

Exit codes are `sfstream.errors.ExitCode`, for every command.
"""

import gc

# A command's start-up (imports, configuration) allocates what lives as long as the process:
# with the default thresholds the collector scans it about a hundred times on the way (about
# 40 ms of every `sfstream run` start, bench/footprint.py) and frees nothing. A command
# starts with the thresholds a streaming run settles on (`tune_garbage_collector`).
gc.set_threshold(50_000, 20, 100)

from sfstream.cli.main import main  # noqa: E402 - after the collector's set-up

__all__ = ["main"]
