"""The serialized model a registry version holds: spec, params, transform and weights.

A ``torch.save`` dict loadable with ``weights_only=True`` (tensors and plain values only).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from hub.specs import ModelSpec, get_spec
from model_packager.preprocess import Preprocess

FORMAT = "edgeloop.model/1"


@dataclass(frozen=True, kw_only=True)
class TrainedModel:
    spec: ModelSpec
    params: dict[str, Any]
    num_outputs: int
    labels: list[str] | None
    preprocess: Preprocess
    model: nn.Module


def dump_model(trained: TrainedModel) -> bytes:
    buffer = io.BytesIO()
    torch.save(
        {
            "format": FORMAT,
            "spec": trained.spec.name,
            "params": dict(trained.params),
            "num_outputs": trained.num_outputs,
            "labels": list(trained.labels) if trained.labels is not None else None,
            "preprocess": trained.preprocess.model_dump(mode="json"),
            "state_dict": trained.model.state_dict(),
        },
        buffer,
    )
    return buffer.getvalue()


def load_model(data: bytes) -> TrainedModel:
    state = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"not an edgeloop model artifact (expected format {FORMAT})")
    spec = get_spec(state["spec"])
    model = spec.build(params=state["params"], num_outputs=state["num_outputs"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    return TrainedModel(
        spec=spec,
        params=state["params"],
        num_outputs=state["num_outputs"],
        labels=state["labels"],
        preprocess=Preprocess.model_validate(state["preprocess"]),
        model=model,
    )
