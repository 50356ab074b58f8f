"""``pip install edgeloop[agent]`` stays light: no torch, no hub server dependencies."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HEAVY = [
    "torch",
    "onnx",
    "onnxscript",
    "litert_torch",
    "torchao",
    "fastapi",
    "starlette",
    "uvicorn",
    "sqlmodel",
    "sqlalchemy",
    "psycopg",
    "httpx",
    "scipy",
    "sklearn",
    "pandas",
    "pyarrow",
    "optuna",
    "amqtt",
    "jax",
    "boto3",  # the hub's S3 store; the agent downloads presigned URLs with urllib
    "botocore",
]


def test_agent_extra_declares_no_heavy_dependency() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = project["dependencies"] + project["optional-dependencies"]["agent"]
    names = {d.split("==")[0].split("[")[0].split(">")[0].lower() for d in declared}
    heavy = {"torch", "onnx", "fastapi", "sqlmodel", "scipy", "litert-torch", "httpx", "boto3"}
    assert not names & heavy
    assert {"onnxruntime", "ai-edge-litert", "aiomqtt", "grpcio", "cryptography"} <= names


def test_agent_imports_and_runs_without_heavy_packages() -> None:
    script = textwrap.dedent(
        f"""
        import importlib.abc, sys
        HEAVY = {HEAVY!r}

        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in HEAVY:
                    raise ImportError(f"blocked heavy import: {{name}}")
                return None

        sys.meta_path.insert(0, Block())
        import edge_agent.agent, edge_agent.batch, model_packager, model_packager.litert
        from edgeloop_cli import main
        assert main(["agent", "--help"]) == 0
        assert main(["agent", "run", "--help"]) == 0
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in HEAVY)
        assert not loaded, loaded
        print("light")
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("light")
