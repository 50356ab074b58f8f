"""Inference: the agent's ``Predictor.predict`` at batch 1 against a bare onnxruntime
``InferenceSession.run`` on the same int8 ONNX file, in the same run.

Trains digits-cnn (default architecture, a few epochs: latency does not depend on training
length) and digits-mlp on a throw-away hub, packages them, and times, interleaved round by
round, medians of many rounds, one intra-op thread everywhere:

* ``predictor``: ``Predictor.predict(raw_record)``: shape check, the bundle's transform,
  the runtime, argmax label, id, latency; no observer (``predictor_observed``: one no-op
  observer);
* ``bare``: ``session.run([output], {input: x})`` on an already transformed record (the
  strictest baseline; ``bare_run_none`` is ``session.run(None, ...)``);
* fp32 against int8 for both, and TFLite: ``LiteRTRuntime.run`` and a predictor on the
  int8 TFLite variant against a bare ``TFLiteRunner.run``.

* ``agent_predict``: ``Agent.predict`` on a running agent (telemetry on: each call is handed
  to the window aggregator, which the agent's tick runs in its own thread).

Ratio: digits-cnn int8 ``Agent.predict`` / bare; target <= 1.15.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from bench._result import BenchResult
from edge_agent._predictor import Predictor
from edge_agent._runtime import LiteRTRuntime, LoadedModel, load_slot
from edge_agent.agent import Agent
from edge_agent.settings import AgentSettings
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.datasets import service as datasets
from hub.packaging.service import package
from hub.tables import create_all
from hub.training.service import train
from model_packager.bundle import open_bundle
from model_packager.litert import TFLiteRunner
from model_packager.signing import generate_private_key, public_key_bytes

MODELS = {"digits-cnn": {"epochs": 3}, "digits-mlp": {"epochs": 3}}
ROUNDS = 10_000  # timed calls per side of each pair
BLOCK = 50
WARMUP_BLOCKS = 8
TARGET = 1.15
KEYS: dict[str, Any] = {}  # hub root -> the key that signed its bundles


@contextlib.contextmanager
def _running_agent(bundle: Path, *, key: Any, root: Path) -> Iterator[Agent]:
    """A real Agent serving ``bundle``: its event loop (telemetry tick, MQTT reconnects to an
    absent broker) runs in a background thread while the caller calls ``predict``."""
    root.mkdir(parents=True, exist_ok=True)
    key_file = root / "hub.pub"
    key_file.write_text(public_key_bytes(key).hex())
    settings = AgentSettings(
        device_id="bench",
        data_dir=root / "agent",
        mqtt_url="mqtt://127.0.0.1:9",
        public_key=key_file,
        telemetry_window_s=1.0,
        reconnect_initial_s=5.0,
    )
    agent = Agent(settings=settings)
    info = agent.slots.install(bundle, public_key=key.public_key())
    agent.slots.activate(info.name)
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(agent.start(), loop).result(timeout=60)
    try:
        yield agent
    finally:
        asyncio.run_coroutine_threadsafe(agent.stop(), loop).result(timeout=60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


def _build_slots(root: Path) -> dict[str, Path]:
    engine = make_engine(f"sqlite:///{root / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=root / "artifacts")
    key = generate_private_key()
    slots: dict[str, Path] = {}
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    for spec, params in MODELS.items():
        train(engine, store, spec_name=spec, dataset="digits@1", params=params)
        outcome = package(engine, store, ref=f"{spec}@1", signing_key=key)
        bundle = open_bundle(outcome.path, public_key=key.public_key())
        slot = root / spec
        bundle.extract_to(slot)
        (slot / "manifest.json").write_bytes(bundle.manifest_bytes)
        (slot / "bundle.zip").write_bytes(outcome.path.read_bytes())
        slots[spec] = slot
    KEYS[str(root)] = key
    engine.dispose()
    return slots


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _pair(a: Callable[[], object], b: Callable[[], object]) -> tuple[float, float]:
    """Median microseconds per call of ``a`` and ``b``: blocks of ``BLOCK`` calls of one then
    the other (ABBA order, so drift and position effects cancel), each call timed."""
    times: tuple[list[float], list[float]] = ([], [])
    clock = time.perf_counter
    for block in range(-WARMUP_BLOCKS, 2 * ROUNDS // BLOCK):
        first = block % 4 in (0, 3)
        for side, call in ((0, a), (1, b)) if first else ((1, b), (0, a)):
            for _ in range(BLOCK):
                start = clock()
                call()
                elapsed = clock() - start
                if block >= 0:
                    times[side].append(elapsed)
    return statistics.median(times[0]) * 1e6, statistics.median(times[1]) * 1e6


def _measure(slot: Path) -> dict[str, Any]:
    models: dict[str, LoadedModel] = {
        p: load_slot(slot, prefer=[f"onnx:{p}"], threads=1) for p in ("int8", "fp32")
    }
    with np.load(slot / "samples.npz") as npz:
        record = np.asarray(npz["self_test"][0])
    x = models["int8"].preprocess.apply(record[np.newaxis])
    bare: dict[str, Callable[[], object]] = {}
    pairs: dict[str, tuple[Callable[[], object], Callable[[], object]]] = {}
    for precision, model in models.items():
        session = _session(slot / model.variant_file)
        in_name, out_name = session.get_inputs()[0].name, session.get_outputs()[0].name
        predictor = Predictor(model=model, device_id="bench")
        observed = Predictor(model=model, device_id="bench")
        observed.add_observer(lambda *_args: None)
        # partial() on both sides: the same (C-level) call overhead
        bare[precision] = partial(session.run, [out_name], {in_name: x})
        pairs[f"predictor_{precision}"] = (bare[precision], partial(predictor.predict, record))
        pairs[f"predictor_observed_{precision}"] = (
            bare[precision],
            partial(observed.predict, record),
        )
        pairs[f"bare_run_none_{precision}"] = (
            bare[precision],
            partial(session.run, None, {in_name: x}),
        )
    pairs["int8_vs_fp32_bare"] = (bare["fp32"], bare["int8"])
    with _running_agent(
        slot / "bundle.zip", key=KEYS[str(slot.parent)], root=slot / "run"
    ) as agent:
        agent_pair = {"agent_predict_int8": (bare["int8"], partial(agent.predict, record))}
        measured = _timed(agent_pair)
        telemetry = {"windows_queued": len(agent.queue)}
    if (slot / "model.int8.tflite").exists():
        runner = TFLiteRunner((slot / "model.int8.tflite").read_bytes())
        wrapped = LiteRTRuntime(slot / "model.int8.tflite")
        tflite = Predictor(model=load_slot(slot, prefer=["tflite:int8"]), device_id="bench")
        pairs["litert_runtime_int8"] = (partial(runner.run, x), partial(wrapped.run, x))
        pairs["predictor_tflite_int8"] = (partial(runner.run, x), partial(tflite.predict, record))
        pairs["tflite_vs_onnx_int8_bare"] = (bare["int8"], partial(runner.run, x))
    out: dict[str, Any] = _timed(pairs)
    for key, values in measured.items():
        out[key].update(values)
    out["agent_telemetry"] = telemetry
    return out


def _timed(
    pairs: Mapping[str, tuple[Callable[[], object], Callable[[], object]]],
) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {"baseline_us": {}, "measured_us": {}, "ratio": {}}
    for name, (baseline, measured) in pairs.items():
        base_us, measured_us = _pair(baseline, measured)
        out["baseline_us"][name] = round(base_us, 2)
        out["measured_us"][name] = round(measured_us, 2)
        out["ratio"][name] = round(measured_us / base_us, 3)
    return out


def run() -> BenchResult:
    with tempfile.TemporaryDirectory() as tmp:
        slots = _build_slots(Path(tmp))
        details: dict[str, Any] = {spec: _measure(slot) for spec, slot in slots.items()}
    details["rounds"] = ROUNDS
    details["threads"] = 1
    details["onnxruntime"] = ort.__version__
    for spec in MODELS:
        r, base = details[spec]["ratio"], details[spec]["baseline_us"]
        print(
            f"  {spec:11s} agent.predict/bare int8 x{r['agent_predict_int8']:.3f}  "
            f"predictor/bare int8 x{r['predictor_int8']:.3f} "
            f"(bare {base['predictor_int8']:.1f} us)  fp32 x{r['predictor_fp32']:.3f}  "
            f"observed int8 x{r['predictor_observed_int8']:.3f}  "
            f"int8/fp32 bare x{r['int8_vs_fp32_bare']:.2f}  "
            f"LiteRTRuntime/TFLiteRunner x{r.get('litert_runtime_int8', float('nan')):.3f}"
        )
    ratio = float(details["digits-cnn"]["ratio"]["agent_predict_int8"])
    return BenchResult(
        name="inference",
        baseline="bare onnxruntime InferenceSession.run([output], {input: x}) on the same "
        "int8 ONNX (digits-cnn), 1 thread, already-transformed input, interleaved, same run",
        ratio=ratio,
        target=f"<= {TARGET} (Agent.predict at batch 1 with telemetry on: transform, run, "
        "label, id, telemetry hand-off; windows aggregated by the agent's tick)",
        met=ratio <= TARGET,
        details=details,
    )
