"""Every shell block in README.md runs as written (issue #21: a newcomer's first hour).

The blocks run in README order as one bash script (``set -euo pipefail``; a block may export
variables or start a hub in the background for the blocks after it) in a fresh ``HOME`` and
working folder, with this checkout's ``edgeloop`` first on ``PATH``. Two things differ from a
newcomer's machine, both so that the run cannot collide with anything else on this one:

- the default ports (API 8000, gRPC 50051, MQTT 1884, the agent's HTTP 8080) are moved to
  free ones: the hub and agent get them through their settings, and the same numbers are
  substituted in the blocks' text;
- processes the blocks leave in the background are stopped at the end (their process group).

A block that is not run says why in :data:`NOT_RUN` (its first command line starts with the
key); a new block in the README is run unless it is listed there.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.ports import free_port
from tests.fixtures.services import missing_service

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"

#: First command line of a block -> why this test does not run it (it is checked elsewhere).
NOT_RUN = {
    "make demo": "`make test` is this suite; tests/test_demo.py runs the demo's loop, shorter",
    "make lint": "CI runs `make lint`; `make proto` is checked by tests/test_proto.py; "
    "`make bench` runs the benchmarks (hours)",
    "edgeloop hub serve  ": "foreground servers: tests/test_hub_serve.py runs both forms "
    "(SQLite, PostgreSQL); the quick start below runs the same command in the background",
}

#: README's default port -> the setting that moves it (None: only the text names it).
DEFAULT_PORTS = {
    8000: "EDGELOOP_API_PORT",
    50051: "EDGELOOP_GRPC_PORT",
    1884: "EDGELOOP_EMBEDDED_MQTT_PORT",
    8080: None,
}


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence in README.md
    text: str

    @property
    def first_command(self) -> str:
        for raw in self.text.splitlines():
            stripped = raw.strip()
            if stripped and not stripped.startswith("#"):
                return stripped
        return ""

    def skipped_because(self) -> str | None:
        first = self.first_command
        for prefix, reason in NOT_RUN.items():
            if first.startswith(prefix.rstrip()) and (
                not prefix.endswith(" ") or first.startswith(prefix)
            ):
                return reason
        return None


def readme_blocks(text: str) -> list[Block]:
    """The ```bash fenced blocks of ``text``, in order."""
    blocks: list[Block] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() in {"```bash", "```sh", "```shell", "```console"}:
            start, body = i + 1, []
            i += 1
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            blocks.append(Block(line=start, text="\n".join(body)))
        i += 1
    return blocks


def _script(blocks: list[Block], ports: dict[int, int]) -> str:
    """One bash script: each block announced on stderr, then run as written (ports moved)."""
    parts = [
        "set -euo pipefail",
        "PS4='+ [${SECONDS}s] '",  # each command in the log, with the seconds it started at
        "set -x",
        # which README line failed, for the test's message
        "trap 'echo \"README-FAILED at script line $LINENO: $BASH_COMMAND\" >&2' ERR",
    ]
    for block in blocks:
        text = block.text
        for default, free in ports.items():
            text = re.sub(rf"(?<![0-9]){default}(?![0-9])", str(free), text)
        parts.append(f"echo {shlex.quote(f'README-BLOCK line {block.line}')} >&2")
        parts.append(text)
    parts.append("echo README-DONE >&2")
    return "\n".join(parts) + "\n"


def test_readme_blocks_are_found_and_each_not_run_block_says_why() -> None:
    blocks = readme_blocks(README.read_text())
    firsts = [b.first_command for b in blocks]
    assert any(f.startswith("export EDGELOOP_DATA_DIR") for f in firsts), firsts
    # every NOT_RUN entry still matches a block (no stale excuses)
    for prefix in NOT_RUN:
        assert any(b.skipped_because() == NOT_RUN[prefix] for b in blocks), prefix
    assert sum(b.skipped_because() is None for b in blocks) >= 2


def test_every_readme_command_block_runs_as_written(tmp_path: Path) -> None:
    import shutil

    for tool in ("mosquitto", "curl"):
        if shutil.which(tool) is None:
            missing_service(f"the {tool} binary")
    blocks = [b for b in readme_blocks(README.read_text()) if b.skipped_because() is None]
    ports = {default: free_port() for default in DEFAULT_PORTS}
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("EDGELOOP_") and key not in {"VIRTUAL_ENV"}
    }
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        PYTHONUNBUFFERED="1",
    )
    env.update({name: str(ports[p]) for p, name in DEFAULT_PORTS.items() if name})
    script = work / "readme.sh"
    script.write_text(_script(blocks, ports))
    log = tmp_path / "readme.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(script)],
            cwd=work,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the blocks' background processes share its group
        )
        try:
            rc = proc.wait(timeout=420)
        except subprocess.TimeoutExpired:
            rc = None
        finally:
            _stop_group(proc.pid)
    output = log.read_text(errors="replace")
    tail = "\n".join(output.splitlines()[-80:])
    for name in ("hub.log", "agent.log"):  # what the blocks' background processes said
        if (work / name).exists():
            lines = (work / name).read_text(errors="replace").splitlines()[-25:]
            tail += f"\n--- {name} (last lines) ---\n" + "\n".join(lines)
    assert rc is not None, f"README blocks still running after 420 s:\n{tail}"
    assert rc == 0 and "README-DONE" in output, f"README blocks failed (rc {rc}):\n{tail}"
    # the device answered the README's curl with a prediction: the digit of sklearn's first
    # record (a zero) read as a zero by the model the rollout installed
    assert '"labels": ["0"]' in output and '"model": "digits-cnn"' in output, tail
    # human output, quiet: tune names its metric, package its accuracy; no dependency's
    # warnings, Optuna's [I ...] lines or LiteRT's C++ logs (they show with -v: test_cli_quiet)
    assert "best validation accuracy" in output and "test accuracy (%)" in output
    for noise in ("FutureWarning", "[I 20", "flatbuffer_export.cc", "XNNPACK"):
        assert noise not in output, noise


def _stop_group(pgid: int) -> None:
    """SIGTERM what the blocks left running (hub, agent), then SIGKILL what is left."""
    import time

    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


if __name__ == "__main__":  # print the script the test would run
    found = [b for b in readme_blocks(README.read_text()) if b.skipped_because() is None]
    sys.stdout.write(_script(found, {p: p for p in DEFAULT_PORTS}))
