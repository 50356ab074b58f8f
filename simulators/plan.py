"""Which device is in which group and which devices drift: deterministic from the scenario."""

from __future__ import annotations

import numpy as np

from simulators.scenario import DriftSpec, GroupSpec, Scenario

DEFAULT_GROUP = GroupSpec(name="default", fraction=1.0)


def device_ids(scenario: Scenario, count: int) -> list[str]:
    width = max(5, len(str(count)))
    return [f"{scenario.fleet.id_prefix}-{i:0{width}d}" for i in range(count)]


def assign_groups(scenario: Scenario, count: int) -> list[GroupSpec]:
    """Contiguous blocks by the groups' fractions (rounded); the rest go to ``default``."""
    out: list[GroupSpec] = []
    for group in scenario.groups:
        out.extend([group] * round(group.fraction * count))
    out = out[:count]
    out.extend([DEFAULT_GROUP] * (count - len(out)))
    return out


def assign_drifts(
    scenario: Scenario, groups: list[GroupSpec], rng: np.random.Generator
) -> list[list[DriftSpec]]:
    """Per device, the drifts it gets: ``fraction`` of the eligible devices, chosen at random."""
    chosen: list[list[DriftSpec]] = [[] for _ in groups]
    for drift in scenario.drift:
        eligible = [i for i, g in enumerate(groups) if drift.group in (None, g.name)]
        take = round(drift.fraction * len(eligible))
        for i in rng.permutation(eligible)[:take].tolist():
            chosen[i].append(drift)
    return chosen


def prefer_for(group: GroupSpec) -> tuple[str, ...]:
    onnx = ("onnx:int8", "onnx:fp32")
    tflite = ("tflite:int8", "tflite:fp32")
    return tflite + onnx if group.runtime == "tflite" else onnx + tflite


def held_out_classes(scenario: Scenario) -> frozenset[int]:
    return frozenset(c for d in scenario.drift if d.kind == "unseen_class" for c in d.classes)
