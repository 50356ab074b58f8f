"""Dependencies' warnings and logs stay off the user's terminal unless ``-v``.

Without ``-v``: Python warnings from other packages are ignored (ours are logged), log records
of other packages below ERROR are dropped (ours from WARNING), and, while a command runs
torch / ONNX / LiteRT / Optuna in this process (:func:`native_stderr_captured`), file
descriptor 2 goes to a temporary file: the C++ logs of LiteRT, absl and TensorFlow and the
handlers libraries install for themselves (Optuna's ``[I ...]`` lines, torch's) write
there, while our progress bars and messages reach the terminal. If the command fails, what
was captured is printed, as it may explain the failure.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO, Any

from edgeloop_cli.output import stderr

__all__ = ["OURS", "configure", "native_stderr_captured", "unfiltered"]

OURS = ("edgeloop", "edgeloop_cli", "hub", "edge_agent", "model_packager", "simulators")
_OURS_PATTERN = rf"({'|'.join(OURS)})(\..*)?$"
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _ConsoleStream:
    """Log lines go where our messages go (the terminal, even while fd 2 is captured)."""

    def write(self, text: str) -> int:
        return stderr.file.write(text)

    def flush(self) -> None:
        stderr.file.flush()


class _OursOrErrors(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        top = record.name.split(".", 1)[0]
        return top in OURS or record.name == "py.warnings" or record.levelno >= logging.ERROR


_FILTER = _OursOrErrors()
_WARNING_FILTERS: list[Any] = []  # Python's, before configure() changed them


def configure(*, verbose: bool) -> None:
    """Logging for the CLI process (once, from the root callback)."""
    root = logging.getLogger()
    if not root.handlers:  # a test runner's own capture stays as it is
        handler = logging.StreamHandler(_ConsoleStream())
        handler.setFormatter(logging.Formatter(FORMAT))
        if not verbose:
            handler.addFilter(_FILTER)
        root.addHandler(handler)
        root.setLevel(logging.INFO if verbose else logging.WARNING)
    if verbose:
        return
    _WARNING_FILTERS[:] = list(warnings.filters)
    warnings.filterwarnings("ignore")  # other packages' warnings ...
    warnings.filterwarnings("default", module=_OURS_PATTERN)  # ... but ours
    logging.captureWarnings(True)  # ours as log lines, which reach the terminal


def unfiltered() -> None:
    """A server's log is its output (``hub serve``): dependencies' records and warnings too."""
    for handler in logging.getLogger().handlers:
        handler.removeFilter(_FILTER)
    if _WARNING_FILTERS:
        warnings.resetwarnings()
        for action, message, category, module, lineno in reversed(_WARNING_FILTERS):
            # (a regex, or a plain string in the interpreter's own default filters)
            text, where = getattr(message, "pattern", message), getattr(module, "pattern", module)
            warnings.filterwarnings(action, text or "", category, where or "", lineno)
        warnings.filterwarnings("default", module=_OURS_PATTERN)  # (and clears the cache)
        logging.captureWarnings(False)


@contextmanager
def native_stderr_captured(*, verbose: bool) -> Iterator[None]:
    """Run heavy dependencies with fd 2 captured (see the module doc); a no-op with ``-v``
    or when stderr is not the process's own (a test runner capturing it)."""
    own = sys.stderr
    if verbose or own is not sys.__stderr__ or own is None or not _has_fd2():
        yield
        return
    own.flush()
    saved = os.dup(2)
    terminal: IO[Any] = os.fdopen(os.dup(saved), "w", buffering=1, encoding="utf-8")
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        stderr.file = terminal
        try:
            yield
        except BaseException:
            _restore(saved, terminal)
            sink.seek(0)
            captured = sink.read().decode(errors="replace").strip()
            if captured:
                stderr.print(captured, markup=False, highlight=False, style="dim")
            raise
        _restore(saved, terminal)


def _has_fd2() -> bool:
    try:
        return sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


def _restore(saved: int, terminal: IO[Any]) -> None:
    if stderr.file is terminal:
        if sys.stderr is not None:
            sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        stderr.file = None  # type: ignore[assignment]  # None: sys.stderr, looked up per write
        terminal.close()
