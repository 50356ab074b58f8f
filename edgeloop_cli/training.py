"""``edgeloop train`` and ``edgeloop package``: the long operations, with progress bars.

With ``--data-dir`` they run in this process (epoch bar, packaging steps); with ``--hub``
the hub runs them and the CLI waits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from edgeloop_cli._client import Target, connect
from edgeloop_cli._common import JsonFlag, parse_pairs, target
from edgeloop_cli._quiet import native_stderr_captured
from edgeloop_cli.output import emit, metric_label, progress, progress_bar, stderr

TRAIN_COLUMNS = ["run_id", "model", "version", "metrics", "dataset_version", "candidate"]


def _local(t: Target) -> Any:
    from hub.core.artifacts import open_store
    from hub.core.db import make_engine
    from hub.core.settings import load_settings
    from hub.tables import create_all

    settings = load_settings(data_dir=t.data_dir)
    engine = make_engine(settings.resolved_database_url)
    create_all(engine)
    return settings, engine, open_store(settings.resolved_artifact_url)


def train(
    ctx: typer.Context,
    spec: Annotated[
        str, typer.Option("--spec", help="digits-cnn, digits-mlp, vibration-ae, or module:Class")
    ],
    dataset: Annotated[str, typer.Option("--dataset", help="NAME@VERSION or NAME@latest")],
    param: Annotated[
        list[str] | None, typer.Option("--param", help="key=value override, repeatable")
    ] = None,
    seed: Annotated[int, typer.Option(help="random seed (same seed, same metrics)")] = 0,
    model_name: Annotated[
        str | None, typer.Option("--model", help="registry name (default: the spec)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda")] = "auto",
    nproc: Annotated[
        int, typer.Option(min=1, help="DDP processes under torchrun (one per GPU; gloo on CPU)")
    ] = 1,
    as_json: JsonFlag = False,
) -> None:
    """Train SPEC on a dataset version, track the run and register the model."""
    from hub.specs import param_value  # lazily: the specs import torch

    params = {k: param_value(v) for k, v in parse_pairs(param, what="param").items()}
    t = target(ctx)
    if t.hub_url:
        body = {
            "spec": spec,
            "dataset": dataset,
            "params": params,
            "seed": seed,
            "model_name": model_name,
            "device": device,
            "nproc": nproc,
        }
        with connect(t) as client, progress(f"training {spec} on the hub"):
            result = client.post("/training-runs", json=body)
    else:
        from hub.specs import get_spec
        from hub.training.service import outcome_json
        from hub.training.service import train as run_training

        _, engine, store = _local(t)
        epochs = int(get_spec(spec).params(params)["epochs"])
        with native_stderr_captured(verbose=t.verbose), progress_bar(transient=as_json) as bar:
            task = bar.add_task(f"training {spec}", total=epochs)

            def on_epoch(result: Any) -> None:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in result.val_metrics.items())
                bar.update(
                    task,
                    completed=result.epoch,
                    description=f"training {spec}: loss {result.train_loss:.4f}, val {shown}",
                )

            outcome = run_training(
                engine,
                store,
                spec_name=spec,
                dataset=dataset,
                params=params,
                seed=seed,
                model_name=model_name,
                device=device,
                on_epoch=on_epoch,
                nproc=nproc,
            )
        result = outcome_json(outcome)
    emit(result, as_json=as_json, columns=TRAIN_COLUMNS)


def package(
    ctx: typer.Context,
    ref: Annotated[str, typer.Argument(help="MODEL@VERSION (number, latest or alias)")],
    formats: Annotated[str | None, typer.Option(help="comma-separated: onnx,tflite")] = None,
    max_accuracy_drop: Annotated[
        float, typer.Option(help="int8 may lose at most this many points")
    ] = 1.0,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="also write the signed bundle (one ZIP file) here; a folder gets "
            "MODEL-VERSION.zip. Default: only the hub's artifact store (its path is printed)",
        ),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Package a model version into a signed bundle (int8 ONNX, TFLite) and register it.

    Prints the bundle's path (``bundle``): give it to ``edgeloop bundle verify`` or
    ``edgeloop agent predict-batch``."""
    chosen = [f.strip() for f in formats.split(",") if f.strip()] if formats else None
    t = target(ctx)
    if t.hub_url:
        name, _, selector = ref.partition("@")
        with connect(t) as client, progress(f"packaging {ref} on the hub"):
            result = client.post(
                f"/models/{name}/versions/{selector}/package",
                json={"formats": chosen, "max_accuracy_drop": max_accuracy_drop},
            )
    else:
        with native_stderr_captured(verbose=t.verbose), progress_bar(transient=as_json) as bar:
            task = bar.add_task(f"packaging {ref}", total=None)
            # imported here: LiteRT and TensorFlow log to fd 2 as they load
            from hub.packaging.service import PackageOptions, outcome_json
            from hub.packaging.service import package as run_package
            from hub.security.keys import bundle_signing_key

            settings, engine, store = _local(t)
            options = PackageOptions(
                formats=tuple(chosen or ("onnx", "tflite")),
                formats_explicit=chosen is not None,
                max_accuracy_drop=max_accuracy_drop,
            )
            outcome = run_package(
                engine,
                store,
                ref=ref,
                signing_key=bundle_signing_key(settings),
                options=options,
                on_step=lambda msg: bar.update(task, description=msg),
            )
        result = outcome_json(outcome)
        if "://" not in result["bundle"]:  # a folder store's file (else s3://bucket/key)
            result["bundle"] = str(Path(result["bundle"]).resolve())
    if out is not None:
        result["stored"] = result["bundle"]
        result["bundle"] = str(_write_bundle(t, result, out))
    for note in result.get("notes", []):
        stderr.print(f"[yellow]note[/]: {note}")
    if as_json:
        emit(result, as_json=True)
        return
    metric = metric_label(result.get("metric") or "test_accuracy")
    emit(
        result["variants"],
        as_json=False,
        key="variants",
        columns=["file", "precision", "size_bytes", "accuracy", "latency_ms_b1", "throughput_b64"],
        labels={
            "size_bytes": "size (bytes)",
            "accuracy": f"{metric} (%)",
            "latency_ms_b1": "latency, batch of 1 (ms)",
            "throughput_b64": "throughput, batches of 64 (records/s)",
        },
    )
    where = " on the hub's machine (--out FILE writes a copy here)" if t.hub_url and not out else ""
    stderr.print(f"bundle {result['bundle']}{where}", markup=False, highlight=False)
    stderr.print(f"digest {result['digest']}", markup=False, highlight=False)


def _write_bundle(t: Target, result: dict[str, Any], out: Path) -> Path:
    """Write the packaged bundle to ``out`` (a folder: ``MODEL-VERSION.zip`` in it), whole or
    not at all; the hub's copy (``--hub``: downloaded) is the source."""
    if out.is_dir():
        out = out / f"{str(result['model']).replace('@', '-')}.zip"
    out = out.expanduser().resolve()
    if t.hub_url:
        with connect(t) as client:
            data = client.get(f"/bundles/{result['digest']}/file")
    else:  # from the store, any kind, digest checked
        from hub.core.artifacts import open_store
        from hub.core.settings import load_settings

        store = open_store(load_settings(data_dir=t.data_dir).resolved_artifact_url)
        data = store.get_bytes(result["digest"])
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(f".{out.name}.partial")
    partial.write_bytes(data)
    partial.replace(out)
    return out
