"""Benchmarks: every model and search with every seed on the same splits, and their report."""

from volnas.benchmark.cells import BenchmarkError
from volnas.benchmark.run import run_benchmark

__all__ = ["BenchmarkError", "run_benchmark"]
