"""Benchmarks: each prints one JSON line; never part of the test pass/fail."""
