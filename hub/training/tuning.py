"""Hyperparameter search with Optuna, the study kept in the hub's own database.

Each trial trains with :func:`hub.training.loop.fit` directly (no run tracking, no
registry) on the dataset version's train split and scores the val split; the single-metric
search prunes unpromising trials with a median pruner. The best parameters are then trained
once more through :func:`hub.training.service.train`, so the tuned model is a tracked run
and a registry version like any other.

Several workers may share one study: it lives in the hub database (``load_if_exists``), so
start ``tune`` with the same ``study_name`` on as many processes as you like.

A spec can declare its own space as a class variable ``search_space``: a mapping from
parameter name to ``("log", low, high)``, ``("float", low, high)``, ``("int", low, high)``
or ``("choice", [options...])``; without one, a space is derived from its ``defaults``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from sqlalchemy.engine import Engine

from hub.core.artifacts import ArtifactStore
from hub.core.db import session_scope, sqlalchemy_url
from hub.core.errors import InvalidInput
from hub.datasets import service as datasets
from hub.specs import ModelSpec, SpecNotFound, get_spec
from hub.training.loop import EpochResult, TrainConfig, fit, seed_everything
from hub.training.service import train

SIZE = "size"
METRIC_ALIAS = "metric"  # the spec's primary metric, whatever it is called
PARETO_SIZE_FACTOR = 2.0

SpaceEntry = tuple[Any, ...]


@dataclass(frozen=True, kw_only=True)
class TrialReport:
    """One finished trial, for progress display (``on_trial``)."""

    number: int
    state: str  # "complete" | "pruned" | "fail"
    metric: str  # what value is: "val_" + the spec's primary metric, e.g. "val_accuracy"
    value: float | None  # the primary metric on the val split (last epoch reported)
    size: int | None  # parameter count
    params: dict[str, Any]


@dataclass(frozen=True, kw_only=True)
class TuneResult:
    study_name: str
    best_params: dict[str, Any]  # the full parameter set the registered model trained with
    best_value: float  # the chosen trial's val primary metric
    metric: str  # what best_value is: "val_" + the spec's primary metric
    trials: int  # trials in the study (all workers)
    pruned: int
    run_id: str
    model: str
    version: int


def default_space(spec: ModelSpec, *, max_epochs: int | None = None) -> dict[str, SpaceEntry]:
    """A space derived from ``spec.defaults`` (only the parameters the spec has)."""
    d = spec.defaults
    space: dict[str, SpaceEntry] = {}
    if "lr" in d:
        space["lr"] = ("log", 1e-4, 3e-2)
    if "weight_decay" in d:
        space["weight_decay"] = ("log", 1e-6, 1e-2)
    for width in ("hidden", "channels"):
        if width in d:
            base = int(d[width])
            space[width] = ("choice", sorted({max(1, base // 2), base, 2 * base}))
    if "dropout" in d:
        space["dropout"] = ("float", 0.0, 0.5)
    return space


def _check_space(spec: ModelSpec, space: Mapping[str, SpaceEntry]) -> None:
    unknown = set(space) - set(spec.defaults)
    if unknown:
        raise InvalidInput(
            f"spec {spec.name}: search space names unknown parameter(s) {sorted(unknown)}"
        )
    for name, entry in space.items():
        kind = entry[0] if entry else None
        if kind not in ("log", "float", "int", "choice") or len(entry) != (
            2 if kind == "choice" else 3
        ):
            raise InvalidInput(
                f"search space entry {name}={entry!r}: use ('log'|'float'|'int', low, high) "
                "or ('choice', [options])"
            )


def suggest(
    spec: ModelSpec,
    trial: optuna.Trial,
    *,
    space: Mapping[str, SpaceEntry] | None = None,
    max_epochs: int | None = None,
) -> dict[str, Any]:
    """The trial's parameters: ``space``, else ``spec.search_space``, else the default space.

    Parameters outside the space keep their defaults; ``max_epochs`` overrides ``epochs``.
    """
    chosen = space if space is not None else getattr(spec, "search_space", None)
    if chosen is None:
        chosen = default_space(spec)
    _check_space(spec, chosen)
    values: dict[str, Any] = {}
    for name, entry in chosen.items():
        kind = entry[0]
        if kind == "choice":
            values[name] = trial.suggest_categorical(name, list(entry[1]))
        elif kind == "int":
            values[name] = trial.suggest_int(name, int(entry[1]), int(entry[2]))
        else:
            values[name] = trial.suggest_float(
                name, float(entry[1]), float(entry[2]), log=kind == "log"
            )
    if max_epochs is not None and "epochs" in spec.defaults:
        values["epochs"] = max_epochs
    return values


def optuna_storage_url(url: str) -> str:
    """The hub database URL in the form SQLAlchemy (and so Optuna) wants."""
    return sqlalchemy_url(url)


def _storage(url: str) -> optuna.storages.RDBStorage:
    url = optuna_storage_url(url)
    kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    )
    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)


def _metric_name(spec: ModelSpec, objectives: Sequence[str]) -> str:
    if not objectives or len(objectives) > 2 or (len(objectives) == 2 and objectives[1] != SIZE):
        raise InvalidInput(f"objectives {list(objectives)!r}: use (METRIC,) or (METRIC, 'size')")
    metric = objectives[0]
    if metric not in (spec.primary_metric, METRIC_ALIAS):
        raise InvalidInput(
            f"spec {spec.name} is tuned on its primary metric {spec.primary_metric!r} "
            f"(or 'metric'), not {metric!r}"
        )
    return spec.primary_metric


def pareto_choice(trials: Sequence[optuna.trial.FrozenTrial]) -> optuna.trial.FrozenTrial:
    """The best metric among Pareto trials whose size is within 2x the smallest."""
    smallest = min(t.values[1] for t in trials)
    near = [t for t in trials if t.values[1] <= PARETO_SIZE_FACTOR * smallest]
    return max(near, key=lambda t: (t.values[0], -t.values[1], -t.number))


def tune(
    engine: Engine,
    store: ArtifactStore,
    *,
    spec_name: str,
    dataset: str,
    trials: int,
    storage_url: str | None,
    study_name: str | None = None,
    seed: int = 0,
    objectives: Sequence[str] = ("accuracy",),
    timeout_s: float | None = None,
    on_trial: Callable[[TrialReport], None] | None = None,
    params: Mapping[str, Any] | None = None,
    search_space: Mapping[str, SpaceEntry] | None = None,
    max_epochs: int | None = None,
    pruner: optuna.pruners.BasePruner | None = None,
    model_name: str | None = None,
    device: str = "cpu",
) -> TuneResult:
    """Run ``trials`` more trials of the study, then train and register the best parameters.

    ``storage_url`` is the hub's database URL (``None``: the URL of ``engine``). ``params``
    are fixed overrides applied under every trial's suggestions.
    """
    if trials < 1:
        raise InvalidInput("trials must be at least 1")
    try:
        spec = get_spec(spec_name)
        fixed = spec.params(params)
    except (SpecNotFound, ValueError) as exc:
        raise InvalidInput(str(exc)) from exc
    metric = _metric_name(spec, objectives)
    multi = len(objectives) == 2
    with session_scope(engine) as s:
        version = datasets.get_version(s, ref=dataset)
        splits = {
            name: datasets.load_split(s, store, version=version, split=name)
            for name in ("train", "val")
        }
    preprocess = spec.preprocess(splits["train"])
    x = {name: preprocess.apply(rs.features) for name, rs in splits.items()}
    y = {name: spec.targets(rs) for name, rs in splits.items()}
    num_outputs = spec.num_outputs(splits["train"])

    url = storage_url or engine.url.render_as_string(hide_password=False)
    name = study_name or f"{spec.name}-{version.ref}-{'-'.join(objectives)}"
    storage = _storage(url)
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=None if multi else (pruner or optuna.pruners.MedianPruner()),
        directions=["maximize", "minimize"] if multi else ["maximize"],
        load_if_exists=True,
    )

    def objective(trial: optuna.Trial) -> float | tuple[float, float]:
        merged = {
            **fixed,
            **suggest(spec, trial, space=search_space, max_epochs=max_epochs),
        }
        seed_everything(seed)
        model = spec.build(params=merged, num_outputs=num_outputs)
        size = sum(p.numel() for p in model.parameters())
        trial.set_user_attr(SIZE, size)
        last: list[float] = []

        def report(result: EpochResult) -> None:
            value = result.val_metrics[metric]
            last.append(value)
            trial.set_user_attr(metric, value)
            if not multi:
                trial.report(value, step=result.epoch)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"epoch {result.epoch}: {metric} {value:.4g}")

        fit(
            spec=spec,
            model=model,
            train_x=x["train"],
            train_y=y["train"],
            val_x=x["val"],
            val_y=y["val"],
            config=TrainConfig.from_params(merged, seed=seed, device=device),
            on_epoch=report,
        )
        return (last[-1], float(size)) if multi else last[-1]

    def notify(_study: optuna.Study, frozen: optuna.trial.FrozenTrial) -> None:
        if on_trial is not None:
            value = frozen.user_attrs.get(metric)
            on_trial(
                TrialReport(
                    number=frozen.number,
                    state=frozen.state.name.lower(),
                    metric=f"val_{metric}",
                    value=None if value is None else float(value),
                    size=frozen.user_attrs.get(SIZE),
                    params=dict(frozen.params),
                )
            )

    try:
        study.optimize(objective, n_trials=trials, timeout=timeout_s, callbacks=[notify])
        done = study.get_trials(deepcopy=False)
        complete = [t for t in done if t.state == optuna.trial.TrialState.COMPLETE]
        if not complete:
            raise InvalidInput(f"study {name}: no trial completed (all pruned or failed)")
        best = pareto_choice(study.best_trials) if multi else study.best_trial
        best_value = float(best.values[0])
        pruned = sum(t.state == optuna.trial.TrialState.PRUNED for t in done)
    finally:
        storage.remove_session()
        storage.engine.dispose()

    best_params = {**fixed, **_trial_params(spec, best, max_epochs)}
    outcome = train(
        engine,
        store,
        spec_name=spec_name,
        dataset=version.ref,
        params=best_params,
        seed=seed,
        model_name=model_name,
        device=device,
    )
    mv = outcome.model_version
    assert mv is not None  # register=True always gives a version
    return TuneResult(
        study_name=name,
        best_params=spec.params(best_params),
        best_value=best_value,
        metric=f"val_{metric}",
        trials=len(done),
        pruned=pruned,
        run_id=outcome.run.id,
        model=mv.model_name,
        version=mv.version,
    )


def _trial_params(
    spec: ModelSpec,
    trial: optuna.trial.FrozenTrial,
    max_epochs: int | None,
) -> dict[str, Any]:
    values = dict(trial.params)
    if max_epochs is not None and "epochs" in spec.defaults:
        values["epochs"] = max_epochs
    return values


def result_json(result: TuneResult) -> dict[str, Any]:
    """The CLI contract's keys for ``edgeloop tune``."""
    return {
        "study": result.study_name,
        "best_params": result.best_params,
        "best_value": result.best_value,
        "metric": result.metric,  # what best_value is, e.g. "val_accuracy"
        "trials": result.trials,
        "pruned": result.pruned,
        "run_id": result.run_id,
        "model": result.model,
        "version": result.version,
    }
