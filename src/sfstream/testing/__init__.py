"""Test support for sfstream users and backends.

- `sfstream.testing.fixtures`: pytest fixtures (`sfstream_emulator`, ...); enable them with
  `pytest_plugins = ["sfstream.testing.fixtures"]` in a `conftest.py`.
"""

__all__: list[str] = []
