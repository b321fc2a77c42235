"""Test support for sfstream users and backends.

- `sfstream.testing.fixtures`: pytest fixtures (`sfstream_emulator`, ...); enable them with
  `pytest_plugins = ["sfstream.testing.fixtures"]` in a `conftest.py`.
- `sfstream.testing.state`: `check_state_store(factory)`, the conformance suite every
  `StateStore` backend passes.
- `sfstream.testing.sinks`: `check_sink(harness)`, the conformance suite every `Sink` passes.
"""

__all__: list[str] = []
