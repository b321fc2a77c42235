"""Shared fixtures: the emulator runs in-process on a free localhost port."""

pytest_plugins = ["sfstream.testing.fixtures"]
