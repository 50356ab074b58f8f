"""Train a spec on a dataset version, track the run, register the model.

Database work happens in short transactions around the training, never across it, so a
long run does not hold a lock on SQLite.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Engine

from hub.core.artifacts import ArtifactStore
from hub.core.db import session_scope
from hub.core.errors import InvalidInput
from hub.datasets import service as datasets
from hub.registry import models as registry
from hub.registry import tracking
from hub.specs import SpecNotFound, get_spec
from hub.tables import ModelVersion, TrainingRun
from hub.training.artifact import TrainedModel, dump_model, load_model
from hub.training.loop import (
    EpochResult,
    TrainConfig,
    fit,
    predict,
    resolve_device,
    seed_everything,
)

CANDIDATE = "candidate"


@dataclass(frozen=True, kw_only=True)
class TrainOutcome:
    run: TrainingRun
    model_version: ModelVersion | None
    metrics: dict[str, float]
    candidate: bool
    dataset_version: str


def train(
    engine: Engine,
    store: ArtifactStore,
    *,
    spec_name: str,
    dataset: str,
    params: Mapping[str, Any] | None = None,
    seed: int = 0,
    model_name: str | None = None,
    device: str = "auto",
    register: bool = True,
    on_epoch: Callable[[EpochResult], None] | None = None,
    checkpoint_dir: Path | None = None,
    nproc: int = 1,
    init_from: str | None = None,
) -> TrainOutcome:
    """Train, evaluate on the test split, register; ``candidate`` alias if good enough.

    ``init_from`` (``MODEL@VERSION`` of the same spec): fine-tune, starting from that
    version's weights and input transform instead of fresh ones (a retrain after drift keeps
    what the model knew and learns the new regime in fewer epochs).

    ``nproc > 1`` trains with that many DDP processes under ``torchrun`` (one per GPU, or gloo
    on CPU); the run, its metrics and the registered version are the same either way.
    """
    if nproc < 1:
        raise InvalidInput("nproc must be at least 1")
    if init_from is not None and nproc > 1:
        raise InvalidInput("fine-tuning (init_from) runs in one process; leave nproc at 1")
    try:
        spec = get_spec(spec_name)
        merged = spec.params(params)
    except (SpecNotFound, ValueError) as exc:
        raise InvalidInput(str(exc)) from exc
    start: TrainedModel | None = None
    with session_scope(engine) as s:
        if init_from is not None:
            previous = registry.get_version(s, ref=init_from)
            start = load_model(store.get_bytes(previous.artifact_digest))
            if start.spec.name != spec.name:
                raise InvalidInput(
                    f"cannot fine-tune {spec.name} from {init_from}: it is a {start.spec.name}"
                )
        version = datasets.get_version(s, ref=dataset)
        run = tracking.create_run(
            s,
            spec=spec.name,
            dataset=version.ref,
            code_version=spec.code_version(),
            params={
                **merged,
                "seed": seed,
                **({"nproc": nproc} if nproc > 1 else {}),
                **({"init_from": init_from} if init_from else {}),
            },
        )
        splits = {
            name: datasets.load_split(s, store, version=version, split=name)
            for name in ("train", "val", "test")
        }
    try:
        preprocess = start.preprocess if start else spec.preprocess(splits["train"])
        x = {name: preprocess.apply(rs.features) for name, rs in splits.items()}
        y = {name: spec.targets(rs) for name, rs in splits.items()}
        num_outputs = spec.num_outputs(splits["train"])
        seed_everything(seed)
        model = spec.build(params=merged, num_outputs=num_outputs)
        if start is not None:
            try:
                model.load_state_dict(start.model.state_dict())
            except RuntimeError as exc:  # other layer sizes (params, outputs): say so
                raise InvalidInput(
                    f"cannot fine-tune from {init_from}: its weights do not fit this model "
                    f"({str(exc).splitlines()[0]})"
                ) from exc
        config = TrainConfig.from_params(merged, seed=seed, device=device)

        def log_epoch(result: EpochResult) -> None:
            with session_scope(engine) as s:
                tracking.log_metric(
                    s, run_id=run.id, key="train_loss", value=result.train_loss, step=result.epoch
                )
                for key, value in result.val_metrics.items():
                    tracking.log_metric(
                        s, run_id=run.id, key=f"val_{key}", value=value, step=result.epoch
                    )
            if on_epoch is not None:
                on_epoch(result)

        if nproc > 1:
            from hub.training.launch import run_torchrun

            distributed, history = run_torchrun(
                spec_name=spec_name,
                train=splits["train"],
                val=splits["val"],
                params=merged,
                seed=seed,
                nproc=nproc,
            )
            for result in history:
                log_epoch(result)
            model, preprocess = distributed.model, distributed.preprocess
            x = {name: preprocess.apply(rs.features) for name, rs in splits.items()}
        else:
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = (checkpoint_dir or Path(tmp)) / f"{run.id}.ckpt"
                fit(
                    spec=spec,
                    model=model,
                    train_x=x["train"],
                    train_y=y["train"],
                    val_x=x["val"],
                    val_y=y["val"],
                    config=config,
                    on_epoch=log_epoch,
                    checkpoint=ckpt,
                )
        outputs = predict(model, x["test"], device=resolve_device("cpu"))
        metrics = {
            f"test_{k}": v
            for k, v in spec.evaluate(outputs=outputs, inputs=x["test"], targets=y["test"]).items()
        }
        trained = TrainedModel(
            spec=spec,
            params=merged,
            num_outputs=num_outputs,
            labels=list(splits["train"].label_names) if splits["train"].label_names else None,
            preprocess=preprocess,
            model=model,
        )
        blob = dump_model(trained)
    except BaseException as exc:
        with session_scope(engine) as s:
            tracking.finish_run(s, run_id=run.id, status="failed", error=repr(exc)[:2000])
        raise
    with session_scope(engine) as s:
        tracking.log_artifact(s, store, run_id=run.id, name="model", data=blob)
        finished = tracking.finish_run(s, run_id=run.id, metrics=metrics)
        passed = metrics[f"test_{spec.primary_metric}"] >= spec.min_metric
        model_version = None
        if register:
            model_version = registry.register_version(
                s, store, model_name=model_name or spec.name, run_id=run.id
            )
            if passed:
                registry.set_alias(
                    s,
                    model_name=model_version.model_name,
                    alias=CANDIDATE,
                    version=model_version.version,
                )
    return TrainOutcome(
        run=finished,
        model_version=model_version,
        metrics=metrics,
        candidate=passed and register,
        dataset_version=version.ref,
    )


def outcome_json(outcome: TrainOutcome) -> dict[str, Any]:
    """The CLI contract's keys for ``edgeloop train``."""
    mv = outcome.model_version
    return {
        "run_id": outcome.run.id,
        "model": mv.model_name if mv else None,
        "version": mv.version if mv else None,
        "metrics": outcome.metrics,
        "dataset_version": outcome.dataset_version,
        "code_version": outcome.run.code_version,
        "candidate": outcome.candidate,
        "params": outcome.run.params,
    }
