"""Runtimes, model loading and the health check a slot must pass before it serves.

A :class:`Runtime` runs preprocessed float32 batches (``[N, *input_shape]``) and returns
float32 outputs. :class:`OnnxRuntime` wraps an onnxruntime CPU session, :class:`LiteRTRuntime`
the LiteRT interpreter (:class:`model_packager.litert.TFLiteRunner`, fixed batch: rows go
through in chunks). :func:`load_slot` reads an installed slot (``manifest.json`` plus the
payload files), picks a variant with :func:`choose_variant` and loads it;
:func:`health_check` (``edge_agent._runtime_health``, re-exported here) runs the bundle's
self-test records and times batch-1 inference. The types both build on, :class:`Runtime` and
:class:`LoadedModel`, live in ``edge_agent._model`` (re-exported here).
Nothing here imports torch, onnx or the hub.
"""

from __future__ import annotations

import hashlib
import importlib.util
import threading
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent._manifests import parsed_manifest
from edge_agent._model import LoadedModel, Runtime
from edge_agent._runtime_health import LATENCY_RUNS, HealthReport, health_check
from edge_agent.errors import ModelLoadError, NoUsableVariant
from model_packager.preprocess import Preprocess

__all__ = [
    "DEFAULT_PREFER",
    "LATENCY_RUNS",
    "HealthReport",
    "LiteRTRuntime",
    "LoadedModel",
    "ModelLoadError",
    "NoUsableVariant",
    "OnnxRuntime",
    "Runtime",
    "check_slot",
    "choose_variant",
    "detect_runtimes",
    "health_check",
    "load_slot",
]

DEFAULT_PREFER: tuple[str, ...] = ("onnx:int8", "onnx:fp32", "tflite:int8", "tflite:fp32")
# The modules each format needs; TFLite takes ai-edge-litert or, failing that, tflite-runtime.
_RUNTIME_MODULES: dict[str, tuple[str, ...]] = {
    "onnx": ("onnxruntime",),
    "tflite": ("ai_edge_litert", "tflite_runtime"),
}
_INSTALL_HINT = "pip install 'edgeloop[agent]'"


class OnnxRuntime:
    """An onnxruntime CPU session (``threads`` intra-op threads, all graph optimizations)."""

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or not outputs:
            raise ModelLoadError(
                f"{path.name}: expected one input and at least one output, "
                f"got {len(inputs)} input(s) and {len(outputs)} output(s)"
            )
        self.input_name: str = inputs[0].name
        self._output_names: list[str] = [outputs[0].name]  # built once, not per call
        # The public InferenceSession.run re-validates the feed's names on every call (about
        # 1 us, a tenth of a small model's batch-1 latency); the names are checked once
        # above, so call the binding underneath when this onnxruntime has it.
        fast = getattr(getattr(self.session, "_sess", None), "run", None)
        self._run: Callable[..., Any] = fast if callable(fast) else self._public_run
        #: ``(binding, output names, input name)``: the predictor calls
        #: ``binding(names, {input: x}, None)[0]`` itself (what :meth:`run` does)
        self.direct: tuple[Callable[..., Any], list[str], str] = (
            self._run,
            self._output_names,
            self.input_name,
        )
        self.name = f"onnxruntime:{path.name}"

    def _public_run(self, names: list[str], feed: dict[str, np.ndarray], _options: None) -> Any:
        return self.session.run(names, feed)

    def run(self, x: np.ndarray) -> np.ndarray:
        result: np.ndarray = self._run(self._output_names, {self.input_name: x}, None)[0]
        return result


class LiteRTRuntime:
    """The LiteRT interpreter via :class:`~model_packager.litert.TFLiteRunner`.

    TFLite models have a fixed batch (1 for the packager's): a batch of N rows is N invokes
    (the runner chunks and pads). Calls are serialized (an interpreter is not thread-safe).
    ``threads`` is recorded only: ``TFLiteRunner`` builds its interpreter with the
    runtime's default thread count.
    """

    def __init__(self, path: Path, *, threads: int = 1) -> None:
        from model_packager.litert import TFLiteRunner

        self.threads = threads
        self.runner = TFLiteRunner(path.read_bytes())
        self.name = f"litert:{path.name}"
        self._lock = threading.Lock()  # one interpreter: set_tensor/invoke/get_tensor

    def run(self, x: np.ndarray) -> np.ndarray:
        with self._lock:
            return self.runner.run(x)


_FACTORIES: dict[str, Callable[..., Runtime]] = {"onnx": OnnxRuntime, "tflite": LiteRTRuntime}

# One runtime per identical model file in this process, shared by every slot that holds it:
# a simulated fleet of thousands of agents (one process) loads one session per bundle, not
# one per device. Keyed by the file's own sha256 (what is on disk, not what the manifest
# claims), format and threads; entries go when no loaded model holds them any more. Both
# runtimes are safe to share: onnxruntime sessions run concurrently, LiteRT calls lock.
_SHARED: weakref.WeakValueDictionary[tuple[str, str, int], Runtime] = weakref.WeakValueDictionary()
_SHARED_LOCK = threading.Lock()


def _shared_runtime(fmt: str, path: Path, *, threads: int) -> Runtime:
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    key = (fmt, digest, threads)
    with _SHARED_LOCK:
        runtime = _SHARED.get(key)
        if runtime is None:
            runtime = _FACTORIES[fmt](path, threads=threads)
            _SHARED[key] = runtime
        return runtime


def shared_runtime_count() -> int:
    """How many distinct runtimes this process holds (the simulator's sharing check)."""
    with _SHARED_LOCK:
        return len(_SHARED)


def detect_runtimes() -> set[str]:
    """The variant formats this device can run (by importability, without importing)."""
    return {
        fmt
        for fmt, modules in _RUNTIME_MODULES.items()
        if any(importlib.util.find_spec(m) is not None for m in modules)
    }


def _parse_prefer(entry: str) -> tuple[str, str | None]:
    fmt, _, precision = entry.partition(":")
    if fmt not in _RUNTIME_MODULES:
        raise ValueError(
            f"unknown variant preference {entry!r}: use FORMAT[:PRECISION] with FORMAT "
            f"in {sorted(_RUNTIME_MODULES)}, e.g. 'onnx:int8'"
        )
    return fmt, precision or None


def choose_variant(
    manifest: dict[str, Any],
    *,
    prefer: Sequence[str] = DEFAULT_PREFER,
    available_runtimes: set[str] | None = None,
) -> dict[str, Any]:
    """The first of ``prefer`` (``"format:precision"``, or ``"format"`` for any precision)
    that the manifest lists and whose runtime is importable (``available_runtimes``, default
    :func:`detect_runtimes`, is a set of formats); :class:`NoUsableVariant` otherwise."""
    runnable = detect_runtimes() if available_runtimes is None else available_runtimes
    listed_variants = manifest.get("variants") or []
    variants: list[dict[str, Any]] = [
        v
        for v in (listed_variants if isinstance(listed_variants, list) else [])
        if isinstance(v, dict)
    ]
    for entry in prefer:
        fmt, precision = _parse_prefer(entry)
        if fmt not in runnable:
            continue
        for variant in variants:
            if variant.get("format") == fmt and precision in (None, variant.get("precision")):
                return variant
    listed = [f"{v.get('format')}:{v.get('precision')}" for v in variants] or ["none"]
    raise NoUsableVariant(
        f"no usable variant in {manifest.get('model', 'the bundle')}: it has "
        f"{', '.join(listed)}; preferred {', '.join(prefer) or 'nothing'}; runtimes available "
        f"here: {', '.join(sorted(runnable)) or 'none'} (install them with: {_INSTALL_HINT})"
    )


def _check_digest(slot_dir: Path, manifest: dict[str, Any], name: str) -> None:
    listed = (manifest.get("files") or {}).get(name)
    if not listed:
        raise ModelLoadError(f"{name} is not listed in the manifest's files")
    digest = hashlib.sha256()
    with (slot_dir / name).open("rb") as fh:
        while chunk := fh.read(1 << 20):
            digest.update(chunk)
    if "sha256:" + digest.hexdigest() != listed.get("digest"):
        raise ModelLoadError(f"{name} does not match the manifest's digest (changed on disk)")


def load_slot(
    slot_dir: Path,
    *,
    prefer: Sequence[str] = DEFAULT_PREFER,
    threads: int = 1,
    verify_files: bool = False,
) -> LoadedModel:
    """Load an installed slot (``manifest.json`` + payload). ``verify_files`` re-hashes the
    chosen model file and the self-test samples against the manifest's digests (the bundle
    was verified at install; this catches later changes on disk). Raises
    :class:`ModelLoadError` (:class:`NoUsableVariant` when nothing fits this device)."""
    slot_dir = Path(slot_dir)
    try:
        manifest = parsed_manifest((slot_dir / "manifest.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{slot_dir}: cannot read manifest.json: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ModelLoadError(f"{slot_dir}: manifest.json is not a JSON object")
    variant = choose_variant(manifest, prefer=prefer)
    try:
        preprocess = Preprocess.model_validate(manifest["input"]["preprocess"])
        task = str(manifest.get("task", "classification"))
        labels = (manifest.get("output") or {}).get("labels")
        if labels is not None and not isinstance(labels, list):
            raise ModelLoadError(f"{slot_dir}: output.labels is not a list")
        path = slot_dir / str(variant["file"])
        if verify_files:
            _check_digest(slot_dir, manifest, path.name)
            self_test = (manifest.get("self_test") or {}).get("file")
            if self_test:
                _check_digest(slot_dir, manifest, str(self_test))
        runtime = _shared_runtime(str(variant["format"]), path, threads=threads)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(
            f"{slot_dir}: cannot load {variant.get('file')}: {type(exc).__name__}: {exc}"
        ) from exc
    return LoadedModel(
        slot_dir=slot_dir,
        manifest=manifest,
        variant=variant,
        runtime=runtime,
        preprocess=preprocess,
        labels=tuple(str(label) for label in labels) if labels else None,
        task=task,
    )


def check_slot(
    slot_dir: Path,
    *,
    prefer: Sequence[str] = DEFAULT_PREFER,
    threads: int = 1,
    verify_files: bool = False,
) -> tuple[LoadedModel | None, HealthReport]:
    """:func:`load_slot` then :func:`health_check`; a load failure is a failed report."""
    try:
        model = load_slot(slot_dir, prefer=prefer, threads=threads, verify_files=verify_files)
    except Exception as exc:
        return None, HealthReport(ok=False, reason=f"load failed: {exc}")
    return model, health_check(model)
