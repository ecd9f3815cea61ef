"""Benchmarks: `python -m bench` regenerates docs/benchmarks.md on this machine."""
