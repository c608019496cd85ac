"""Benchmarks: scripts that print figures (`mmray bench search | data | imbalance`)."""
