"""Benchmarks: each prints a ratio against a baseline measured in the same run and writes
``bench/results/<name>.json`` with ``name``, ``baseline``, ``ratio``, ``target``, ``met``,
``details``."""
