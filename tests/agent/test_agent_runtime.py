"""Agent runtimes, variant choice, slot loading and the health check, on a real bundle."""

from __future__ import annotations

import dataclasses
import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_agent._runtime import (
    LiteRTRuntime,
    ModelLoadError,
    NoUsableVariant,
    OnnxRuntime,
    Runtime,
    check_slot,
    choose_variant,
    detect_runtimes,
    health_check,
    load_slot,
)
from tests.fixtures.bundles import BuiltBundle

ALL = ["onnx:int8", "onnx:fp32", "tflite:int8", "tflite:fp32"]


def _has(bundle: BuiltBundle, prefer: str) -> bool:
    fmt, precision = prefer.split(":")
    return any(
        v["format"] == fmt and v["precision"] == precision for v in bundle.manifest["variants"]
    )


def _require(bundle: BuiltBundle, prefer: str) -> None:
    if not _has(bundle, prefer):
        pytest.skip(f"the bundle has no {prefer} variant (litert-torch not installed)")


def _random_linear_onnx(path: Path, *, inputs: int, outputs: int) -> None:
    """Another model with the same input/output signature (tests may use onnx)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.normal(size=(inputs, outputs)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "w"], ["output"])],
        "other",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", inputs])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", outputs])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.save(model, str(path))


def test_choose_variant_follows_preference_and_runtimes(digits_bundle: BuiltBundle) -> None:
    manifest = digits_bundle.manifest
    chosen = choose_variant(manifest)
    assert (chosen["format"], chosen["precision"]) == ("onnx", "int8")
    fp32 = choose_variant(manifest, prefer=["onnx:fp32", "onnx:int8"])
    assert fp32["file"] == "model.fp32.onnx"
    any_onnx = choose_variant(manifest, prefer=["onnx"])  # any precision, manifest order
    assert any_onnx["format"] == "onnx"
    if _has(digits_bundle, "tflite:int8"):
        only_tflite = choose_variant(manifest, available_runtimes={"tflite"})
        assert only_tflite["file"] == "model.int8.tflite"
    with pytest.raises(NoUsableVariant, match="runtimes available here: none"):
        choose_variant(manifest, available_runtimes=set())
    onnx_only = {**manifest, "variants": [v for v in manifest["variants"] if v["format"] == "onnx"]}
    with pytest.raises(NoUsableVariant, match=r"it has onnx:fp32, onnx:int8.*tflite"):
        choose_variant(onnx_only, prefer=["tflite:int8"], available_runtimes={"onnx", "tflite"})
    with pytest.raises(ValueError, match="unknown variant preference"):
        choose_variant(manifest, prefer=["gguf:q4"])
    assert "onnx" in detect_runtimes()


@pytest.mark.parametrize("prefer", ALL)
def test_runtimes_reproduce_the_bundles_expected_outputs(
    digits_bundle: BuiltBundle, prefer: str
) -> None:
    _require(digits_bundle, prefer)
    model = load_slot(digits_bundle.slot_dir, prefer=[prefer])
    assert isinstance(model.runtime, Runtime)
    assert isinstance(model.runtime, OnnxRuntime if prefer.startswith("onnx") else LiteRTRuntime)
    with np.load(digits_bundle.slot_dir / "samples.npz") as npz:
        raw, expected = npz["self_test"], npz[f"expected:{model.variant_file}"]
    outputs = model.runtime.run(model.preprocess.apply(raw))  # 16 rows: chunked for TFLite
    assert outputs.dtype == np.float32 and outputs.shape == expected.shape
    np.testing.assert_allclose(outputs, expected, atol=1e-5)
    assert model.labels == tuple(str(i) for i in range(10))
    assert (model.task, model.ref) == ("classification", "digits-mlp@1")
    report = health_check(model)
    assert report.ok, report.reason
    assert report.max_abs_diff <= 1e-5 and 0 < report.latency_ms < 50


def test_health_check_fails_when_expected_outputs_are_altered(
    digits_bundle: BuiltBundle, tmp_path: Path
) -> None:
    slot = digits_bundle.copy_slot(tmp_path / "slot")
    with np.load(slot / "samples.npz") as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays["expected:model.int8.onnx"] = arrays["expected:model.int8.onnx"] + 1.0
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    (slot / "samples.npz").write_bytes(buffer.getvalue())
    report = health_check(load_slot(slot))
    assert not report.ok
    assert "tolerance 0.5" in report.reason and report.max_abs_diff == pytest.approx(1.0)
    with pytest.raises(ModelLoadError, match=r"samples\.npz does not match"):
        load_slot(slot, verify_files=True)


def test_health_check_fails_when_the_model_file_is_another_model(
    digits_bundle: BuiltBundle, tmp_path: Path
) -> None:
    slot = digits_bundle.copy_slot(tmp_path / "slot")
    _random_linear_onnx(slot / "model.fp32.onnx", inputs=64, outputs=10)
    model, report = check_slot(slot, prefer=["onnx:fp32"])
    assert model is not None and not report.ok
    assert "tolerance 0.001" in report.reason and report.max_abs_diff > 1
    _, verified = check_slot(slot, prefer=["onnx:fp32"], verify_files=True)
    assert not verified.ok and "model.fp32.onnx does not match the manifest" in verified.reason


def test_health_check_fails_over_the_latency_budget(digits_bundle: BuiltBundle) -> None:
    model = load_slot(digits_bundle.slot_dir)
    tiny = dataclasses.replace(model, manifest={**model.manifest, "latency_budget_ms": 1e-6})
    report = health_check(tiny)
    assert not report.ok and "latency budget" in report.reason
    assert report.latency_ms > 1e-6 and report.max_abs_diff <= 1e-5
    assert health_check(tiny, check_latency=False).ok


def test_bad_slots_fail_the_check_without_raising(
    digits_bundle: BuiltBundle, tmp_path: Path
) -> None:
    model, report = check_slot(tmp_path / "nothing-here")
    assert model is None and not report.ok and "manifest.json" in report.reason

    garbage = digits_bundle.copy_slot(tmp_path / "garbage")
    (garbage / "model.int8.onnx").write_bytes(b"not a model")
    model, report = check_slot(garbage)
    assert model is None and "load failed" in report.reason and "model.int8.onnx" in report.reason

    no_samples = digits_bundle.copy_slot(tmp_path / "no-samples")
    (no_samples / "samples.npz").unlink()
    model, report = check_slot(no_samples)
    assert model is not None and not report.ok and "self-test could not run" in report.reason

    class Exploding:
        name = "exploding"

        def run(self, x: np.ndarray) -> np.ndarray:
            raise RuntimeError("kaboom")

    loaded = load_slot(digits_bundle.slot_dir)
    report = health_check(dataclasses.replace(loaded, runtime=Exploding()))
    assert not report.ok and "kaboom" in report.reason

    three_labels = health_check(dataclasses.replace(loaded, labels=("a", "b", "c")))
    assert not three_labels.ok and "3 labels for 10 outputs" in three_labels.reason

    malformed = {**loaded.manifest, "latency_budget_ms": "soon"}
    report = health_check(dataclasses.replace(loaded, manifest=malformed))
    assert not report.ok and "health check failed" in report.reason

    five_classes = digits_bundle.copy_slot(tmp_path / "five-classes")
    _random_linear_onnx(five_classes / "model.int8.onnx", inputs=64, outputs=5)
    _, report = check_slot(five_classes)
    assert not report.ok and "shape [16, 5], expected [16, 10]" in report.reason


def test_agent_modules_import_neither_hub_nor_torch_nor_onnx() -> None:
    code = (
        "import sys\n"
        "import edge_agent._runtime, edge_agent._predictor, edge_agent._http, edge_agent.batch\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('hub', 'torch', 'onnx'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
