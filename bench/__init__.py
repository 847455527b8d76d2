"""Benchmarks: run by hand (`python -m bench.throughput`, `python -m bench.online`), never
as pass/fail tests. Speed is reported as ratios against a baseline measured in the same run."""
