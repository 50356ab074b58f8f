"""Streams for the drift benchmark: sklearn digits, a small classifier, shifted pools, and
windows sketched exactly as the agent sketches them (``model_packager.profile.histogram``
over the reference profile's edges, class counts, top-1 confidence histogram, a reservoir
of raw inputs, the labels that come back).

Digits 0-8 are the known classes (a seeded split: 30% train, 25% reference = the bundle's
profile and raw reference sample, 45% stream pool); digit 9 is the unseen class. A window of
``n`` draws distinct stream rows (any set of distinct rows of an i.i.d. pool is an i.i.d.
sample); a shifted window replaces a fraction of them with shifted versions.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression

from hub.monitoring.detectors import Reference, Window
from model_packager.profile import CONFIDENCE_EDGES, build_profile, histogram

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

UNSEEN = 9
RESERVOIR = 100  # raw inputs per window (the agent's reservoir_size)
# shift -> intensity name -> parameter; fractions of each window that are shifted
SHIFTS: dict[str, dict[str, float]] = {
    "gaussian_noise": {"small": 1.0, "large": 4.0},  # sigma, pixel units (range 0..16)
    "rotation": {"small": 10.0, "large": 30.0},  # degrees, random sign
    "contrast": {"small": 0.8, "large": 0.5},  # x * c + 8 (1 - c): flatter, brighter
    "knockout": {"small": 0.1, "large": 0.4},  # share of pixels set to 0
    "label_prior": {"small": 0.5, "large": 0.9},  # weight removed from classes 3..8
    "unseen_class": {"mix": 1.0},
}
FRACTIONS = {"unseen_class": (0.1, 0.3)}
DEFAULT_FRACTIONS = (0.3, 1.0)


@dataclass(frozen=True)
class Pool:
    x: FloatArray  # raw inputs (n, 64)
    probs: FloatArray  # the model's softmax outputs
    y: IntArray


@dataclass(frozen=True, kw_only=True)
class Config:
    shift: str  # "none" for no-shift streams
    intensity: str = ""
    fraction: float = 0.0

    @property
    def label(self) -> str:
        return "none" if self.shift == "none" else f"{self.shift}/{self.intensity}/{self.fraction}"


@dataclass(frozen=True, kw_only=True)
class World:
    reference: Reference
    ref_probs: FloatArray  # the reference's softmax outputs (the BBSD-KS baseline's sample)
    clean: Pool
    shifted: dict[tuple[str, str], Pool]
    unseen: Pool
    accuracy: float
    classes: int


def configs() -> list[Config]:
    out = [Config(shift="none")]
    for shift, levels in SHIFTS.items():
        for intensity in levels:
            for f in FRACTIONS.get(shift, DEFAULT_FRACTIONS):
                out.append(Config(shift=shift, intensity=intensity, fraction=f))
    return out


def _shift(x: FloatArray, shift: str, value: float, rng: np.random.Generator) -> FloatArray:
    if shift == "gaussian_noise":
        return np.clip(x + rng.normal(scale=value, size=x.shape), 0, 16)
    if shift == "rotation":
        angles = value * rng.choice([-1.0, 1.0], size=len(x))
        imgs = [
            ndimage.rotate(r.reshape(8, 8), a, reshape=False, order=1)
            for r, a in zip(x, angles, strict=True)
        ]
        return np.clip(np.asarray(imgs).reshape(len(x), 64), 0, 16)
    if shift == "contrast":  # lower contrast around mid-grey, brighter background
        return np.clip(x * value + 8.0 * (1.0 - value), 0, 16)
    if shift == "knockout":
        return np.where(rng.random(x.shape) < value, 0.0, x)
    raise ValueError(shift)


def build_world(seed: int = 0) -> World:
    digits = load_digits()
    x_all, y_all = digits.data.astype(np.float64), digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    known = np.flatnonzero(y_all != UNSEEN)
    order = rng.permutation(known)
    n_train, n_ref = int(0.30 * len(order)), int(0.25 * len(order))
    train, ref, test = np.split(order, [n_train, n_train + n_ref])
    model = LogisticRegression(max_iter=2000, C=0.5)
    model.fit(x_all[train] / 16.0, y_all[train])

    def pool(x: FloatArray, y: IntArray) -> Pool:
        return Pool(x=x, probs=np.asarray(model.predict_proba(x / 16.0), np.float64), y=y)

    ref_pool = pool(x_all[ref], y_all[ref])
    profile = build_profile(
        raw_inputs=ref_pool.x,
        model_inputs=ref_pool.x / 16.0,
        outputs=np.log(np.clip(ref_pool.probs, 1e-12, None)),  # softmax(log p) = p
        task="classification",
        feature_names=[f"px{i}" for i in range(64)],
        split="reference",
    )
    accuracy = float((ref_pool.probs.argmax(axis=1) == ref_pool.y).mean())
    reference = Reference.from_profile(profile, samples=ref_pool.x, accuracy=accuracy)
    clean = pool(x_all[test], y_all[test])
    shifted = {}
    for shift, levels in SHIFTS.items():
        if shift in ("label_prior", "unseen_class"):
            continue
        for intensity, value in levels.items():
            shifted[shift, intensity] = pool(_shift(clean.x, shift, value, rng), clean.y)
    unseen_idx = np.flatnonzero(y_all == UNSEEN)
    return World(
        reference=reference,
        ref_probs=ref_pool.probs,
        clean=clean,
        shifted=shifted,
        unseen=pool(x_all[unseen_idx], y_all[unseen_idx]),
        accuracy=accuracy,
        classes=int(ref_pool.probs.shape[1]),
    )


def draw(world: World, config: Config, *, n: int, shifted: bool, rng: np.random.Generator) -> Pool:
    """The ``n`` records of one window (shifted or not), in random order."""
    clean = world.clean
    m = round(config.fraction * n) if shifted and config.shift != "none" else 0
    base = rng.choice(len(clean.y), size=n, replace=n > len(clean.y))
    x, probs, y = clean.x[base], clean.probs[base], clean.y[base]
    if m:
        if config.shift == "unseen_class":
            pick = rng.choice(len(world.unseen.y), size=m, replace=m > len(world.unseen.y))
            src, rows = world.unseen, pick
        elif config.shift == "label_prior":
            w = np.where(clean.y < 3, 1.0, 1.0 - SHIFTS["label_prior"][config.intensity])
            rows = rng.choice(len(clean.y), size=m, replace=m > len(clean.y), p=w / w.sum())
            src = clean
        else:
            src, rows = world.shifted[config.shift, config.intensity], base[:m]
        x, probs, y = x.copy(), probs.copy(), y.copy()
        x[:m], probs[:m], y[:m] = src.x[rows], src.probs[rows], src.y[rows]
    perm = rng.permutation(n)
    return Pool(x=x[perm], probs=probs[perm], y=y[perm])


def sketch(world: World, batch: Pool) -> Window:
    """The window as the agent reports it (docs/PROTOCOL.md histogram rule)."""
    ref = world.reference
    predicted = batch.probs.argmax(axis=1)
    return Window(
        n=len(batch.y),
        feature_counts=[histogram(batch.x[:, j], e) for j, e in enumerate(ref.feature_edges)],
        class_counts=np.bincount(predicted, minlength=world.classes).astype(np.int64),
        confidence_counts=histogram(batch.probs.max(axis=1), CONFIDENCE_EDGES),
        samples=batch.x[:RESERVOIR],  # rows are in random order: a uniform reservoir
        correct=predicted == batch.y,
    )
