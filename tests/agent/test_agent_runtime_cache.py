"""One runtime per identical model file in a process (what lets a simulated fleet scale)."""

from __future__ import annotations

import gc
from pathlib import Path

import pytest

from edge_agent._runtime import ModelLoadError, load_slot, shared_runtime_count
from tests.fixtures.bundles import BuiltBundle


def test_identical_slots_share_one_runtime_and_changed_files_do_not(
    digits_bundle: BuiltBundle, tmp_path: Path
) -> None:
    a = load_slot(digits_bundle.copy_slot(tmp_path / "a"), prefer=("onnx:int8",))
    b = load_slot(digits_bundle.copy_slot(tmp_path / "b"), prefer=("onnx:int8",))
    assert a.runtime is b.runtime and a.slot_dir != b.slot_dir
    other_variant = load_slot(digits_bundle.slot_dir, prefer=("onnx:fp32",))
    assert other_variant.runtime is not a.runtime
    more_threads = load_slot(digits_bundle.slot_dir, prefer=("onnx:int8",), threads=2)
    assert more_threads.runtime is not a.runtime

    # a file changed on disk (same manifest) is not served from the cache
    c_dir = digits_bundle.copy_slot(tmp_path / "c")
    (c_dir / str(a.variant["file"])).write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_slot(c_dir, prefer=("onnx:int8",))

    count = shared_runtime_count()
    del a, b, other_variant, more_threads
    gc.collect()
    assert shared_runtime_count() < count  # released when no model holds it
