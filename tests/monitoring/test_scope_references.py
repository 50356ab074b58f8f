"""Scope references: a model trained on field data carries, per group, a profile of what that
group sends now (``scope_profiles`` in its bundle, binned with the version profile's edges);
the group and its devices are compared with it, so a site whose inputs shifted *and whose model
was retrained for them* stops alerting. Real detectors, SQLite and PostgreSQL."""

from __future__ import annotations

import numpy as np
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from hub.core.db import session_scope
from hub.monitoring import DetectorCache, MonitorConfig, evaluate
from hub.tables import Bundle
from model_packager.profile import ReferenceProfile, build_profile
from tests.monitoring.fleetdata import FEATURES, Fleet, logits

DEVICES = {"cam-1": "north", "cam-2": "south", "cam-3": "south"}
CONFIG = MonitorConfig(window_size=200, false_alarm_rate=0.01)
SHIFT = 1.0


def _with_south_reference(fleet: Fleet) -> None:
    """Give the registered bundle a ``group:south`` profile of shifted inputs."""
    like = ReferenceProfile.model_validate(fleet.profile)
    x = np.random.default_rng(3).normal(size=(2000, FEATURES))
    x[:, :2] += SHIFT
    south = build_profile(
        raw_inputs=x,
        model_inputs=x,
        outputs=logits(x),
        task="classification",
        feature_names=[f"f{i}" for i in range(FEATURES)],
        split="field",
        like=like,
    )
    assert [f.edges for f in south.features] == [f.edges for f in like.features]
    with session_scope(fleet.engine) as s:
        bundle = s.exec(select(Bundle)).one()
        bundle.manifest = {
            **bundle.manifest,
            "scope_profiles": {
                "group:south": {"profile": south.model_dump(mode="json"), "samples": ""}
            },
        }
        s.add(bundle)


def _telemetry(fleet: Fleet, *, windows: int) -> None:
    """north sends the reference's distribution, south the shifted one."""
    with session_scope(fleet.engine) as s:
        for _ in range(windows):
            for device, group in DEVICES.items():
                shift = SHIFT if group == "south" else 0.0
                s.add(fleet.window_row(device, fleet.sample(100, shift=shift), group=group))


def _fired(engine: Engine) -> set[str]:
    evaluate(engine, config=CONFIG, cache=DetectorCache())
    from hub.tables import Alert

    with Session(engine) as s:
        return {a.scope for a in s.exec(select(Alert)).all()}


def test_a_group_with_its_own_reference_is_compared_with_it(engine: Engine) -> None:
    fleet = Fleet(engine=engine).register()
    _with_south_reference(fleet)
    _telemetry(fleet, windows=12)
    fired = _fired(engine)
    # south and its devices match their own reference; north matches the version's; the
    # version scope (a mix of both) is not tested for drift
    assert not fired & {"group:south", "device:cam-2", "device:cam-3", "group:north"}, fired
    assert "version:sensor-clf@1" not in fired


def test_without_it_the_same_shift_alerts(engine: Engine) -> None:
    fleet = Fleet(engine=engine).register()
    _telemetry(fleet, windows=12)
    fired = _fired(engine)
    assert {"group:south", "device:cam-2", "device:cam-3"} <= fired, fired
    assert "group:north" not in fired


def test_for_scope_picks_own_then_group_then_version(engine: Engine) -> None:
    fleet = Fleet(engine=engine).register()
    _with_south_reference(fleet)
    with Session(engine) as s:
        ref = DetectorCache().reference(
            s, model=fleet.model, version=fleet.version, bundle_digest=fleet.digest
        )
    assert ref is not None and set(ref.scopes) == {"group:south"}
    south = ref.scopes["group:south"]
    assert ref.for_scope("group:south") is south
    assert ref.for_scope("device:cam-2", group="south") is south
    assert ref.for_scope("device:cam-1", group="north") is ref
    # the version scope mixes the groups as the rollout goes: not tested against one reference
    assert ref.for_scope("version:sensor-clf@1") is None
    assert south.key != ref.key  # detectors are built (and cached) per reference
