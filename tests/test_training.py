"""Model specs and the training loop: reproducible, resumable, tracked and registered."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy.engine import Engine

from edgeloop_cli import main
from hub.core.artifacts import FileArtifactStore
from hub.core.db import make_engine, session_scope
from hub.core.errors import InvalidInput
from hub.datasets import service as datasets
from hub.registry import models as registry
from hub.registry import tracking
from hub.specs import BUILTIN_SPECS, get_spec
from hub.tables import create_all
from hub.training.artifact import load_model
from hub.training.loop import EpochResult, TrainConfig, fit, predict
from hub.training.service import train

FAST = {"epochs": 6, "hidden": 64}


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[Engine, FileArtifactStore]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="digits", source="sklearn:digits")
    yield engine, store
    engine.dispose()


def test_same_seed_same_metrics_and_a_tracked_registered_run(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    first = train(engine, store, spec_name="digits-mlp", dataset="digits@latest", params=FAST)
    again = train(engine, store, spec_name="digits-mlp", dataset="digits@1", params=FAST)
    other = train(engine, store, spec_name="digits-mlp", dataset="digits@1", params=FAST, seed=1)
    assert first.metrics == again.metrics
    assert first.metrics != other.metrics
    assert first.metrics["test_accuracy"] > 85.0 and first.candidate
    with session_scope(engine) as s:
        history = tracking.metric_history(s, run_id=first.run.id, key="val_accuracy")
        assert [m.step for m in history] == [1, 2, 3, 4, 5, 6]
        run = tracking.get_run(s, run_id=first.run.id)
        assert run.code_version == get_spec("digits-mlp").code_version()
        assert run.params["seed"] == 0 and run.params["hidden"] == 64
        assert registry.get_version(s, ref="digits-mlp@candidate").version == 3
        lineage = registry.lineage(s, ref="digits-mlp@1")
        assert lineage["dataset_version"]["ref"] == "digits@1"
        blob = store.get_bytes(registry.get_version(s, ref="digits-mlp@1").artifact_digest)
    trained = load_model(blob)
    assert trained.labels == [str(i) for i in range(10)]
    assert trained.preprocess.input_shape == (64,)


def test_resume_from_checkpoint_gives_the_same_model(tmp_path: Path) -> None:
    spec = get_spec("digits-mlp")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 64)).astype(np.float32)
    y = rng.integers(0, 10, 256).astype(np.int64)
    params = spec.params({"hidden": 16})

    class Interrupted(Exception):
        pass

    def stop_after_two(result: EpochResult) -> None:
        if result.epoch == 2:
            raise Interrupted

    def run(
        checkpoint: Path | None, on_epoch: Callable[[EpochResult], None] | None = None
    ) -> torch.nn.Module:
        torch.manual_seed(0)
        model = spec.build(params=params, num_outputs=10)
        config = TrainConfig(epochs=4, batch_size=32, lr=1e-2, seed=3)
        fit(
            spec=spec,
            model=model,
            train_x=x,
            train_y=y,
            val_x=x,
            val_y=y,
            config=config,
            checkpoint=checkpoint,
            on_epoch=on_epoch,
        )
        return model

    straight = run(None)
    ckpt = tmp_path / "run.ckpt"
    with pytest.raises(Interrupted):
        run(ckpt, stop_after_two)  # the process "dies" after epoch 2
    assert torch.load(ckpt, weights_only=False)["epoch"] == 2
    resumed = run(ckpt)
    cpu = torch.device("cpu")
    np.testing.assert_allclose(
        predict(resumed, x, device=cpu), predict(straight, x, device=cpu), atol=1e-6
    )


def test_unsupervised_autoencoder_spec_trains(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'hub.db'}")
    create_all(engine)
    store = FileArtifactStore(root=tmp_path / "artifacts")
    with session_scope(engine) as s:
        datasets.import_dataset(s, store, name="vib", source="synthetic:vibration")
    outcome = train(engine, store, spec_name="vibration-ae", dataset="vib@1", params={"epochs": 2})
    assert set(outcome.metrics) == {"test_reconstruction_mse", "test_neg_reconstruction_mse"}
    assert 0 < outcome.metrics["test_reconstruction_mse"] < 2.0


def test_bad_spec_or_params_are_invalid_input(hub: tuple[Engine, FileArtifactStore]) -> None:
    engine, store = hub
    with pytest.raises(InvalidInput, match="unknown model spec"):
        train(engine, store, spec_name="nope", dataset="digits@1")
    with pytest.raises(InvalidInput, match="unknown parameter"):
        train(engine, store, spec_name="digits-cnn", dataset="digits@1", params={"lr_typo": 1})
    with pytest.raises(InvalidInput, match="cannot load"):
        train(engine, store, spec_name="no.such.module:Spec", dataset="digits@1")
    assert set(BUILTIN_SPECS) == {"digits-cnn", "digits-mlp", "vibration-ae"}


def test_train_cli_json_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dd = ["--data-dir", str(tmp_path)]
    assert main([*dd, "dataset", "import", "sklearn:digits", "--name", "digits", "--json"]) == 0
    capsys.readouterr()
    code = main(
        [
            *dd,
            "train",
            "--spec",
            "digits-mlp",
            "--dataset",
            "digits@latest",
            "--param",
            "epochs=2",
            "--param",
            "hidden=16",
            "--json",
        ]
    )
    result = json.loads(capsys.readouterr().out)
    assert code == 0
    for key in ("run_id", "model", "version", "metrics", "dataset_version", "code_version"):
        assert key in result
    assert result["model"] == "digits-mlp" and result["dataset_version"] == "digits@1"
    assert result["params"]["epochs"] == 2


def test_fine_tuning_starts_from_a_version_and_keeps_its_transform(
    hub: tuple[Engine, FileArtifactStore],
) -> None:
    engine, store = hub
    base = train(engine, store, spec_name="digits-mlp", dataset="digits@1", params=FAST)
    assert base.model_version is not None
    ref = f"digits-mlp@{base.model_version.version}"
    one = {**FAST, "epochs": 1}
    tuned = train(
        engine, store, spec_name="digits-mlp", dataset="digits@1", params=one, init_from=ref
    )
    fresh = train(engine, store, spec_name="digits-mlp", dataset="digits@1", params=one)
    # one epoch from the trained weights keeps what they knew; one epoch from scratch does not
    assert tuned.metrics["test_accuracy"] > fresh.metrics["test_accuracy"]
    assert tuned.metrics["test_accuracy"] >= base.metrics["test_accuracy"] - 2.0
    with session_scope(engine) as s:
        assert tracking.get_run(s, run_id=tuned.run.id).params["init_from"] == ref
        digests = [
            registry.get_version(s, ref=f"digits-mlp@{o.model_version.version}").artifact_digest
            for o in (base, tuned)
            if o.model_version is not None
        ]
    blobs = [store.get_bytes(d) for d in digests]
    start, after = (load_model(b) for b in blobs)
    assert after.preprocess == start.preprocess  # the weights' input transform, not a new one
    with pytest.raises(InvalidInput, match="cannot fine-tune"):
        train(engine, store, spec_name="digits-cnn", dataset="digits@1", params={"epochs": 1},
              init_from=ref)  # fmt: skip
    with pytest.raises(InvalidInput, match="do not fit"):
        train(engine, store, spec_name="digits-mlp", dataset="digits@1",
              params={**one, "hidden": 32}, init_from=ref)  # fmt: skip
