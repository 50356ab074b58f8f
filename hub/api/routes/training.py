"""Long operations: train a spec on a dataset version; package a model version.

Both run synchronously in the request (a worker thread); the CLI shows a spinner. A job
queue with progress events is the scale-out path once training moves to GPU workers.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field, StrictFloat

from hub.api.deps import NAME_PATTERN, ContextDep, NamePath, SelectorPath
from hub.api.public import PackageOutcomePublic, TrainOutcomePublic
from hub.tables import JsonInt
from hub.tables.registry import DATASET_REF_PATTERN

# hub.training and hub.packaging.service pull torch and onnx (seconds of import): imported in the
# handlers, so `hub serve` and the API start without them.

training_runs = APIRouter(prefix="/training-runs", tags=["training"])
packaging = APIRouter(prefix="/models", tags=["training"])


class TrainRequest(BaseModel):
    spec: str = Field(
        description="built-in spec (digits-cnn, digits-mlp, vibration-ae) or module:Class"
    )
    dataset: str = Field(description="NAME@VERSION or NAME@latest", pattern=DATASET_REF_PATTERN)
    params: dict[str, Any] = Field(default_factory=dict)
    seed: JsonInt = Field(default=0, ge=0, le=2**32 - 1)
    model_name: str | None = Field(default=None, pattern=NAME_PATTERN)
    device: str = "auto"
    nproc: JsonInt = Field(default=1, ge=1, le=64, description="DDP processes (torchrun) when > 1")


class PackageRequest(BaseModel):
    formats: list[Literal["onnx", "tflite"]] | None = Field(
        default=None, min_length=1, description="onnx, tflite (default: both)"
    )
    max_accuracy_drop: StrictFloat = Field(default=1.0, ge=0, le=100)


@training_runs.post("", status_code=201, response_model=TrainOutcomePublic)
def train_model(body: TrainRequest, ctx: ContextDep) -> TrainOutcomePublic:
    from hub.training.service import outcome_json as train_json
    from hub.training.service import train

    outcome = train(
        ctx.engine,
        ctx.store,
        spec_name=body.spec,
        dataset=body.dataset,
        params=body.params,
        seed=body.seed,
        model_name=body.model_name,
        device=body.device,
        nproc=body.nproc,
    )
    return TrainOutcomePublic.model_validate(train_json(outcome))


@packaging.post(
    "/{name}/versions/{selector}/package",
    status_code=201,
    response_model=PackageOutcomePublic,
)
def package_version(
    name: NamePath, selector: SelectorPath, body: PackageRequest, ctx: ContextDep
) -> PackageOutcomePublic:
    from hub.packaging.service import PackageOptions, outcome_json, package
    from hub.security.keys import bundle_signing_key

    options = PackageOptions(
        formats=tuple(body.formats) if body.formats else ("onnx", "tflite"),
        formats_explicit=body.formats is not None,
        max_accuracy_drop=body.max_accuracy_drop,
    )
    outcome = package(
        ctx.engine,
        ctx.store,
        ref=f"{name}@{selector}",
        signing_key=bundle_signing_key(ctx.settings),
        options=options,
    )
    return PackageOutcomePublic.model_validate(outcome_json(outcome))


#: the module's routes, one router per path root
router = APIRouter()
router.include_router(training_runs)
router.include_router(packaging)
