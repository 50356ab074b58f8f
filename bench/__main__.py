"""``make bench`` / ``python -m bench [NAME ...]``: run benchmarks, print ratios, write JSON."""

from __future__ import annotations

import importlib
import sys

from bench._result import RESULTS
from bench._summary import write_summary

BENCHMARKS = [
    "artifacts",
    "packaging",
    "inference",
    "train",
    "ingest",
    "scale",
    "rollout",
    "drift",
    "loop",
    "monitor",
    "fleet",
    "cli",
]
# `make bench` runs these; the loop (12 whole loops, 1-2 hours) and the monitor at 10,000
# devices (~25 simulated minutes) and a real hub with 10,000 devices (~30 minutes) run on
# their own: make bench-loop, make bench-monitor, make bench-fleet
DEFAULT = [b for b in BENCHMARKS if b not in ("loop", "monitor", "fleet")]


def main(argv: list[str]) -> int:
    names = argv or DEFAULT
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s) {unknown}; known: {BENCHMARKS}", file=sys.stderr)
        return 2
    for name in names:
        result = importlib.import_module(f"bench.{name}").run()
        path = result.write()
        print(f"{result.line()}  -> {path}")
    print(f"summary of every result so far -> {write_summary(RESULTS, order=BENCHMARKS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
