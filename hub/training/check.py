"""The model code's CI: does a spec build, train, export, quantize and pass its own tests?

``check_spec("digits-cnn")`` (or ``"package.module:Class"``) runs, on a tiny sample of the
spec's natural data source: load, build from defaults, a forward pass (batch shape and
finite outputs), a few training steps (the loss must be finite and decrease), ONNX export,
parity against torch, static int8 quantization and one run of the int8 graph, and the spec's
own ``test_cases(model) -> list[str]`` if it defines them (failure messages; empty = pass).
Every step is caught: a broken spec gives a failed report naming the step and the error.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from hub.core.errors import EdgeloopError
from hub.datasets.records import RecordSet
from hub.datasets.sources import load_source
from hub.specs import ModelSpec, get_spec
from hub.training.loop import seed_everything

SAMPLE_SIZE = 128
TRAIN_STEPS = 25
FALLBACK_SOURCES = {"digits-cnn": "sklearn:digits", "digits-mlp": "sklearn:digits"}
TASK_SOURCES = {"classification": "sklearn:digits", "reconstruction": "synthetic:vibration"}


@dataclass(frozen=True, kw_only=True)
class CheckItem:
    name: str
    passed: bool
    detail: str
    seconds: float


@dataclass(kw_only=True)
class CheckReport:
    spec: str
    code_version: str
    passed: bool = True
    checks: list[CheckItem] = field(default_factory=list)

    @property
    def failed_step(self) -> str | None:
        return next((c.name for c in self.checks if not c.passed), None)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec,
            "code_version": self.code_version,
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
        }

    def render_text(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED at {self.failed_step}"
        lines = [f"model code check {self.spec} ({self.code_version or 'unknown'}): {verdict}"]
        for c in self.checks:
            mark = "ok  " if c.passed else "FAIL"
            lines.append(f"  {mark} {c.name:<16} {c.seconds:6.2f}s  {c.detail}")
        return "\n".join(lines)


class CheckFailed(EdgeloopError):
    """A step ran but its result is wrong (as opposed to raising)."""


def check_source(spec: ModelSpec) -> str:
    """The data source a spec is checked on: its ``check_source``, else by name, else by task."""
    source = getattr(spec, "check_source", None)
    if isinstance(source, str) and source:
        return source
    return FALLBACK_SOURCES.get(spec.name) or TASK_SOURCES[spec.task]


def _sample(records: RecordSet, size: int) -> RecordSet:
    if len(records) <= size:
        return records
    index = np.random.default_rng(0).choice(len(records), size=size, replace=False)
    mask = np.zeros(len(records), dtype=bool)
    mask[index] = True
    return records.subset(mask)


@dataclass(kw_only=True)
class _State:
    spec: ModelSpec | None = None
    params: dict[str, Any] = field(default_factory=dict)
    records: RecordSet | None = None
    x: npt.NDArray[np.float32] = field(default_factory=lambda: np.zeros(0, dtype=np.float32))
    y: npt.NDArray[np.int64] | None = None
    input_shape: tuple[int, ...] = ()
    num_outputs: int = 0
    model: torch.nn.Module | None = None
    onnx: bytes = b""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def _loss(st: _State, model: torch.nn.Module) -> torch.Tensor:
    assert st.spec is not None
    x = torch.from_numpy(st.x)
    y = torch.from_numpy(np.array(st.y)) if st.y is not None else None
    return st.spec.loss(model(x), x, y)


def _build(st: _State) -> str:
    assert st.spec is not None
    spec = st.spec
    st.params = spec.params()
    source = check_source(spec)
    records = _sample(load_source(source), SAMPLE_SIZE)
    preprocess = spec.preprocess(records)
    st.x = preprocess.apply(records.features)
    st.y = spec.targets(records)
    st.input_shape = tuple(preprocess.input_shape)
    st.num_outputs = spec.num_outputs(records)
    seed_everything(0)
    st.model = spec.build(params=st.params, num_outputs=st.num_outputs)
    n_params = sum(p.numel() for p in st.model.parameters())
    return f"{len(records)} records of {source}, input {list(st.input_shape)}, {n_params} params"


def _expected_shape(st: _State, batch: int) -> tuple[int, ...]:
    assert st.spec is not None
    if st.spec.task == "classification":
        return (batch, st.num_outputs)
    return (batch, *st.input_shape)


def _forward(st: _State) -> str:
    assert st.model is not None
    st.model.eval()
    with torch.no_grad():
        for batch in (8, 1):
            out = st.model(torch.from_numpy(st.x[:batch]))
            _require(isinstance(out, torch.Tensor), f"forward returned {type(out).__name__}")
            expected = _expected_shape(st, batch)
            _require(
                tuple(out.shape) == expected,
                f"output shape {list(out.shape)} for a batch of {batch}, expected {list(expected)}",
            )
            _require(bool(torch.isfinite(out).all()), "forward produced non-finite values")
    return f"output {list(_expected_shape(st, 8))} for a batch of 8 (and batch 1)"


def _train(st: _State) -> str:
    assert st.model is not None
    model = st.model
    lr = float(st.params.get("lr", 1e-3))
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    model.eval()
    with torch.no_grad():
        before = float(_loss(st, model))
    _require(np.isfinite(before), f"initial loss is {before}")
    model.train()
    for step in range(TRAIN_STEPS):
        optimizer.zero_grad(set_to_none=True)
        loss = _loss(st, model)
        value = float(loss.detach())
        _require(bool(np.isfinite(value)), f"loss is {value} at step {step}")
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        after = float(_loss(st, model))
    _require(np.isfinite(after), f"loss after training is {after}")
    _require(after < before, f"loss did not decrease: {before:.4g} -> {after:.4g}")
    return f"loss {before:.4g} -> {after:.4g} in {TRAIN_STEPS} steps (lr {lr:g})"


def _export(st: _State) -> str:
    from model_packager.onnx_export import export_onnx

    assert st.model is not None
    st.onnx = export_onnx(st.model, input_shape=st.input_shape, opset=18)
    return f"{len(st.onnx)} bytes"


def _parity(st: _State) -> str:
    from model_packager.onnx_export import check_parity

    assert st.model is not None and st.spec is not None
    report = check_parity(
        st.model,
        st.onnx,
        inputs=st.x[:64],
        task="classification" if st.spec.task == "classification" else "regression",
    )
    agreement = "" if report.argmax_agreement is None else f", argmax {report.argmax_agreement:.0%}"
    return f"max |diff| {report.max_abs_diff:.3g}{agreement}"


def _quantize(st: _State) -> str:
    import onnxruntime as ort

    from model_packager.quantize import quantize_int8

    int8 = quantize_int8(st.onnx, calibration=st.x, input_name="input")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(int8, options, providers=["CPUExecutionProvider"])
    out = np.asarray(session.run(None, {"input": st.x[:16]})[0])
    expected = _expected_shape(st, 16)
    _require(tuple(out.shape) == expected, f"int8 output {list(out.shape)}, expected {expected}")
    _require(bool(np.isfinite(out).all()), "int8 model produced non-finite values")
    return f"{len(int8)} bytes ({len(int8) / max(len(st.onnx), 1):.0%} of fp32), runs"


def _test_cases(st: _State) -> str:
    assert st.spec is not None and st.model is not None
    cases = getattr(st.spec, "test_cases", None)
    if not callable(cases):
        return "the spec defines no test_cases"
    st.model.eval()
    failures = list(cases(st.model))
    _require(not failures, "; ".join(str(f) for f in failures))
    return "spec test cases pass"


STEPS: list[tuple[str, Callable[[_State], str]]] = [
    ("build", _build),
    ("forward", _forward),
    ("train", _train),
    ("onnx_export", _export),
    ("onnx_parity", _parity),
    ("quantize_int8", _quantize),
    ("spec_test_cases", _test_cases),
]


def _describe(exc: BaseException) -> str:
    if isinstance(exc, CheckFailed):
        return str(exc)
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:500]


def check_spec(spec_name: str) -> CheckReport:
    """Run the model code CI on ``spec_name``; never raises for a broken spec."""
    report = CheckReport(spec=spec_name, code_version="")
    st = _State()
    start = time.perf_counter()
    try:
        st.spec = get_spec(spec_name)
        report.spec = st.spec.name
        report.code_version = st.spec.code_version()
    except Exception as exc:
        report.passed = False
        report.checks.append(
            CheckItem(
                name="load",
                passed=False,
                detail=_describe(exc),
                seconds=time.perf_counter() - start,
            )
        )
        return report
    report.checks.append(
        CheckItem(name="load", passed=True, detail=type(st.spec).__qualname__, seconds=0.0)
    )
    for name, step in STEPS:
        start = time.perf_counter()
        try:
            detail, passed = step(st), True
        except Exception as exc:
            detail, passed = _describe(exc), False
        report.checks.append(
            CheckItem(name=name, passed=passed, detail=detail, seconds=time.perf_counter() - start)
        )
        if not passed:
            report.passed = False
            break
    return report
