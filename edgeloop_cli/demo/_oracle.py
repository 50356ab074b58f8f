"""The oracle: what recovery can reach, trained with the benchmark's knowledge of the shift.

The same spec and parameters as the hub's first model, trained on the same training split of
the same dataset, with the drift's transform applied to the same share of its training records
as the share of devices that drift. It is scored on the inputs the loop's figures are scored
on: the source records that are in no training split of any model of the run, clean for the
clean cohort and through the drift for the drifted one. The hub never sees this model.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgeloop_cli.demo.metrics import clustered_wilson
from hub.datasets.records import RecordSet
from hub.datasets.splits import DEFAULT_FRACTIONS, split_records
from simulators.scenario import DriftSpec
from simulators.sensors import DataSource, Drift

RANDOM_KINDS = frozenset({"noise", "knockout"})  # a fresh draw per read: score several draws
DRAWS = 5


@dataclass(frozen=True, kw_only=True)
class OracleResult:
    accuracy: dict[str, float | None]  # per cohort, percent
    n: dict[str, int]  # inputs scored per cohort
    ci95: dict[str, tuple[float, float] | None]
    trained_on: int  # training records, of which ``shifted`` went through the drift
    shifted: int

    def as_dict(self) -> dict[str, Any]:
        return {
            "accuracy": self.accuracy,
            "n": self.n,
            "ci95": {k: list(v) if v else None for k, v in self.ci95.items()},
            "trained_on": self.trained_on,
            "shifted": self.shifted,
        }


def train_oracle(
    *,
    spec_name: str,
    params: Mapping[str, Any],
    records: RecordSet,
    dataset: str,
    drift: DriftSpec,
    world: DataSource,
    eval_sources: Collection[str],
    drifted_share: float,
    seed: int = 0,
) -> OracleResult:
    """Train the oracle on ``records``' training split (``dataset`` salts the split, as in the
    hub) with ``drift`` applied to ``drift.fraction`` of it; score it on ``eval_sources``
    (ids of ``world``'s records). ``drifted_share`` weighs the cohorts into the fleet's."""
    from hub.specs import get_spec
    from hub.training.loop import TrainConfig, fit, predict, resolve_device, seed_everything

    spec = get_spec(spec_name)
    merged = spec.params(dict(params))
    splits = split_records(records, fractions=DEFAULT_FRACTIONS, salt=dataset)
    train, val = splits["train"], splits["val"]
    rng = np.random.default_rng(seed)
    shift = Drift(spec=drift)
    chosen = rng.random(len(train)) < drift.fraction
    features = np.array(train.features, copy=True)
    if chosen.any():
        features[chosen] = shift.transform(features[chosen], source=world, rng=rng)
    shifted_train = RecordSet(
        ids=train.ids,
        features=features,
        labels=train.labels,
        feature_names=train.feature_names,
        label_names=train.label_names,
    )
    preprocess = spec.preprocess(shifted_train)
    seed_everything(seed)
    model = spec.build(params=merged, num_outputs=spec.num_outputs(shifted_train))
    fit(
        spec=spec,
        model=model,
        train_x=preprocess.apply(shifted_train.features),
        train_y=spec.targets(shifted_train),
        val_x=preprocess.apply(val.features),
        val_y=spec.targets(val),
        config=TrainConfig.from_params(merged, seed=seed, device="cpu"),
    )
    if world.ids is None or world.labels is None:
        raise ValueError("the oracle is scored on labelled source records with ids")
    keep = np.isin(world.ids, sorted(eval_sources))
    x, y = world.features[keep], world.labels[keep]
    device = resolve_device("cpu")

    def correct(inputs: np.ndarray) -> np.ndarray:
        if len(inputs) == 0:
            return np.zeros(0, dtype=bool)
        out = predict(model, preprocess.apply(inputs), device=device)
        return np.asarray(out.argmax(axis=1) == y)

    clean = correct(x)
    draws = DRAWS if drift.kind in RANDOM_KINDS else 1
    shifted = np.concatenate(
        [
            correct(shift.transform(np.array(x, copy=True), source=world, rng=rng))
            for _ in range(draws)
        ]
    )
    accuracy: dict[str, float | None] = {}
    n: dict[str, int] = {}
    ci: dict[str, tuple[float, float] | None] = {}
    for cohort, hits in (("drifted", shifted), ("clean", clean)):
        n[cohort] = len(hits)
        accuracy[cohort] = round(100.0 * float(hits.mean()), 2) if len(hits) else None
        # several draws of one source are reads of one record: clustered by source
        sources = (str(i % max(1, len(x))) for i in range(len(hits)))
        ci[cohort] = clustered_wilson(zip(sources, hits.tolist(), strict=True))[0]
    d, c = accuracy["drifted"], accuracy["clean"]
    accuracy["fleet"] = (
        None if d is None or c is None else round(drifted_share * d + (1 - drifted_share) * c, 2)
    )
    n["fleet"], ci["fleet"] = n["drifted"] + n["clean"], None
    return OracleResult(
        accuracy=accuracy,
        n=n,
        ci95=ci,
        trained_on=len(train),
        shifted=int(chosen.sum()),
    )
