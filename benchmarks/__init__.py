"""Benchmarks and long runs (docs/performance.md, docs/reliability.md): `python -m benchmarks.X`."""
