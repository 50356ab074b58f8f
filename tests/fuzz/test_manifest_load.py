"""Fuzzing the agent's reading of a bundle manifest: a slot whose ``manifest.json`` has any
key replaced, removed or given a value of another JSON type either loads and passes or fails
its self-test, or is refused with :class:`ModelLoadError` — never another exception.

The bundle signature normally keeps such manifests away (only the hub's key signs); this is
the defence behind it: a hub bug, or a slot file changed on the device's disk.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent import ModelLoadError, check_slot, health_check, load_slot
from tests.fixtures.bundles import BuiltBundle

JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.sampled_from(["onnx", "tflite", "int8", "fp32", "model.int8.onnx", "../x", "/etc"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
DELETE = object()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every key path in a JSON value (dict keys and list indexes)."""
    out: list[tuple[Any, ...]] = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for index, item in enumerate(value[:4]):  # sketches and profiles are long: the head
            out += _paths(item, (*prefix, index))
    return out


def _set(manifest: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(manifest, dict):
        copy = dict(manifest)
        if value is DELETE and not rest:
            copy.pop(head, None)
        else:
            copy[head] = _set(manifest[head], rest, value)
        return copy
    copy = list(manifest)
    if value is DELETE and not rest:
        del copy[head]
    else:
        copy[head] = _set(manifest[head], rest, value)
    return copy


@pytest.fixture(scope="module")
def slot(digits_bundle: BuiltBundle, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return digits_bundle.copy_slot(tmp_path_factory.mktemp("fuzzed") / "slot")


@pytest.fixture(scope="module")
def paths(digits_bundle: BuiltBundle) -> list[tuple[Any, ...]]:
    return _paths(digits_bundle.manifest)


def _check(slot: Path, manifest: Any, verify_files: bool) -> None:
    (slot / "manifest.json").write_text(json.dumps(manifest))
    try:
        model = load_slot(slot, verify_files=verify_files)
    except ModelLoadError as exc:
        assert str(exc)  # refused, with a message
    else:
        report = health_check(model)
        assert report.reason
        if report.ok and model.labels and model.task == "classification":
            assert len(model.labels) == 10  # a model that passes can name its predictions
    loaded, report = check_slot(slot)
    assert (loaded is not None) or not report.ok


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), verify_files=st.booleans())
def test_a_mutated_manifest_loads_or_is_refused_with_a_clear_error(
    digits_bundle: BuiltBundle,
    slot: Path,
    paths: list[tuple[Any, ...]],
    data: st.DataObject,
    verify_files: bool,
) -> None:
    manifest: Any = digits_bundle.manifest
    for _ in range(data.draw(st.integers(1, 3), label="changes")):
        path = data.draw(st.sampled_from(paths), label="path")
        value = data.draw(st.one_of(st.just(DELETE), JSON), label="value")
        try:
            manifest = _set(manifest, path, value)
        except (KeyError, IndexError, TypeError):  # an earlier change removed the path
            continue
    _check(slot, manifest, verify_files)


@pytest.mark.parametrize("whole", [None, [], "manifest", 7, {"variants": "onnx"}])
def test_a_manifest_of_the_wrong_shape_is_refused(slot: Path, whole: Any) -> None:
    (slot / "manifest.json").write_text(json.dumps(whole))
    with pytest.raises(ModelLoadError):
        load_slot(slot)


def test_the_untouched_slot_still_loads(digits_bundle: BuiltBundle, tmp_path: Path) -> None:
    fresh = Path(shutil.copytree(digits_bundle.slot_dir, tmp_path / "slot"))
    assert health_check(load_slot(fresh, verify_files=True)).ok
