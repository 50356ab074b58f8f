"""Printing results: one JSON object on stdout with ``--json``; tables for people otherwise.

Progress and logs go to stderr so that stdout stays machine-readable.

For people: real tables, every id and digest whole (a cell folds a long value, it never cuts
it with "…"), nested data as nested tables or ``key: value`` lines (never JSON text), numbers
rounded for reading (``--json`` keeps them exact). Written to a pipe or a file, rows are not
squeezed to 80 columns, so what is copied from them is the whole value.
"""

from __future__ import annotations

import json
import math
import re
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.measure import Measurement
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from hub.core.redact import redact_text

__all__ = [
    "emit",
    "emit_error",
    "human",
    "key_values",
    "label",
    "metric_label",
    "number",
    "print_human",
    "progress",
    "progress_bar",
    "stderr",
    "stdout",
    "tree",
]

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True, soft_wrap=True)  # a long path or digest stays one line

PIPE_WIDTH = 240  # stdout is not a terminal: rows this wide before a cell folds
LONG_LIST = 12  # more numbers than this in one cell: summarised (--json has them all)


def _console() -> Console:
    if stdout.is_terminal:
        return stdout
    # a pipe or a file: no terminal width to fit, so rows are not squeezed to 80 columns
    return Console(soft_wrap=True, width=max(PIPE_WIDTH, stdout.width))


def _fit(renderable: RenderableType, console: Console) -> RenderableType:
    """A table wider than the terminal: the text columns wrap at their spaces first; only if
    that cannot make it fit may every column fold, the widest first (a folded id is still
    whole; rich would otherwise squeeze the columns that may wrap to nothing)."""
    if not isinstance(renderable, Table):
        return renderable
    wide = console.options.update_width(10_000)
    natural = Measurement.get(console, wide, renderable).maximum
    if natural <= console.width:
        return renderable
    spare = 0  # what wrapping the text columns at their spaces gives back
    for column in renderable.columns:
        if not column.no_wrap:
            sizes = [Measurement.get(console, wide, c) for c in (column.header, *column.cells)]
            spare += max(m.maximum for m in sizes) - max(m.minimum for m in sizes)
    if natural - spare > console.width:
        for column in renderable.columns:
            column.no_wrap = False
    return renderable


def print_human(renderable: RenderableType) -> None:
    """Print a table or tree on stdout (full width when stdout is a pipe or a file)."""
    console = _console()
    console.print(_fit(renderable, console), soft_wrap=False)  # a tree's lines wrap, not crop


def number(value: float) -> str:
    """A float for reading: 6 significant digits, thousands grouped from 100,000."""
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 100_000:
        return f"{value:,.0f}"
    return f"{value:.6g}"


_TIMESTAMP = re.compile(r"(\d{4}-\d\d-\d\d)T(\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)?")


def _scalar(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return number(value)
    if isinstance(value, str) and (stamp := _TIMESTAMP.fullmatch(value)):
        day, clock, zone = stamp.groups()  # to the second, for reading (--json: as stored)
        return f"{day} {clock}{'Z' if zone in ('Z', '+00:00') else zone or ''}"
    return str(value)


_SPLITS = {"val": "validation", "test": "test", "train": "training", "field": "field"}


def metric_label(metric: str) -> str:
    """A metric key as people say it: ``val_accuracy`` -> ``validation accuracy``."""
    split, _, rest = metric.partition("_")
    if split in _SPLITS and rest:
        return f"{_SPLITS[split]} {rest.replace('_', ' ')}"
    return metric.replace("_", " ")


def label(key: str, labels: Mapping[str, str] | None = None) -> str:
    """A key as people read it: its label if given, else with spaces for underscores."""
    return (labels or {}).get(key) or key.replace("_", " ")


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def _scalars(values: Sequence[Any]) -> str:
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
    if numbers and len(values) > LONG_LIST:
        if len(set(values)) == 1:
            return f"{_scalar(values[0])} (all {len(values)})"
        low, high = min(values), max(values)
        return f"{len(values)} values from {_scalar(low)} to {_scalar(high)}"
    return ", ".join(_scalar(v) for v in values)


def human(value: Any) -> RenderableType:
    """One value as people read it: a scalar as text, a mapping as ``key: value`` lines
    (nested ones indented), a list of scalars comma-separated, a list of mappings as a table.
    Text is never interpreted as rich markup."""
    if _is_scalar(value):
        return Text(_scalar(value))
    if isinstance(value, Mapping):
        if not value:
            return Text("")
        items = list(value.values())
        alike = all(isinstance(v, Mapping) and v for v in items)  # {"cam-1": {..}, ...}
        if len(items) > 1 and alike and len({tuple(v) for v in items}) == 1:
            rows = [{"": key, **item} for key, item in value.items()]
            return _table(rows, box_style=box.SIMPLE_HEAD)
        if all(_is_scalar(v) for v in items):  # lines that wrap at their spaces, in any cell
            return Text("\n".join(f"{key}: {_scalar(item)}" for key, item in value.items()))
        grid = Table.grid(padding=(0, 1))
        grid.add_column(style="dim", overflow="fold")
        grid.add_column(overflow="fold")
        for key, item in value.items():
            grid.add_row(Text(f"{key}:"), human(item))
        return grid
    if isinstance(value, Sequence):
        if not value:
            return Text("")
        if all(_is_scalar(v) for v in value):
            return Text(_scalars(value))
        if all(isinstance(v, Mapping) for v in value):
            return _table(value, box_style=box.SIMPLE_HEAD)
        return Group(*(human(v) for v in value))
    return Text(str(value))


def _no_wrap(rows: Sequence[Mapping[str, Any]], column: str) -> bool:
    """Ids, digests, refs, times: single words are kept on one line while the table fits."""
    values = [row.get(column) for row in rows]
    return all(_is_scalar(v) and " " not in _scalar(v) for v in values)


def _table(
    rows: Sequence[Mapping[str, Any]],
    *,
    columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
    box_style: box.Box = box.HEAVY_HEAD,
) -> Table:
    cols = list(columns or dict.fromkeys(k for row in rows for k in row))
    table = Table(box=box_style)
    for col in cols:
        table.add_column(label(col, labels), overflow="fold", no_wrap=_no_wrap(rows, col))
    for row in rows:
        table.add_row(*(human(row.get(c)) for c in cols))
    return table


def key_values(
    data: Mapping[str, Any],
    *,
    columns: Sequence[str] | None = None,
    labels: Mapping[str, str] | None = None,
) -> Table:
    """One object as a two-column table: its keys (or their ``labels``) and values."""
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan", overflow="fold")
    table.add_column(overflow="fold")
    for name, value in data.items():
        if columns is None or name in columns:
            table.add_row(Text(label(name, labels)), human(value))
    return table


def tree(label: str | Text) -> Tree:
    """A tree (lineage, ancestry) to fill with ``.add(...)`` and print with ``print_human``."""
    return Tree(Text(label) if isinstance(label, str) else label)


def emit(
    data: Any,
    *,
    as_json: bool,
    columns: Sequence[str] | None = None,
    key: str = "",
    labels: Mapping[str, str] | None = None,
) -> None:
    """Print ``data``; lists become ``{key: [...]}`` in JSON so stdout is always one object.

    For people: a list as a table (``columns`` picks and orders them), an object as
    ``key value`` rows (``columns`` picks them); ``labels`` names a key for people (e.g.
    ``best_value`` -> ``best validation accuracy``); JSON keeps the keys."""
    if as_json:
        obj = {key: data} if isinstance(data, list) else data
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()
        return
    if isinstance(data, list):
        if not data:
            stdout.print(f"(no {key or 'items'})", highlight=False)
            return
        print_human(_table(data, columns=columns, labels=labels))
        return
    print_human(key_values(data, columns=columns, labels=labels))


def emit_error(*, message: str, code: str, as_json: bool) -> None:
    message = redact_text(message)  # e.g. a settings error quoting a URL with its password
    if as_json:
        sys.stdout.write(json.dumps({"error": message, "code": code}) + "\n")
        sys.stdout.flush()
    else:
        # escaped: brackets in a message (pydantic's [type=...]) are text, not rich markup
        stderr.print(f"[bold red]error[/] ({code}): {escape(message)}", highlight=False)


@contextmanager
def progress(description: str) -> Iterator[None]:
    """A progress bar on stderr for work whose length is not known in advance."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=True,
    ) as bar:
        bar.add_task(description, total=None)
        yield


def progress_bar(*, transient: bool) -> Progress:
    """A counted progress bar on stderr (description, bar, done/total, elapsed); use it as a
    context manager. ``transient``: erase it when done (with ``--json``)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=stderr,
        transient=transient,
    )
