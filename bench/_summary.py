"""``bench/results/SUMMARY.md``: one markdown table over every result JSON in the folder.

Written after each ``make bench`` / ``make bench-NAME`` from all results present, so a
partial run updates its rows and keeps the others (each row says when it was measured).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

SUMMARY = "SUMMARY.md"
MAX_FACTS = 12  # headline details per benchmark: its top-level numbers, strings and flags


def _facts(details: dict[str, Any]) -> list[str]:
    facts = []
    for key, value in details.items():
        if isinstance(value, bool | int | float | str) and len(str(value)) <= 60:
            facts.append(f"`{key}` {value:g}" if isinstance(value, float) else f"`{key}` {value}")
        if len(facts) == MAX_FACTS:
            break
    return facts


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_summary(directory: Path, *, order: list[str] | None = None) -> Path:
    """Write ``directory/SUMMARY.md`` from every ``*.json`` result there (an unreadable one is
    listed as such); returns its path."""
    results: dict[str, dict[str, Any]] = {}
    broken: list[str] = []
    for path in sorted(directory.glob("*.json")):
        try:
            body = json.loads(path.read_text())
            results[str(body["name"])] = body
        except (OSError, ValueError, KeyError, TypeError) as exc:
            broken.append(f"{path.name}: {type(exc).__name__}")
    rank = {name: i for i, name in enumerate(order or [])}
    names = sorted(results, key=lambda n: (rank.get(n, len(rank)), n))
    lines = [
        "# Benchmark results",
        "",
        f"Written {datetime.now(UTC).isoformat(timespec='seconds')} from "
        f"{len(results)} result file(s) in `{directory.name}/`. Each ratio is against a "
        "baseline measured in the same run.",
        "",
        "| benchmark | ratio | target | met | baseline | measured | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in names:
        r = results[name]
        met = "yes" if r.get("met") else "**no**"
        machine = f"{r.get('machine', '?')}, {r.get('cores', '?')} cores"
        lines.append(
            f"| `{name}` | {float(r.get('ratio', float('nan'))):.3f} | {_cell(r.get('target'))} "
            f"| {met} | {_cell(r.get('baseline'))} | {r.get('written_at', '?')} | {machine} |"
        )
    for name in names:
        facts = _facts(results[name].get("details") or {})
        if facts:
            lines += ["", f"## {name}", "", "; ".join(_cell(f) for f in facts)]
    if broken:
        lines += ["", "## Unreadable result files", ""] + [f"- {b}" for b in broken]
    path = directory / SUMMARY
    path.write_text("\n".join(lines) + "\n")
    return path
