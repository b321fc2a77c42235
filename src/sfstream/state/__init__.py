"""The state registry: each stream's checkpoint, kept where a restart finds it.

- `SqliteStateStore`: the embedded default, one private file.
- `PostgresStateStore`: a table in PostgreSQL (the `postgres` extra; psycopg is imported
  only when such a store is built).

`sfstream.runners.wiring.open_state(config)` builds the configured one. Every backend passes
`sfstream.testing.state.check_state_store`.
"""

from sfstream.state.base import Checkpoint, StateStore
from sfstream.state.postgres import PostgresStateStore
from sfstream.state.sqlite import SqliteStateStore

__all__ = ["Checkpoint", "PostgresStateStore", "SqliteStateStore", "StateStore"]
