"""Hyperparameter tuning: an Optuna study in the hub database, pruning, Pareto, registration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import optuna
import pytest
import typer
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from edgeloop_cli._client import Target
from edgeloop_cli.tuning import tune as tune_command
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import InvalidInput
from hub.datasets import service as datasets
from hub.registry import models as registry
from hub.registry import tracking
from hub.specs import get_spec
from hub.specs.digits import DigitsMLP
from hub.tables import create_all
from hub.training.tuning import (
    TrialReport,
    default_space,
    optuna_storage_url,
    pareto_choice,
    suggest,
    tune,
)

# lr down to 1e-6 makes some trials hopeless after one epoch: the pruner must catch them.
SPACE = {"lr": ("log", 1e-6, 3e-2), "hidden": ("choice", [32, 64])}


class NarrowMLP(DigitsMLP):
    search_space: ClassVar[dict[str, Any]] = {"lr": ("log", 1e-3, 1e-2)}


@pytest.fixture(autouse=True)
def _quiet_optuna() -> None:
    optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'hub.db'}"


@pytest.fixture
def hub(tmp_path: Path, db_url: str) -> Iterator[tuple[Engine, FileArtifactStore]]:
    engine = make_engine(db_url)
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    yield engine, store
    engine.dispose()


def test_study_in_hub_db_prunes_and_registers_the_best(
    hub: tuple[Engine, FileArtifactStore], db_url: str
) -> None:
    engine, store = hub
    reports: list[TrialReport] = []
    result = tune(
        engine,
        store,
        spec_name="digits-mlp",
        dataset="digits@latest",
        trials=8,
        storage_url=db_url,
        study_name="mlp-search",
        search_space=SPACE,
        max_epochs=4,
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        on_trial=reports.append,
    )
    assert result.study_name == "mlp-search" and result.trials == 8
    assert result.pruned >= 1
    assert [r.state for r in reports].count("pruned") == result.pruned
    study = optuna.load_study(study_name="mlp-search", storage=db_url)
    stored = study.get_trials()
    assert len(stored) == 8
    assert sum(t.state == optuna.trial.TrialState.PRUNED for t in stored) == result.pruned
    assert result.best_value == study.best_value
    assert result.best_params["lr"] == study.best_params["lr"]
    assert result.best_params["epochs"] == 4
    with session_scope(engine) as s:
        version = registry.get_version(s, ref=f"{result.model}@{result.version}")
        assert version.run_id == result.run_id
        run = tracking.get_run(s, run_id=result.run_id)
        assert {k: v for k, v in run.params.items() if k != "seed"} == result.best_params
        assert run.status == "finished"

    # A second worker joins the same study (load_if_exists) and adds its trials.
    again = tune(
        engine,
        store,
        spec_name="digits-mlp",
        dataset="digits@1",
        trials=2,
        storage_url=None,  # the engine's own URL: the same database
        study_name="mlp-search",
        search_space=SPACE,
        max_epochs=4,
        seed=1,
    )
    assert again.trials == 10 and again.version == result.version + 1


def test_multi_objective_picks_from_the_pareto_front(
    hub: tuple[Engine, FileArtifactStore], db_url: str
) -> None:
    engine, store = hub
    result = tune(
        engine,
        store,
        spec_name="digits-mlp",
        dataset="digits@1",
        trials=6,
        storage_url=db_url,
        objectives=("accuracy", "size"),
        search_space={"lr": ("log", 1e-3, 3e-2), "hidden": ("choice", [16, 32, 64, 128])},
        max_epochs=3,
    )
    assert result.pruned == 0 and result.trials == 6
    study = optuna.load_study(study_name=result.study_name, storage=db_url)
    front = study.best_trials
    chosen = pareto_choice(front)
    assert chosen.values[1] <= 2 * min(t.values[1] for t in front)
    assert result.best_value == chosen.values[0]
    assert result.best_params["hidden"] == chosen.params["hidden"]
    assert result.best_params["lr"] == chosen.params["lr"]


def test_pareto_choice_prefers_metric_within_twice_the_smallest() -> None:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in [(80.0, 100.0), (90.0, 190.0), (95.0, 250.0)]:
        study.add_trial(optuna.trial.create_trial(values=list(values)))
    assert pareto_choice(study.best_trials).values == [90.0, 190.0]


def test_bad_inputs_are_invalid_input(hub: tuple[Engine, FileArtifactStore], db_url: str) -> None:
    engine, store = hub
    common: dict[str, Any] = {"dataset": "digits@1", "trials": 1, "storage_url": db_url}
    with pytest.raises(InvalidInput):
        tune(engine, store, spec_name="no-such-spec", **common)
    with pytest.raises(InvalidInput):
        tune(engine, store, spec_name="digits-mlp", objectives=("latency",), **common)
    with pytest.raises(InvalidInput):
        tune(engine, store, spec_name="digits-mlp", search_space={"depth": ("int", 1, 3)}, **common)
    with pytest.raises(InvalidInput):
        tune(engine, store, spec_name="digits-mlp", params={"nope": 1}, **common)


def test_suggest_uses_the_spec_space_or_one_from_its_defaults() -> None:
    cnn = get_spec("digits-cnn")
    assert set(default_space(cnn)) == {"lr", "weight_decay", "hidden", "channels", "dropout"}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    values = suggest(cnn, study.ask(), max_epochs=2)
    assert values["channels"] in (16, 32, 64) and values["hidden"] in (64, 128, 256)
    assert 1e-4 <= values["lr"] <= 3e-2 and 0.0 <= values["dropout"] <= 0.5
    assert values["epochs"] == 2
    narrow = suggest(get_spec("tests.test_tuning:NarrowMLP"), study.ask())
    assert set(narrow) == {"lr"} and 1e-3 <= narrow["lr"] <= 1e-2


def test_postgres_urls_get_the_psycopg_driver() -> None:
    assert optuna_storage_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert optuna_storage_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert optuna_storage_url("sqlite:///x.db") == "sqlite:///x.db"


def _cli(target: Target) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def root(ctx: typer.Context) -> None:
        ctx.obj = target

    app.command("tune")(tune_command)
    return app


def test_cli_tunes_locally_and_refuses_a_remote_hub(tmp_path: Path) -> None:
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=data / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    engine.dispose()
    runner = CliRunner()
    args = ["tune", "--spec", "digits-mlp", "--dataset", "digits@1", "--trials", "2"]
    local = _cli(Target(data_dir=str(data), hub_url=None, token=None))
    out = runner.invoke(local, [*args, "--max-epochs", "2", "--study", "cli", "--json"])
    assert out.exit_code == 0, out.output
    body = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(body) == {
        "study",
        "best_params",
        "best_value",
        "metric",
        "trials",
        "pruned",
        "run_id",
        "model",
        "version",
    }
    assert body["study"] == "cli" and body["trials"] == 2 and body["version"] == 1
    assert body["metric"] == "val_accuracy"  # what best_value is
    remote = _cli(Target(data_dir=None, hub_url="http://hub:8000", token=None))
    refused = runner.invoke(remote, [*args, "--json"])
    assert isinstance(refused.exception, InvalidInput)
