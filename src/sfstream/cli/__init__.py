"""The `sfstream` command line: one module a command, each loaded only when it runs.

| command | module |
|---|---|
| `run` | `sfstream.cli.run` |
| `discover` | `sfstream.cli.discover` |
| `check` | `sfstream.cli.check` |
| `state show/set/reset` | `sfstream.cli.state` |
| `schema list/show/history` | `sfstream.cli.schema` |
| `manifest` | `sfstream.cli.manifest` |
| `tail` | `sfstream.cli.tail` |
| `emulator` | `sfstream_emulator.cli` (the emulator's own command) |

Exit codes are `sfstream.errors.ExitCode`, for every command.
"""

from sfstream.cli.main import main

__all__ = ["main"]
