"""Phase specs (``1,10%,50%,100%``) and the deterministic choice of devices per phase.

A phase is a *cumulative* size: a count or a percentage of the devices the rollout targets.
Which devices come first is decided by :func:`order`: online devices before offline ones,
then round-robin over sites (tag ``site``, else the group) so a canary phase spreads, and
within a site by a stable hash of ``rollout id + device id``.

>>> [str(p) for p in parse_phases("1,10%,100%")]
['1', '10%', '100%']
>>> [p.target(40) for p in parse_phases("1,10%,50%,100%")]
[1, 4, 20, 40]
"""

from __future__ import annotations

import hashlib
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hub.core.errors import InvalidInput


@dataclass(frozen=True)
class PhaseSpec:
    count: int | None = None
    percent: float | None = None

    def target(self, total: int) -> int:
        """How many devices (cumulative) this phase covers out of ``total``."""
        if self.count is not None:
            return min(self.count, total)
        assert self.percent is not None
        return min(total, math.ceil(total * self.percent / 100.0 - 1e-9))

    def __str__(self) -> str:
        return str(self.count) if self.count is not None else f"{self.percent:g}%"


def parse_phases(text: str | Sequence[str | int]) -> list[PhaseSpec]:
    """``"1,10%,100%"`` (or a list of the same items). Sizes must not shrink."""
    items = [str(i).strip() for i in (text.split(",") if isinstance(text, str) else text)]
    if not items or any(not i for i in items):
        raise InvalidInput(f"phases {text!r}: give sizes like '1,10%,50%,100%'")
    specs: list[PhaseSpec] = []
    for item in items:
        try:
            if item.endswith("%"):
                percent = float(item[:-1])
                if not 0 < percent <= 100:
                    raise ValueError
                specs.append(PhaseSpec(percent=percent))
            else:
                count = int(item)
                if count < 1:
                    raise ValueError
                specs.append(PhaseSpec(count=count))
        except ValueError:
            raise InvalidInput(
                f"phase {item!r} is neither a device count >= 1 nor a percentage in (0, 100]"
            ) from None
    percents = [s.percent for s in specs if s.percent is not None]
    if percents != sorted(percents):
        raise InvalidInput(f"phases {text!r}: percentages must not decrease (they are cumulative)")
    counts = [s.count for s in specs if s.count is not None]
    if counts != sorted(counts):
        raise InvalidInput(f"phases {text!r}: counts must not decrease (they are cumulative)")
    return specs


def stable_rank(rollout_id: str, device_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).hexdigest()


@dataclass(frozen=True, kw_only=True)
class Candidate:
    device_id: str
    site: str
    online: bool


def order(rollout_id: str, candidates: Sequence[Candidate]) -> list[str]:
    """Device ids in the order phases take them (deterministic for the same inputs)."""
    result: list[str] = []
    for online in (True, False):
        by_site: dict[str, list[str]] = defaultdict(list)
        for c in candidates:
            if c.online == online:
                by_site[c.site].append(c.device_id)
        queues = [
            sorted(ids, key=lambda d: stable_rank(rollout_id, d))
            for _, ids in sorted(by_site.items(), key=lambda kv: stable_rank(rollout_id, kv[0]))
        ]
        while any(queues):
            for queue in queues:
                if queue:
                    result.append(queue.pop(0))
    return result


def site_of(group: str, tags: Mapping[str, str]) -> str:
    return tags.get("site") or group


def choose(
    *, rollout_id: str, spec: PhaseSpec, total: int, assigned: int, pool: Sequence[Candidate]
) -> list[str]:
    """The devices that join a phase: enough of ``pool`` (unassigned) to reach its target."""
    need = max(0, spec.target(total) - assigned)
    return order(rollout_id, pool)[:need]
