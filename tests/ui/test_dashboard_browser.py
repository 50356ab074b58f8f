"""The dashboard end to end in headless Chromium against a real hub with real data.

Pages refresh their live part every few seconds, so the tests read the DOM through the
atomic helpers in ``_browser`` rather than holding on to elements.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from tests.ui._browser import (
    attrs,
    click,
    count,
    mark_page,
    not_reloaded,
    screenshot,
    sign_in,
    text,
    texts,
    wait_for,
)
from tests.ui._world import FIELD_DEVICES, LAB_DEVICES, MODEL
from tests.ui.conftest import ADMIN_TOKEN, Hub, StartedRollout

pytestmark = pytest.mark.timeout(180)


def _has(css: str) -> Any:
    return lambda d: d.execute_script("return !!document.querySelector(arguments[0]);", css)


def test_sign_in_keeps_the_token_in_an_httponly_strict_cookie(
    browser: Any, hub_server: Hub
) -> None:
    browser.delete_all_cookies()
    browser.get(f"{hub_server.url}/ui/fleet")
    wait_for(browser, _has("#token"))
    assert "/ui/login" in browser.current_url
    browser.find_element("id", "token").send_keys("not-a-token")
    click(browser, "#sign-in")
    wait_for(browser, _has("#login-error"))
    assert "not valid" in text(browser, "#login-error")
    browser.find_element("id", "token").send_keys(ADMIN_TOKEN)
    click(browser, "#sign-in")
    wait_for(browser, _has("#devices"))
    assert browser.current_url.endswith("/ui/fleet")
    cookie = browser.get_cookie("edgeloop_ui")
    assert cookie is not None and cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    assert "edgeloop_ui" not in browser.execute_script("return document.cookie;")
    assert text(browser, "#scope") == "admin"


def _row_ids(browser: Any) -> list[str | None]:
    return attrs(browser, "#devices tr[id]", "id")


def test_fleet_page_shows_presence_versions_and_filters_and_updates_live(
    browser: Any, hub_server: Hub, artifacts_dir: Path
) -> None:
    from hub.tables import Device

    sign_in(browser, hub_server.url, ADMIN_TOKEN)
    assert set(_row_ids(browser)) == {f"device-{d}" for d in FIELD_DEVICES + LAB_DEVICES}
    assert text(browser, "#count-total") == "6" and text(browser, "#count-online") == "5"
    cam0 = text(browser, "#device-cam-0")
    assert f"{MODEL}@1" in cam0 and "online" in cam0 and "site=a" in cam0 and "field" in cam0
    assert "offline" in text(browser, "#device-cam-3")
    assert "none" in text(browser, "#device-lab-0 .active")
    screenshot(browser, artifacts_dir, "fleet")

    # filter through the form: group lab
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("name", "group")).select_by_value("lab")
    click(browser, "#fleet-filter button")
    wait_for(browser, lambda d: "group=lab" in d.current_url)
    assert _row_ids(browser) == ["device-lab-0", "device-lab-1"]
    browser.get(f"{hub_server.url}/ui/fleet?tag=site%3Da&status=online")
    assert _row_ids(browser) == ["device-cam-0", "device-cam-1"]

    # live: lab-1 goes offline in the database; the open page shows it without a reload
    browser.get(f"{hub_server.url}/ui/fleet")
    mark_page(browser)
    with Session(hub_server.engine) as s:
        device = s.get(Device, "lab-1")
        assert device is not None
        device.online = False
        s.add(device)
        s.commit()
    try:
        wait_for(browser, lambda d: attrs(d, "#device-lab-1", "data-online") == ["false"])
        assert not_reloaded(browser)
        assert text(browser, "#count-online") == "4"
    finally:
        with Session(hub_server.engine) as s:
            device = s.get(Device, "lab-1")
            assert device is not None
            device.online = True
            s.add(device)
            s.commit()


def test_registry_lineage_variants_and_datasets_pages(
    browser: Any, hub_server: Hub, artifacts_dir: Path
) -> None:
    sign_in(browser, hub_server.url, ADMIN_TOKEN, to="/ui/models")
    assert "test_accuracy" in text(browser, f"#version-{MODEL}-1")
    screenshot(browser, artifacts_dir, "models")
    click(browser, f"#version-{MODEL}-1 a")
    wait_for(browser, _has("#lineage"))
    lineage = text(browser, "#lineage")
    assert "dataset digits@1" in lineage and f"{MODEL}@1" in lineage and "run " in lineage
    assert hub_server.world.bundle_digest[:19] in lineage  # "sha256:" + 12 hex digits
    rows = browser.execute_script(
        "return [...document.querySelectorAll('#variants-1 tr.variant')]"
        ".map(r => [...r.cells].map(c => c.innerText));"
    )
    assert sorted(r[2] for r in rows) == ["fp32", "int8"]
    for r in rows:
        assert r[3].endswith("KiB") and float(r[4]) > 50 and float(r[5]) > 0
    screenshot(browser, artifacts_dir, "model_version")

    click(browser, "#lineage-dataset")
    wait_for(browser, _has("#checks"))
    splits = text(browser, "#splits")
    assert "train" in splits and "val" in splits and "test" in splits
    checks = texts(browser, "#checks tr.check")
    assert len(checks) >= 3 and all("passed" in c or "skipped" in c for c in checks)
    assert f"{MODEL}@1" in text(browser, "main")
    browser.get(f"{hub_server.url}/ui/datasets")
    row = text(browser, "#dataset-digits-1")
    assert "passed" in row and "1797" in row
    screenshot(browser, artifacts_dir, "datasets")


def test_monitoring_page_charts_scores_thresholds_and_alerts(
    browser: Any, hub_server: Hub, artifacts_dir: Path
) -> None:
    sign_in(browser, hub_server.url, ADMIN_TOKEN, to="/ui/monitoring")
    panel = f"#panel-{MODEL}-1"
    wait_for(browser, _has(panel))
    assert "87.5%" in text(browser, panel)  # 35 of 40 labels right
    assert sorted(attrs(browser, f"{panel} figure.chart-box", "data-kind")) == [  # type: ignore[type-var]
        "degradation",
        "drift",
    ]
    drift = f"{panel} figure[data-kind=drift]"
    names = attrs(browser, f"{drift} polyline", "data-name")
    assert names == [f"version:{MODEL}@1", "group:field", "threshold"]
    assert count(browser, f"{drift} circle.fired") > 0
    assert attrs(browser, "#alerts tr.alert", "data-open") == ["true"]
    assert "feature_chi2" in text(browser, "#alerts tr.alert")
    screenshot(browser, artifacts_dir, "monitoring")


def _state(hub: Hub, rollout_id: str) -> str:
    from hub.tables.rollouts import Rollout

    with Session(hub.engine) as s:
        found = s.get(Rollout, rollout_id)
        assert found is not None
        return str(found.state)


def _click_confirmed(browser: Any, action: str) -> None:
    click(browser, f"#action-{action}")
    alert = wait_for(browser, lambda d: d.switch_to.alert)
    assert "?" in alert.text
    alert.accept()


def test_rollout_page_timeline_devices_gates_and_pause_resume(
    browser: Any, hub_server: Hub, rollout: StartedRollout, artifacts_dir: Path
) -> None:
    from hub.tables import DeploymentEventRow
    from hub.tables.rollouts import RolloutDevice

    sign_in(browser, hub_server.url, ADMIN_TOKEN, to="/ui/rollouts")
    assert "running" in text(browser, f"#rollout-{rollout.id}")
    click(browser, f"#rollout-{rollout.id} a")
    wait_for(browser, _has("#timeline"))
    phases = texts(browser, "#timeline .phase")
    assert len(phases) == 3
    assert "baking" in phases[0] or "commanding" in phases[0]
    assert "pending" in phases[1] and "pending" in phases[2]
    assert count(browser, "#rollout-devices tr[id]") == 4  # the field group
    with Session(hub_server.engine) as s:
        first = s.exec(
            select(RolloutDevice).where(
                RolloutDevice.rollout_id == rollout.id, RolloutDevice.phase == 0
            )
        ).one()
        device_id, command_id = first.device_id, first.command_id
    assert "commanded" in text(browser, f"#rd-{device_id}")

    # live: the device reports HEALTHY (an event row as the ingest stores it), the controller
    # syncs it, and the open page shows it and the phase's gates without a reload
    mark_page(browser)
    with Session(hub_server.engine) as s:
        s.add(
            DeploymentEventRow(
                event_id=uuid.uuid4().hex,
                device_id=device_id,
                command_id=command_id,
                rollout_id=rollout.id,
                kind="healthy",
                model=MODEL,
                version="1",
                at=datetime.now(UTC),
            )
        )
        s.commit()
    rollout.controller.tick()
    wait_for(browser, lambda d: "healthy" in text(d, f"#rd-{device_id}"))
    wait_for(browser, _has("#gates-0 tr.gate"))
    gates = set(attrs(browser, "#gates-0 tr.gate", "data-gate"))
    assert {"install_failure_rate", "error_rate", "accuracy", "drift"} <= gates
    assert not_reloaded(browser)
    screenshot(browser, artifacts_dir, "rollout")

    # pause (confirmed), a cancelled resume, then resume
    _click_confirmed(browser, "pause")
    wait_for(browser, _has("#action-resume"))
    assert "pause: done" in text(browser, "#flash")
    assert _state(hub_server, rollout.id) == "paused"
    assert "paused" in text(browser, "#rollout-events")
    screenshot(browser, artifacts_dir, "rollout_paused")
    click(browser, "#action-resume")
    wait_for(browser, lambda d: d.switch_to.alert).dismiss()
    assert _state(hub_server, rollout.id) == "paused"
    _click_confirmed(browser, "resume")
    wait_for(browser, _has("#action-pause"))
    assert _state(hub_server, rollout.id) == "running"
    assert count(browser, "#action-resume") == 0


def test_read_only_token_sees_no_buttons_and_its_posts_are_refused(
    browser: Any, hub_server: Hub, rollout: StartedRollout
) -> None:
    from hub.security.api_tokens import create_token
    from hub.tables import ApiTokenCreate, TokenScope

    with Session(hub_server.engine) as s:
        _, token = create_token(s, spec=ApiTokenCreate(name="viewer", scope=TokenScope.READ))
        s.commit()
    sign_in(browser, hub_server.url, token, to=f"/ui/rollouts/{rollout.id}")
    wait_for(browser, _has("#timeline"))
    assert text(browser, "#scope") == "read"
    assert count(browser, "#actions") == 0 and count(browser, "button[id^=action-]") == 0
    before = _state(hub_server, rollout.id)
    status = browser.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const body = new URLSearchParams();
        body.set("csrf", document.querySelector("input[name=csrf]").value);
        fetch(arguments[0], {method: "POST", body: body, credentials: "same-origin"})
          .then(r => done(r.status));
        """,
        f"/ui/rollouts/{rollout.id}/pause",
    )
    assert status == 403
    assert _state(hub_server, rollout.id) == before


def test_monitoring_page_shows_what_monitor_status_shows(
    browser: Any, hub_server: Hub, artifacts_dir: Path
) -> None:
    """Windows the monitor has read for a version it cannot score (no bundle with a reference
    profile): ``monitor status`` lists them, and so does the page (it said "Nothing monitored
    yet")."""
    from hub.monitoring import evaluate
    from hub.monitoring.status import monitor_status
    from hub.tables import TelemetryWindowRow

    now = datetime.now(UTC)
    with Session(hub_server.engine) as s:
        for i in range(5):
            s.add(
                TelemetryWindowRow(
                    device_id=LAB_DEVICES[i % 2],
                    seq=900 + i,
                    model="quiet-model",
                    version="3",
                    window_start=now,
                    window_end=now,
                    count=40,
                )
            )
        s.commit()
    evaluate(hub_server.engine)
    with Session(hub_server.engine) as s:
        (status,) = monitor_status(s, model="quiet-model")["versions"]
    assert (status["windows"], status["predictions"], status["devices"]) == (5, 200, 2)
    assert status["scores"] == []
    sign_in(browser, hub_server.url, ADMIN_TOKEN, to="/ui/monitoring?model=quiet-model")
    row = "#status-quiet-model-3"
    wait_for(browser, _has(row))
    assert attrs(browser, row, "data-windows") == ["5"]
    assert attrs(browser, row, "data-predictions") == ["200"]
    assert "none yet" in text(browser, row)
    assert "Nothing monitored" not in text(browser, "main")
    assert "no scores yet" in text(browser, "#panel-quiet-model-3")
    # every version monitor status lists is on the unfiltered page, scored ones with charts
    browser.get(f"{hub_server.url}/ui/monitoring")
    wait_for(browser, _has(row))
    with Session(hub_server.engine) as s:
        listed = {f"{v['model']}@{v['version']}" for v in monitor_status(s)["versions"]}
    shown = {t.split()[0] for t in texts(browser, "#monitor-status tr.monitored")}
    assert shown == listed
    screenshot(browser, artifacts_dir, "monitoring_status")


def test_unverified_promotion_is_visible_on_the_rollout_and_registry_pages(
    browser: Any, hub_server: Hub, mosquitto: Any, artifacts_dir: Path
) -> None:
    """A rollout to the lab devices, which send no telemetry: it completes, production is
    not moved (no error-rate data); the operator promotes it anyway from the dashboard, and
    the rollout, the rollout list, the models page and the alias history say unverified."""
    from hub.core.db import session_scope
    from hub.rollouts import service
    from hub.rollouts.controller import RolloutController
    from hub.tables import DeploymentEventRow

    with session_scope(hub_server.engine) as s:
        rollout_id = service.create_rollout(
            s,
            model=MODEL,
            version=str(hub_server.world.version),
            selector="group:lab",
            phases="100%",
            bake_s=0,
        ).id
    controller = RolloutController(
        engine=hub_server.engine,
        mqtt_url=mosquitto.url,
        artifact_endpoint="127.0.0.1:1",
        fleet=f"ui-{uuid.uuid4().hex[:8]}",
    )
    controller.publisher.start()
    try:
        controller.tick()
        with session_scope(hub_server.engine) as s:
            for d in service.devices_of(s, rollout_id=rollout_id):
                s.add(
                    DeploymentEventRow(
                        event_id=uuid.uuid4().hex,
                        device_id=d.device_id,
                        command_id=d.command_id,
                        rollout_id=rollout_id,
                        kind="healthy",
                        at=datetime.now(UTC),
                    )
                )
        controller.tick()
    finally:
        controller.publisher.stop()
    assert _state(hub_server, rollout_id) == "completed"

    sign_in(browser, hub_server.url, ADMIN_TOKEN, to="/ui/rollouts")
    row = f"#rollout-{rollout_id} td.promotion"
    assert attrs(browser, row, "data-status") == ["withheld"]
    browser.get(f"{hub_server.url}/ui/rollouts/{rollout_id}")
    wait_for(browser, _has("#promotion"))
    assert attrs(browser, "#promotion", "data-status") == ["withheld"]
    assert "no data for error_rate" in text(browser, "#promotion")
    assert attrs(browser, "#promotion .evidence[data-gate=error_rate]", "data-state") == [
        "insufficient"
    ]
    screenshot(browser, artifacts_dir, "rollout_promotion_withheld")
    _click_confirmed(browser, "promote")  # the gates still have no data: refused, said why
    wait_for(browser, lambda d: "no data for error_rate" in text(d, "#flash"))
    assert attrs(browser, "#promotion", "data-status") == ["withheld"]
    _click_confirmed(browser, "promote_unverified")
    wait_for(browser, lambda d: attrs(d, "#promotion", "data-status") == ["unverified"])
    assert attrs(browser, "#promotion", "data-verified") == ["false"]
    assert count(browser, "#action-promote_unverified") == 0
    screenshot(browser, artifacts_dir, "rollout_promotion_unverified")

    browser.get(f"{hub_server.url}/ui/models")
    badge = f"#alias-{MODEL}-production"
    wait_for(browser, _has(badge))
    assert attrs(browser, badge, "data-promotion") == ["unverified"]
    assert "(unverified)" in text(browser, badge)
    browser.get(f"{hub_server.url}/ui/models/{MODEL}/{hub_server.world.version}")
    wait_for(browser, _has("#alias-history"))
    moves = attrs(browser, "#alias-history tr.alias-move", "data-promotion")
    assert moves[-1] == "unverified"
    last = texts(browser, "#alias-history tr.alias-move")[-1]
    assert rollout_id in last and "no data for error_rate" in last
