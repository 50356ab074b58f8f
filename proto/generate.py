"""Regenerate the Python modules beside the ``.proto`` files.

Run from anywhere with ``python -m proto.generate``; it runs, in the repository root::

    python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. --grpc_python_out=. \\
        proto/messages.proto proto/services.proto

and deletes ``proto/messages_pb2_grpc.py``, which that command also writes although
``messages.proto`` declares no service (an empty module nobody should import).

Needs ``grpcio-tools`` (a dev dependency). ``tests/test_proto.py`` regenerates into a
temporary folder and fails when the committed files differ.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_FILES = ("proto/messages.proto", "proto/services.proto")
GENERATED = (
    "proto/messages_pb2.py",
    "proto/messages_pb2.pyi",
    "proto/services_pb2.py",
    "proto/services_pb2.pyi",
    "proto/services_pb2_grpc.py",
)
# Written by protoc for a file without services; nothing in it.
EMPTY_GRPC_MODULE = "proto/messages_pb2_grpc.py"


def command(*, out: str = ".") -> list[str]:
    """The protoc command line (run in :data:`ROOT`), writing under ``out``."""
    return [
        sys.executable,
        "-m",
        "grpc_tools.protoc",
        "-I.",
        f"--python_out={out}",
        f"--pyi_out={out}",
        f"--grpc_python_out={out}",
        *PROTO_FILES,
    ]


def generate(out_dir: Path) -> list[Path]:
    """Generate into ``out_dir`` (the repository root in normal use); return the files."""
    out_dir = out_dir.resolve()
    out = "." if out_dir == ROOT else str(out_dir)
    (out_dir / "proto").mkdir(parents=True, exist_ok=True)
    result = subprocess.run(command(out=out), cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"protoc failed ({result.returncode}):\n{result.stderr.strip()}")
    (out_dir / EMPTY_GRPC_MODULE).unlink(missing_ok=True)
    paths = [out_dir / name for name in GENERATED]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise RuntimeError(f"protoc did not write {missing}")
    return paths


def main() -> int:
    for path in generate(ROOT):
        print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
