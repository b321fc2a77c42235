"""The state registry: each stream's checkpoint, kept where a restart finds it.

- `SqliteStateStore`: the embedded default, one private file.
- `PostgresStateStore`: a table in PostgreSQL (the `postgres` extra; psycopg is imported
  only when such a store is built).
- `DynamoDbStateStore`: a DynamoDB table (the `aws` extra; boto3 is imported only when such
  a store is used).

`sfstream.runners.wiring.open_state(config)` builds the configured one. Every backend passes
`sfstream.testing.state.check_state_store`. Besides checkpoints, a store keeps operators'
pending positions (`Override`) and the run lock (`StateStore.owner`); see
`sfstream.state.base`. The backends are imported on first use: a run loads only the one it
is configured with.
"""

import typing

from sfstream import _lazy
from sfstream.state.base import Checkpoint, Override, StateStore, StreamOwnedError

if typing.TYPE_CHECKING:
    from sfstream.state.dynamodb import DynamoDbStateStore
    from sfstream.state.postgres import PostgresStateStore
    from sfstream.state.sqlite import SqliteStateStore
else:
    __getattr__, __dir__ = _lazy.exports(
        __name__,
        {
            "DynamoDbStateStore": "sfstream.state.dynamodb",
            "PostgresStateStore": "sfstream.state.postgres",
            "SqliteStateStore": "sfstream.state.sqlite",
        },
    )

__all__ = [
    "Checkpoint",
    "DynamoDbStateStore",
    "Override",
    "PostgresStateStore",
    "SqliteStateStore",
    "StateStore",
    "StreamOwnedError",
]
