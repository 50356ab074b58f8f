"""Labels are input from the field: bound each device's share of a field-data version and
quarantine devices whose labels disagree with the fleet's consensus far beyond chance.

**Consensus, not the model.** A label is compared with the labels *other* devices gave to
similar inputs: the ``K`` nearest labelled field samples of other devices in raw feature
space (the features as the devices sent them). Disagreeing with the current model's
prediction is no evidence against a label — after a drift a whole site's labels disagree
with the model, and those labels are exactly what retraining needs. A label counts only
where the consensus is clear: at least ``VOTE`` of the ``K`` neighbours agree, and the
neighbours are near (mean distance within the ``NEAR_QUANTILE`` of all compared samples'),
so a device whose inputs shifted away from everyone else's is mostly *not compared* instead
of being judged against inputs that do not look like its own.

Measured on sklearn digits (10 devices x 150 disjoint samples; the rotated ones use
``simulators.sensors.Drift`` rotation, intensity 0.25), share of a device's labels with a
clear consensus / disagreement among them: clean devices 80-95% / 0-3.7%; three rotated
devices at one site 47-80% / 0-2.8%; one lone rotated device 8% / 8.3%; a device sending a
random wrong label for every prediction 93-96% / 99-100%; one sending ``label + 1`` 95% / 100%.

**Far beyond chance.** Per device, a one-sided binomial test of its disagreements against
the pooled rate of the other devices plus ``MARGIN`` (an honest device can disagree a little
more than the pool: a shifted input near a class border), at ``FALSE_QUARANTINE_RATE``
Bonferroni-split over the devices tested: under the binomial model an honest fleet sees a
false quarantine in at most 1 of 1000 evaluations. Needs ``MIN_DEVICES`` contributing
devices (with two, neither can be told from the other).

**Share cap.** After quarantine, no device keeps more than ``max(2/N, share)`` of the
version's field records (N = contributing devices; ``share`` from the training policy,
default 0.1); a device over it keeps its newest records (``field_data`` also drops the
parent's field records that are no longer kept, so the bound holds for the whole version).
With few devices the 2/N floor keeps a balanced fleet whole (a device loses records only
beyond twice its fair share); with many, a single device — whose labels may be subtly
wrong in a way no test catches — moves at most a tenth of the field data.

A quarantined device's labels stay out of every field-data version and of the canary's
accuracy gate (``hub.rollouts.gates``) until an operator lifts it; after a lift the device
is tested again on samples newer than the lift only.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from sqlmodel import Session, col, select

from hub._lazy import module
from hub.core.clock import aware, utcnow
from hub.core.errors import Conflict, InvalidInput
from hub.datasets.records import RecordSet
from hub.tables.fleet import FieldSample
from hub.tables.quality import LabelQuarantine

if TYPE_CHECKING:
    from scipy import stats as scipy_stats
else:
    scipy_stats = module("scipy.stats")  # ~1 s, for one test; not on every hub start

log = logging.getLogger("edgeloop.triggers")

K = 9  # neighbours from other devices
VOTE = 2 / 3  # share of the K neighbours that must agree for a consensus
NEAR_QUANTILE = 0.9  # neighbours farther than this quantile of mean distances: no consensus
MARGIN = 0.2  # an honest device may disagree this much more than the pool
FALSE_QUARANTINE_RATE = 1e-3  # per evaluation, over the whole fleet (Bonferroni)
MIN_DEVICES = 3
MAX_COMPARED = 5000  # newest labelled samples compared (the distance work is quadratic)
DEFAULT_DEVICE_SHARE = 0.1
_CHUNK = 512


@dataclass(frozen=True, kw_only=True)
class DeviceLabels:
    """One device's labels against the consensus of the others."""

    device_id: str
    labels: int  # labels with a clear consensus
    disagreements: int
    baseline: float  # pooled disagreement rate of the other devices
    p_value: float

    @property
    def rate(self) -> float:
        return self.disagreements / self.labels if self.labels else 0.0


def consensus_check(
    features: npt.ArrayLike,
    labels: npt.ArrayLike,
    devices: Sequence[str],
    *,
    tested: npt.ArrayLike | None = None,
    k: int = K,
) -> dict[str, DeviceLabels]:
    """Each device's labels against the labels other devices gave to similar inputs.

    ``features`` ``[N, ...]``, ``labels`` ``[N]``, ``devices`` the sender of each row;
    ``tested`` (bool ``[N]``, default all) marks the rows whose label is judged — every row
    votes as a neighbour. Devices with no judged label with a consensus are left out.
    """
    x = np.asarray(features, dtype=np.float32).reshape(len(devices), -1)
    y = np.asarray(labels, dtype=np.int64)
    owner = np.unique(np.asarray(devices, dtype=object), return_inverse=True)
    names: list[str] = [str(n) for n in owner[0]]
    dev = np.asarray(owner[1], dtype=np.int64)
    judged = np.ones(len(y), dtype=bool) if tested is None else np.asarray(tested, dtype=bool)
    if len(names) < MIN_DEVICES or len(y) <= k:
        return {}
    sq = np.einsum("ij,ij->i", x, x)
    nearest = np.zeros((len(y), k), dtype=np.int64)
    spread = np.full(len(y), np.inf)
    for lo in range(0, len(y), _CHUNK):
        hi = min(lo + _CHUNK, len(y))
        dist = sq[lo:hi, None] + sq[None, :] - 2.0 * (x[lo:hi] @ x.T)
        dist[dev[lo:hi, None] == dev[None, :]] = np.inf  # only other devices vote
        part = np.argpartition(dist, k - 1, axis=1)[:, :k]
        near = np.take_along_axis(dist, part, axis=1)
        nearest[lo:hi] = part
        spread[lo:hi] = np.sqrt(np.maximum(near, 0.0)).mean(axis=1)
    finite = np.isfinite(spread)
    if not finite.any():
        return {}
    votes = y[nearest]
    classes = int(max(y.max(), votes.max())) + 1
    counts = np.zeros((len(y), classes), dtype=np.int64)
    np.add.at(counts, (np.arange(len(y))[:, None], votes), 1)
    consensus, support = counts.argmax(axis=1), counts.max(axis=1)
    limit = np.quantile(spread[finite], NEAR_QUANTILE)
    clear = finite & judged & (support >= VOTE * k) & (spread <= limit)
    wrong = clear & (consensus != y)
    n = np.bincount(dev[clear], minlength=len(names))
    bad = np.bincount(dev[wrong], minlength=len(names))
    tested_devices = int((n > 0).sum())
    out: dict[str, DeviceLabels] = {}
    for i, name in enumerate(names):
        if n[i] == 0:
            continue
        others_n, others_bad = int(n.sum() - n[i]), int(bad.sum() - bad[i])
        baseline = others_bad / others_n if others_n else 0.0
        null = min(baseline + MARGIN, 0.999)
        # Bonferroni: the bound holds over all the devices tested together
        p_value = float(scipy_stats.binom.sf(int(bad[i]) - 1, int(n[i]), null)) * tested_devices
        out[name] = DeviceLabels(
            device_id=name,
            labels=int(n[i]),
            disagreements=int(bad[i]),
            baseline=baseline,
            p_value=min(1.0, p_value),
        )
    return out


def far_beyond_chance(stats: DeviceLabels) -> bool:
    """The device's labels disagree with the consensus far beyond chance (p is Bonferroni-
    adjusted over the devices tested together)."""
    return stats.p_value < FALSE_QUARANTINE_RATE


def share_cap(devices: int, share: float) -> float:
    """The largest share of a field-data version one of ``devices`` devices may have."""
    return 1.0 if devices <= 0 else min(1.0, max(2.0 / devices, share))


def cap_shares(devices: Sequence[str], *, cap: float) -> npt.NDArray[np.bool_]:
    """Which rows to keep so that no device has more than ``cap`` of the kept rows; rows are
    newest first and a capped device keeps its first (newest) ones.

    The per-device limit ``c`` is the largest with ``c <= cap * sum(min(n_d, c))`` (the
    shares are of what is kept, not of what was offered); with ``cap >= 2/N`` it is >= 1.
    """
    counts = Counter(devices)
    if not counts:
        return np.zeros(0, dtype=bool)

    def fits(c: int) -> bool:
        return c <= cap * sum(min(n, c) for n in counts.values())

    lo, hi = 1, max(counts.values())
    if fits(hi):
        return np.ones(len(devices), dtype=bool)
    while lo < hi:  # fits() holds on [1, c*] (concave minus linear): the largest such c
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
    kept: Counter[str] = Counter()
    keep = np.zeros(len(devices), dtype=bool)
    for i, d in enumerate(devices):
        if kept[d] < lo:
            kept[d] += 1
            keep[i] = True
    return keep


def quarantined_devices(session: Session, *, model: str) -> set[str]:
    """Devices whose labels for ``model`` are quarantined now."""
    rows = session.exec(
        select(LabelQuarantine.device_id).where(
            LabelQuarantine.model == model, col(LabelQuarantine.active).is_(True)
        )
    ).all()
    return set(rows)


def quarantined_records(
    session: Session, *, model: str, records: RecordSet
) -> npt.NDArray[np.bool_]:
    """Which of ``records`` (a dataset version's) are field records of a device whose labels
    for ``model`` are quarantined now: ``field:<device>:<prediction>``, with any ``#...``
    suffix."""
    blocked = quarantined_devices(session, model=model)
    ids = [str(i) for i in records.ids.tolist()]
    if not blocked or not any(i.startswith("field:") for i in ids):
        return np.zeros(len(ids), dtype=bool)
    rows = session.exec(
        select(FieldSample.device_id, FieldSample.prediction_id).where(
            FieldSample.model == model, col(FieldSample.device_id).in_(blocked)
        )
    ).all()
    theirs = {f"field:{device}:{prediction}" for device, prediction in rows}
    return np.asarray([i.split("#", 1)[0] in theirs for i in ids], dtype=bool)


def list_quarantine(
    session: Session, *, model: str | None = None, active: bool | None = True
) -> list[LabelQuarantine]:
    query = select(LabelQuarantine).order_by(col(LabelQuarantine.id))
    if model is not None:
        query = query.where(LabelQuarantine.model == model)
    if active is not None:
        query = query.where(col(LabelQuarantine.active).is_(active))
    return list(session.exec(query).all())


def lift_quarantine(
    session: Session, *, device_id: str, reason: str, model: str | None = None
) -> list[LabelQuarantine]:
    """An operator vouches for ``device_id``'s labels (for ``model``, default every model);
    it is tested again on samples that arrive after now."""
    if not reason.strip():
        raise InvalidInput("lifting a quarantine needs a reason; it is kept with the device")
    rows = [
        r for r in list_quarantine(session, model=model, active=True) if r.device_id == device_id
    ]
    if not rows:  # the device may well exist: a state conflict, not a missing resource
        raise Conflict(
            f"device {device_id!r} has no active label quarantine"
            + (f" for model {model!r}" if model else "")
            + " (list them with: edgeloop device quarantine)"
        )
    now = utcnow()
    for row in rows:
        row.active, row.lifted_at, row.lifted_reason = False, now, reason.strip()
        session.add(row)
    session.flush()
    return rows


def _quarantine(session: Session, *, model: str, stats: DeviceLabels) -> LabelQuarantine:
    row = session.exec(
        select(LabelQuarantine).where(
            LabelQuarantine.model == model, LabelQuarantine.device_id == stats.device_id
        )
    ).first() or LabelQuarantine(device_id=stats.device_id, model=model)
    row.active, row.lifted_at, row.lifted_reason, row.at = True, None, "", utcnow()
    row.labels, row.disagreements, row.rate = stats.labels, stats.disagreements, stats.rate
    row.baseline, row.p_value = stats.baseline, stats.p_value
    row.reason = (
        f"{stats.disagreements} of {stats.labels} labels disagree with the labels other devices "
        f"gave to similar inputs ({stats.rate:.1%}; the others {stats.baseline:.1%}; "
        f"p={stats.p_value:.2g} < {FALSE_QUARANTINE_RATE:g})"
    )
    session.add(row)
    session.flush()
    log.warning("label quarantine: device %s for %s: %s", stats.device_id, model, row.reason)
    return row


@dataclass(frozen=True, kw_only=True)
class Screening:
    """What :func:`screen_field_records` kept and why."""

    records: RecordSet | None  # the kept records, newest first; None when nothing is left
    cap: float  # the largest share of the records one device may have
    capped: dict[str, int]  # device -> its records left out by the cap
    quarantined: list[str]  # devices among the offered ones whose labels are quarantined
    newly_quarantined: list[str]
    compared: int  # labels judged against a consensus
    checked: int  # devices with at least one such label
    kept: dict[str, int]  # device -> its records kept

    def lineage(self) -> dict[str, object]:
        return {
            "device_share_cap": round(self.cap, 6),
            "capped_devices": self.capped,
            "quarantined_devices": self.quarantined,
            "label_check": {
                "compared": self.compared,
                "devices": self.checked,
                "newly_quarantined": self.newly_quarantined,
            },
            "devices": self.kept,
        }


def screen_field_records(
    session: Session,
    *,
    model: str,
    records: RecordSet,
    owners: Sequence[tuple[str, datetime]],
    share: float = DEFAULT_DEVICE_SHARE,
) -> Screening:
    """Quarantine devices whose labels disagree far beyond chance, drop quarantined devices'
    records, cap each device's share (``owners``: each record's device and time, newest
    first); newest-first order is kept."""
    devices = [d for d, _ in owners]
    blocked = quarantined_devices(session, model=model)
    lifted = {
        r.device_id: aware(r.lifted_at)
        for r in list_quarantine(session, model=model, active=False)
        if r.lifted_at is not None
    }
    voters = np.asarray([d not in blocked for d in devices], dtype=bool)
    voters[np.flatnonzero(voters)[MAX_COMPARED:]] = False  # the newest ones
    index = np.flatnonzero(voters)
    fresh = [d not in lifted or aware(at) > lifted[d] for d, at in owners]
    tested = np.asarray(fresh, dtype=bool)[index]  # a lifted device: only what came after
    assert records.labels is not None
    stats = consensus_check(
        records.features[index],
        records.labels[index],
        [devices[i] for i in index],
        tested=tested,
    )
    flagged = sorted(d for d, s in stats.items() if far_beyond_chance(s))
    for name in flagged:
        _quarantine(session, model=model, stats=stats[name])
    blocked |= set(flagged)
    allowed = np.flatnonzero([d not in blocked for d in devices])
    remaining = [devices[i] for i in allowed]
    cap = share_cap(len(set(remaining)), share)
    keep = allowed[cap_shares(remaining, cap=cap)]
    dropped = Counter(remaining) - Counter(devices[i] for i in keep)
    return Screening(
        records=records.subset(keep) if len(keep) else None,
        cap=cap,
        capped=dict(sorted(dropped.items())),
        quarantined=sorted(blocked & set(devices)),
        newly_quarantined=flagged,
        compared=int(sum(s.labels for s in stats.values())),
        checked=len(stats),
        kept=dict(Counter(devices[i] for i in keep)),
    )
