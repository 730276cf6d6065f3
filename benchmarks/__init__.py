"""Benchmarks for baton; run each as ``python -m benchmarks.<name>``."""
