"""Printing results: one JSON object on stdout with ``--json``; tables for people otherwise.

Progress and logs go to stderr so that stdout stays machine-readable.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from hub.core.redact import redact_text

stdout = Console(soft_wrap=True)
stderr = Console(stderr=True)


def _scalar(value: Any) -> str:
    if isinstance(value, dict | list):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def emit(data: Any, *, as_json: bool, columns: Sequence[str] | None = None, key: str = "") -> None:
    """Print ``data``; lists become ``{key: [...]}`` in JSON so stdout is always one object."""
    if as_json:
        obj = {key: data} if isinstance(data, list) else data
        sys.stdout.write(json.dumps(obj, default=str) + "\n")
        sys.stdout.flush()
        return
    if isinstance(data, list):
        cols = list(columns or (data[0].keys() if data else []))
        table = Table(*cols, show_lines=False)
        for row in data:
            table.add_row(*(_scalar(row.get(c)) for c in cols))
        stdout.print(table if data else f"(no {key or 'items'})")
        return
    table = Table(show_header=False, box=None)
    table.add_column(style="bold cyan")
    table.add_column()
    for name, value in data.items():
        if columns is None or name in columns:
            table.add_row(name, _scalar(value))
    stdout.print(table)


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
