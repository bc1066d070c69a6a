"""Tether benchmarks: `python -m bench --help`."""
