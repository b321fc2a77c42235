"""Test support for sfstream backends: the conformance suites.

The emulator's pytest fixtures are in `sfstream_emulator.pytest_plugin`.

- `sfstream.testing.state`: `check_state_store(factory)`, the conformance suite every
  `StateStore` backend passes.
- `sfstream.testing.sinks`: `check_sink(harness)`, the conformance suite every `Sink` passes.
"""

__all__: list[str] = []
