"""``edgeloop tune``: an Optuna search stored in the hub's database, then train and register.

It runs where the hub's database is (``--data-dir``); start it on several machines with
the same ``--study`` and a shared PostgreSQL database to spread the trials.
"""

from __future__ import annotations

from typing import Annotated

import typer

from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli._quiet import native_stderr_captured
from edgeloop_cli.output import emit, metric_label, progress_bar
from hub.core.errors import InvalidInput

TUNE_COLUMNS = [
    "study",
    "best_value",
    "best_params",
    "trials",
    "pruned",
    "run_id",
    "model",
    "version",
]


def tune(
    ctx: typer.Context,
    spec: Annotated[
        str, typer.Option("--spec", help="digits-cnn, digits-mlp, vibration-ae, or module:Class")
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="NAME@VERSION or NAME@latest")],
    trials: Annotated[int, typer.Option(help="trials to run in this process", min=1)] = 20,
    objectives: Annotated[
        str,
        typer.Option(
            help="the spec's primary metric (or 'metric'), optionally ',size' for a "
            "metric/parameter-count Pareto search"
        ),
    ] = "accuracy",
    study: Annotated[
        str | None,
        typer.Option(help="study name, shared by every worker (default: spec-dataset-objectives)"),
    ] = None,
    as_json: JsonFlag = False,
    seed: Annotated[int, typer.Option(help="sampler and training seed")] = 0,
    max_epochs: Annotated[
        int | None, typer.Option("--max-epochs", help="epochs per trial (default: the spec's)")
    ] = None,
) -> None:
    """Search SPEC's hyperparameters on a dataset version; train and register the best."""
    t = target(ctx)
    if t.hub_url:
        raise InvalidInput("tuning runs where the hub's database is: use --data-dir")
    from edgeloop_cli.training import _local
    from hub.training.tuning import TrialReport, result_json
    from hub.training.tuning import tune as run_tuning

    chosen = tuple(o.strip() for o in objectives.split(",") if o.strip())
    settings, engine, store = _local(t)
    with native_stderr_captured(verbose=t.verbose), progress_bar(transient=as_json) as bar:
        task = bar.add_task(f"tuning {spec}", total=trials)
        best: list[float] = []

        def on_trial(report: TrialReport) -> None:
            if report.state == "complete" and report.value is not None:
                best.append(max([report.value, *best]))
            shown = f", best {metric_label(report.metric)} {best[-1]:.4g}" if best else ""
            bar.update(
                task,
                advance=1,
                description=f"tuning {spec}: trial {report.number} {report.state}{shown}",
            )

        outcome = run_tuning(
            engine,
            store,
            spec_name=spec,
            dataset=dataset,
            trials=trials,
            storage_url=settings.resolved_database_url,
            study_name=study,
            seed=seed,
            objectives=chosen,
            on_trial=on_trial,
            max_epochs=max_epochs,
        )
    engine.dispose()
    result = result_json(outcome)
    labels = {"best_value": f"best {metric_label(outcome.metric)}", "best_params": "best params"}
    emit(result, as_json=as_json, columns=TUNE_COLUMNS, labels=labels)
