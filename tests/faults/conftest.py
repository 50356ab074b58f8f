"""One hub world for the fault suite: a data dir with a trained model, signed bundles in the
artifact store and a real gRPC artifact server whose downloads a test may slow or pause."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.faults._world import FaultHub, build_fault_hub


@pytest.fixture(scope="package")
def fault_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultHub]:
    world = build_fault_hub(tmp_path_factory.mktemp("fault-hub"))
    try:
        yield world
    finally:
        world.close()
