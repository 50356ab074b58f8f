"""Fleets of real edge agents on one machine, for tests, demos and benchmarks."""
