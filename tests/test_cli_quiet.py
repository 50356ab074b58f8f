"""Dependencies' warnings and logs stay off the terminal unless ``-v`` (real processes: the
quiet mode works on the process's own file descriptor 2, which in-process tests replace).
The real ``tune`` and ``package`` are checked quiet by tests/test_readme.py, which runs them."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

EDGELOOP = [sys.executable, "-m", "edgeloop_cli"]
OPTUNA_LINE = "[I 20"  # Optuna's default handler: "[I 2026-01-01 12:00:00,000] Trial 0 ..."

NOISY = """
import logging, os, sys, warnings
import optuna
from edgeloop_cli._quiet import configure, native_stderr_captured
from edgeloop_cli.output import stderr

verbose, fail = sys.argv[1] == "-v", sys.argv[2] == "fail"
configure(verbose=verbose)
with native_stderr_captured(verbose=verbose):
    os.write(2, b"I0000 native library noise" + bytes([10]))
    optuna.logging.get_logger("optuna").info("Trial 0 finished")  # Optuna's own handler
    logging.getLogger("torchao").warning("dependency log line")
    warnings.warn("dependency warning", FutureWarning)
    warnings.warn_explicit("our warning", UserWarning, "hub/x.py", 1, module="hub.x")
    logging.getLogger("hub.packaging").warning("our log line")
    stderr.print("our progress")
    if fail:
        raise SystemExit(3)
"""


def test_dependency_noise_is_kept_off_unless_verbose_and_shown_on_failure(tmp_path: Path) -> None:
    script = tmp_path / "noisy.py"
    script.write_text(textwrap.dedent(NOISY))

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60
        )

    noise = ("native library noise", OPTUNA_LINE, "dependency log line", "FutureWarning")
    quiet = run("-", "ok")
    assert quiet.returncode == 0, quiet.stderr
    for ours in ("our progress", "our log line", "our warning"):
        assert ours in quiet.stderr
    for line in noise:
        assert line not in quiet.stderr, quiet.stderr
    loud = run("-v", "ok")
    for line in ("our progress", *noise):
        assert line in loud.stderr, loud.stderr
    failed = run("-", "fail")  # what was captured may explain the failure: shown
    assert failed.returncode == 3 and "native library noise" in failed.stderr


def _run(*args: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGELOOP, "--data-dir", str(data_dir), *args],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        timeout=300,
    )
