"""The predictor -> telemetry hand-off: calls drained by field, one group per model (a deploy
may switch models between two ticks), remembered for feedback, recorded for the window."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from edge_agent._handoff import Handoff, PendingCalls, record_calls
from edge_agent._predictor import Predictor
from edge_agent._recent import RecentPredictions
from edge_agent._runtime import load_slot
from tests.fixtures.bundles import BuiltBundle


class _Window:
    def __init__(self) -> None:
        self.batches: list[dict[str, Any]] = []

    def record(
        self,
        *,
        raw: np.ndarray,
        outputs: np.ndarray,
        model_inputs: np.ndarray | None = None,
        latency_ms: npt.NDArray[np.float64],
        prediction_ids: Sequence[str],
    ) -> None:
        self.batches.append(
            {"raw": raw, "outputs": outputs, "latency_ms": latency_ms, "ids": list(prediction_ids)}
        )


def test_drained_calls_are_grouped_by_model_remembered_and_recorded(
    digits_bundle: BuiltBundle,
) -> None:
    old = load_slot(digits_bundle.slot_dir)
    new = dataclasses.replace(old, manifest={**old.manifest, "version": "2"})
    raw = np.load(digits_bundle.slot_dir / "samples.npz")["self_test"][:6]
    handoff = Handoff(recent=RecentPredictions(capacity=100), limit=1000)
    predictor = Predictor(model=old, device_id="d")
    predictor.set_sink(handoff.sink)
    first = [predictor.predict(raw[0]), predictor.predict(raw[1:3])]  # a record, a batch
    predictor.swap(new)  # a deploy within one tick
    second = [predictor.predict(raw[3:6])]
    predictor.swap(old)  # and a rollback
    first.append(predictor.predict(raw[0]))

    groups = handoff.drain()
    assert len(groups) == 2 and groups[0].served_by is old and groups[1].served_by is new
    old_calls, new_calls = groups
    assert old_calls.prediction_ids() == [i for p in first for i in p.ids]
    assert new_calls.prediction_ids() == second[0].ids
    assert old_calls.n == (1, 2, 1)
    assert old_calls.latency_ms == tuple(p.latency_ms for p in first)
    assert not handoff.sink and handoff.drain() == []

    remembered = handoff.recent.get(second[0].ids[1])
    assert remembered is not None and remembered.version == "2"
    label = handoff.recent.get(first[1].ids[1])
    assert label is not None and label.version == str(old.version)
    assert label.label == int(np.argmax(first[1].outputs[1]))

    window = _Window()
    record_calls(window, old_calls)
    (batch,) = window.batches
    assert batch["raw"].shape == (4, *raw.shape[1:])
    np.testing.assert_array_equal(batch["raw"], np.concatenate([raw[0:1], raw[1:3], raw[0:1]]))
    np.testing.assert_array_equal(
        batch["outputs"], np.concatenate([p.outputs.reshape(len(p.ids), -1) for p in first])
    )
    assert batch["ids"] == old_calls.prediction_ids()
    # each record of a call counts at the call's latency split evenly
    assert batch["latency_ms"][1] == batch["latency_ms"][2] == first[1].latency_ms / 2


def test_pending_calls_fields_follow_the_tuples_the_predictor_appends() -> None:
    # the order of CallTuple is the order of PendingCalls' fields
    assert PendingCalls._fields == (
        "model",
        "raw",
        "inputs",
        "outputs",
        "latency_ms",
        "prefix",
        "first",
        "n",
        "stacked_outputs",  # not the predictor's: set by drain
    )


def test_drain_takes_at_most_max_calls_oldest_first(digits_bundle: BuiltBundle) -> None:
    """The agent's tick drains in chunks (the GIL handed over between them)."""
    model = load_slot(digits_bundle.slot_dir)
    raw = np.load(digits_bundle.slot_dir / "samples.npz")["self_test"][:5]
    handoff = Handoff(recent=RecentPredictions(capacity=100), limit=1000)
    predictor = Predictor(model=model, device_id="d")
    predictor.set_sink(handoff.sink)
    served = [predictor.predict(r) for r in raw]
    (first,) = handoff.drain(max_calls=2)
    assert list(first.prediction_ids()) == [i for p in served[:2] for i in p.ids]
    assert len(handoff.sink) == 3 and handoff.recent.get(served[2].ids[0]) is None
    (rest,) = handoff.drain(max_calls=10)
    assert list(rest.prediction_ids()) == [i for p in served[2:] for i in p.ids]
    assert handoff.recent.get(served[4].ids[0]) is not None
