"""The state registry: each stream's checkpoint, kept where a restart finds it.

- `SqliteStateStore`: the embedded default, one private file.
- `PostgresStateStore`: a table in PostgreSQL (the `postgres` extra; psycopg is imported
  only when such a store is built).

`open_state_store(url_or_path)` picks one from a single string. Every backend passes
`sfstream.testing.state.check_state_store`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from sfstream.errors import ConfigError
from sfstream.state.base import Checkpoint, StateStore
from sfstream.state.postgres import PostgresStateStore
from sfstream.state.sqlite import SqliteStateStore

__all__ = [
    "Checkpoint",
    "PostgresStateStore",
    "SqliteStateStore",
    "StateStore",
    "open_state_store",
]

_SCHEME: Final = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def open_state_store(url_or_path: str | Path) -> StateStore:
    """The state store a URL or path names; it connects on first use.

    - `sqlite:///state.db` (relative) or `sqlite:////var/lib/sfstream/state.db` (absolute),
      as in SQLAlchemy: the path is what follows `sqlite:///`.
    - a bare path: an SQLite file (`~` is expanded).
    - `postgresql://...` or `postgres://...`: a libpq URL, table `sfstream_checkpoints`.

    Raises:
        ConfigError: an unsupported scheme, or an SQLite URL without a path (checkpoints
            must survive the process, so there is no in-memory store).
    """
    if isinstance(url_or_path, Path):
        return SqliteStateStore(url_or_path)
    match = _SCHEME.match(url_or_path)
    if match is None:
        if not url_or_path.strip():
            raise ConfigError("the state store location is empty")
        return SqliteStateStore(url_or_path)
    scheme = match.group(1).lower()
    if scheme in ("postgresql", "postgres"):
        return PostgresStateStore(url_or_path)
    if scheme == "sqlite":
        rest = url_or_path[match.end() :]
        path = rest[1:] if rest.startswith("/") else ""
        if not path or path == ":memory:":
            raise ConfigError(
                f"state store URL {url_or_path!r} names no file: use sqlite:///relative.db "
                f"or sqlite:////absolute/path.db"
            )
        return SqliteStateStore(path)
    raise ConfigError(
        f"unsupported state store scheme {scheme!r}: use a path, sqlite:///path or postgresql://..."
    )
