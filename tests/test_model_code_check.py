"""The model code CI: built-in specs pass, broken specs fail at the right step."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from edgeloop_cli.model_code import app
from hub.specs import get_spec
from hub.training.check import CheckReport, check_source, check_spec

STEPS = [
    "load",
    "build",
    "forward",
    "train",
    "onnx_export",
    "onnx_parity",
    "quantize_int8",
    "spec_test_cases",
]


@pytest.mark.parametrize("name", ["digits-mlp", "digits-cnn", "vibration-ae"])
def test_builtin_specs_pass(name: str) -> None:
    report = check_spec(name)
    assert report.passed, report.render_text()
    assert [c.name for c in report.checks] == STEPS
    assert report.spec == name and report.code_version.startswith("sha256:")
    assert all(c.seconds >= 0 for c in report.checks)
    assert "PASSED" in report.render_text()


def test_check_source_fallbacks() -> None:
    assert check_source(get_spec("digits-cnn")) == "sklearn:digits"
    assert check_source(get_spec("vibration-ae")) == "synthetic:vibration"
    assert check_source(get_spec("tests.broken_specs:FailingTestCasesSpec")) == "sklearn:digits"


def _failed(report: CheckReport) -> tuple[str | None, str]:
    assert not report.passed
    failed = [c for c in report.checks if not c.passed]
    assert len(failed) == 1 and report.checks[-1] is failed[0]
    return report.failed_step, failed[0].detail


@pytest.mark.parametrize(
    ("spec", "step", "words"),
    [
        ("tests.broken_specs:WrongShapeSpec", "forward", "output shape [10]"),
        ("tests.broken_specs:NanLossSpec", "train", "nan"),
        ("tests.broken_specs:FailingTestCasesSpec", "spec_test_cases", "expected 11 classes"),
        ("tests.broken_specs:NotASpec", "load", "not a ModelSpec"),
        ("tests.no_such_module:Spec", "load", "cannot load model spec"),
        ("no-such-spec", "load", "unknown model spec"),
    ],
)
def test_broken_specs_fail_at_the_right_step(spec: str, step: str, words: str) -> None:
    report = check_spec(spec)
    failed_step, detail = _failed(report)
    assert failed_step == step, report.render_text()
    assert words in detail
    assert f"FAILED at {step}" in report.render_text()


def test_spec_test_cases_that_pass() -> None:
    report = check_spec("tests.broken_specs:PassingTestCasesSpec")
    assert report.passed, report.render_text()
    assert report.checks[-1].detail == "spec test cases pass"


def test_cli_json_and_exit_code_for_a_broken_spec() -> None:
    result = CliRunner().invoke(app, ["check", "tests.broken_specs:NanLossSpec", "--json"])
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(data) == {"spec", "code_version", "passed", "checks"}
    assert data["passed"] is False and data["spec"] == "broken-nan-loss"
    assert data["checks"][-1]["name"] == "train" and data["checks"][-1]["passed"] is False
    assert {"name", "passed", "detail", "seconds"} <= set(data["checks"][0])


def test_cli_text_for_a_passing_spec() -> None:
    result = CliRunner().invoke(app, ["check", "digits-mlp"])
    assert result.exit_code == 0, result.output
    assert "PASSED" in result.stdout
