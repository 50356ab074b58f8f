"""Fault: the hub SIGKILLed while packaging (``edgeloop package --data-dir``, a child process).

Killed at each step it announces (ONNX export, measuring, writing the signed bundle) and once
just after the last announcement. Expected: no bundle row is registered, every file at a
digest path of the artifact store holds exactly the bytes its name says (nothing half-written
is readable as an artifact), and packaging again succeeds with a bundle that verifies.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from sqlmodel import select

from hub.core.db import make_engine, session_scope
from hub.tables import Bundle
from tests.faults._world import ROOT, FaultHub

# seconds after the start (imports take seconds, then export, int8 + gate, measuring, signing), and
# "store": the moment a new file shows up in the artifact store (the bundle being stored)
KILL_AT: list[float | str] = [4.0, "store"]


def _package(data_dir: Path) -> subprocess.Popen[str]:
    command = [
        sys.executable, "-m", "edgeloop_cli", "--data-dir", str(data_dir),
        "package", "digits-mlp@1", "--formats", "onnx", "--json",
    ]  # fmt: skip
    return subprocess.Popen(
        command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _bundles(data_dir: Path) -> list[str]:
    engine = make_engine(f"sqlite:///{data_dir / 'hub.db'}")
    try:
        with session_scope(engine) as s:
            return [b.digest for b in s.exec(select(Bundle)).all()]
    finally:
        engine.dispose()


def _store_is_sound(data_dir: Path) -> int:
    """Every file named like a digest holds those bytes; returns the stray temp files."""
    strays = 0
    for path in (data_dir / "artifacts").rglob("*"):
        if not path.is_file():
            continue
        if len(path.name) == 64 and all(c in "0123456789abcdef" for c in path.name):
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name, path
        else:
            strays += 1
    return strays


def test_sigkill_during_packaging_registers_nothing_half_written(
    fault_hub: FaultHub, tmp_path: Path
) -> None:
    data_dir = Path(shutil.copytree(fault_hub.root, tmp_path / "hub"))
    before = set(_bundles(data_dir))
    outcomes: list[str] = []
    files = {p for p in (data_dir / "artifacts").rglob("*")}
    for at in KILL_AT:
        proc = _package(data_dir)
        started = time.monotonic()
        try:
            while proc.poll() is None:
                if at == "store":
                    if {p for p in (data_dir / "artifacts").rglob("*")} - files:
                        break
                elif time.monotonic() - started >= float(at):
                    break
                time.sleep(0.005)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        outcomes.append(f"{at}: {'killed' if proc.returncode == -signal.SIGKILL else 'done'}")
        after = set(_bundles(data_dir))
        if proc.returncode == -signal.SIGKILL:
            assert after == before, at  # nothing registered by the killed run
        before = after  # (a run that finished before the late kill registered its bundle)
        _store_is_sound(data_dir)
    assert outcomes[-1] == "store: killed", outcomes

    again = _package(data_dir)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    result = json.loads(out)
    assert set(_bundles(data_dir)) == before | {result["digest"]}
    verify = subprocess.run(
        [sys.executable, "-m", "edgeloop_cli", "--data-dir", str(data_dir),
         "bundle", "verify", result["bundle"], "--json"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0 and json.loads(verify.stdout)["valid"] is True, verify.stdout
    _store_is_sound(data_dir)
    print(outcomes, "stray temp files:", _store_is_sound(data_dir))
