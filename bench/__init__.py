"""Benchmarks and the chaos run (`bench.chaos`); see docs/benchmarks.md and docs/reliability.md."""
