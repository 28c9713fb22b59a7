"""Benchmarks: `make bench` (or `python -m bench [name ...]`). Each prints its figures, the
target from its issue, and the ratio against the baseline measured in the same run."""
