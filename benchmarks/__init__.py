"""Benchmarks: python -m benchmarks.bench_<topic>."""
