"""Benchmarks: each prints its measurement next to a reference measured in the same run."""
