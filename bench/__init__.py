"""Benchmark harness for the gateway: ``python -m bench`` (see BENCHMARKS.md)."""
