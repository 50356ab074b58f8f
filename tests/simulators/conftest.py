"""A small signed ONNX bundle served by a real gRPC artifact server, for fleet tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from simulators.bundles import BundleHost, HostedBundle


@dataclass(frozen=True, kw_only=True)
class SimHub:
    host: BundleHost
    good: HostedBundle
    key: Any
    public_key_file: Path
    bundle_path: Path


def _build(root: Path) -> tuple[bytes, Any]:
    from hub.core.artifacts import FileArtifactStore
    from hub.core.db import make_engine, session_scope
    from hub.datasets import service as datasets
    from hub.packaging.service import PackageOptions, package
    from hub.tables import create_all
    from hub.training.service import train
    from model_packager.signing import generate_private_key

    engine = make_engine(f"sqlite:///{root / 'hub.db'}")
    try:
        create_all(engine)
        store = FileArtifactStore(root=root / "artifacts")
        with session_scope(engine) as s:
            datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
        train(
            engine,
            store,
            spec_name="digits-mlp",
            dataset="digits@1",
            params={"epochs": 3, "hidden": 32},
        )
        key = generate_private_key()
        outcome = package(
            engine,
            store,
            ref="digits-mlp@1",
            signing_key=key,
            options=PackageOptions(formats=("onnx",), formats_explicit=True),
        )
    finally:
        engine.dispose()
    return outcome.path.read_bytes(), key


@pytest.fixture(scope="session")
def sim_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHub]:
    from model_packager.signing import public_key_bytes

    root = tmp_path_factory.mktemp("sim-hub")
    raw, key = _build(root)
    key_file = root / "hub.pub"
    key_file.write_bytes(public_key_bytes(key).hex().encode())
    bundle_path = root / "digits-mlp.bundle"
    bundle_path.write_bytes(raw)
    with BundleHost(root=root / "served") as host:
        yield SimHub(
            host=host,
            good=host.add_bytes(raw),
            key=key,
            public_key_file=key_file,
            bundle_path=bundle_path,
        )
