"""The demo's narrative: every step of the loop, against a real hub and a simulated fleet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from hub.cli._output import progress, progress_bar, stderr
from hub.demo._fleet import EnrolledFleet, demo_scenario, enrolled_fleet
from hub.demo._hub import DemoError, HubProcess
from hub.demo._measure import Measurements
from hub.demo._report import write_report
from hub.demo._screens import rollout_screenshot

MODEL = "digits-cnn"
WINDOW_S = 2.0  # the fleet's telemetry window
FINAL = {"completed", "rolled_back", "cancelled"}


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    data_dir: Path
    devices: int = 50
    drift_fraction: float = 0.4
    mqtt_url: str | None = None
    database_url: str | None = None
    baseline_s: float = 15.0  # accuracy before drift is measured this long
    after_s: float = 15.0  # ... and after the canary completes
    timeout_s: float = 600.0  # for each wait
    epochs: int | None = None  # None: the spec's default (a short test run uses fewer)


@dataclass
class Timeline:
    t0: float = field(default_factory=time.monotonic)
    marks: dict[str, float] = field(default_factory=dict)
    rollouts: dict[str, list[tuple[float, int, int]]] = field(default_factory=dict)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def mark(self, name: str) -> float:
        self.marks[name] = self.now()
        return self.marks[name]


def say(text: str) -> None:
    stderr.print(text)


async def _wait(
    what: str, check: Callable[[], Any], *, timeout_s: float, every: float = 1.0
) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(every)
    raise DemoError(f"gave up after {timeout_s:.0f} s waiting for {what}")


def _value(value: object) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3g}" if isinstance(value, float) else str(value)


async def _follow_rollout(
    hub: HubProcess, rollout_id: str, *, timeline: Timeline, total: int, timeout_s: float
) -> dict[str, Any]:
    """Poll a rollout to its end, drawing a bar of healthy devices and noting each phase."""
    samples = timeline.rollouts.setdefault(rollout_id, [])
    seen_phases: set[tuple[int, str]] = set()
    deadline = time.monotonic() + timeout_s
    with progress_bar(transient=False) as bar:
        task = bar.add_task(f"rollout {rollout_id}", total=total)
        while True:
            view = await asyncio.to_thread(hub.get, f"/rollouts/{rollout_id}")
            states = view["device_states"]
            healthy = int(states.get("healthy", 0))
            samples.append((timeline.now(), healthy, len(view["devices"])))
            bar.update(task, completed=healthy, total=max(total, len(view["devices"])))
            for phase in view["phases"]:
                key = (int(phase["index"]), str(phase["state"]))
                if key not in seen_phases and phase["state"] in {"passed", "failed"}:
                    seen_phases.add(key)
                    gates = ", ".join(
                        f"{g['name']} {_value(g.get('value'))}" for g in phase.get("gates", [])
                    )
                    bar.console.print(
                        f"  phase {phase['index'] + 1} ({phase['size']}): {phase['state']}"
                        + (f" — gates: {gates}" if gates else "")
                    )
            if view["state"] in FINAL:
                return dict(view)
            if time.monotonic() > deadline:
                raise DemoError(f"rollout {rollout_id} still {view['state']} after {timeout_s} s")
            await asyncio.sleep(1.0)


async def _story(hub: HubProcess, options: DemoOptions, timeline: Timeline) -> dict[str, Any]:
    params = {"epochs": options.epochs} if options.epochs else {}
    first = await asyncio.to_thread(
        hub.post, "/datasets/digits/versions", {"source": "sklearn:digits"}
    )
    say(
        f"[bold]1. dataset[/] {first['ref']}: {first['num_records']} records, splits "
        f"{first['splits']}, validation {first['validation_status']}"
    )
    with progress(f"2. training {MODEL} on {first['ref']}"):
        trained = await asyncio.to_thread(
            hub.post,
            "/training-runs",
            {"spec": MODEL, "dataset": first["ref"], "params": params},
        )
    say(
        f"[bold]2. trained[/] {trained['model']}@{trained['version']}: test accuracy "
        f"{trained['metrics']['test_accuracy']:.2f}% (run {trained['run_id'][:8]})"
    )
    with progress("3. packaging: ONNX, int8 behind the accuracy gate, TFLite, signing"):
        bundle = await asyncio.to_thread(
            hub.post, f"/models/{MODEL}/versions/{trained['version']}/package", {}
        )
    say(f"[bold]3. bundle[/] {bundle['digest'][:19]}… {bundle['size_bytes']} bytes, signed")
    for v in bundle["variants"]:
        say(f"   {v['file']:18s} {v['size_bytes']:>8d} B  accuracy {v['accuracy']:.2f}%")
    await asyncio.to_thread(
        hub.put,
        f"/triggers/policies/{MODEL}",
        {
            "spec": MODEL,
            "dataset": "digits",
            "params": params,
            "on_new_data": False,
            "on_new_code": False,
            "field_data": True,
            "min_field_records": 150,
            "debounce_s": 60,
            "canary": {
                "selector": "all",
                "phases": "10%,100%",
                "bake_s": 6,
                "min_reporting": 2,
                # the drift is the incident being answered: judge the canary on accuracy,
                # against the old model's accuracy under the same drift (the last 40 s)
                "gates": {
                    "max_drift_alerts": 1_000_000,
                    "min_labels": 15,
                    "baseline_lookback_s": 40,
                    # 50 simulated devices share 2 cores with the hub: latency is noisy here
                    "max_latency_p95_increase": 3.0,
                },
            },
        },
    )
    say("[bold]4. policy[/] retrain on drift or degradation, with field data; canary the result")

    scenario = demo_scenario(devices=options.devices, drift_fraction=options.drift_fraction)
    root = options.data_dir / "fleet"
    enrolled: EnrolledFleet = await asyncio.to_thread(
        enrolled_fleet, hub, root=root, scenario=scenario
    )
    say(f"[bold]5. fleet[/] {len(enrolled.enrollments)} devices enrolled over gRPC")
    async with enrolled.fleet as fleet:
        online = await _wait(
            "devices online",
            lambda: sum(d["online"] for d in hub.get("/devices")) >= options.devices,
            timeout_s=options.timeout_s,
        )
        say(f"   all online (their own MQTT logins; the broker's ACL fences each) {online}")
        ro = await asyncio.to_thread(
            hub.post,
            "/rollouts",
            {
                "model": MODEL,
                "version": str(trained["version"]),
                "selector": "all",
                "phases": "1,10%,50%,100%",
                "bake_s": 3,
                "min_reporting": 1,
            },
        )
        say(f"[bold]6. rollout[/] {ro['id']}: {MODEL}@{trained['version']} in 1, 10%, 50%, 100%")
        timeline.mark("rollout1_start")
        done = await _follow_rollout(
            hub, ro["id"], timeline=timeline, total=options.devices, timeout_s=options.timeout_s
        )
        timeline.mark("rollout1_end")
        if done["state"] != "completed":
            raise DemoError(f"the first rollout ended {done['state']}: {done.get('reason')}")
        say(f"   {done['state']}: every device serves {MODEL}@{trained['version']}")
        await asyncio.sleep(options.baseline_s)
        timeline.mark("drift_onset")
        fleet.begin_drift()
        drifted = sum(1 for d in fleet.devices.values() if d.drifted)
        say(f"[bold]7. drift[/] {drifted} devices' cameras get knocked askew (22° rotation) now")
        alert = await _wait(
            "a drift or degradation alert",
            lambda: hub.get("/monitor/alerts", model=MODEL),
            timeout_s=options.timeout_s,
        )
        timeline.mark("detected")
        a = alert[0]
        after = timeline.marks["detected"] - timeline.marks["drift_onset"]
        say(
            f"[bold]8. detected[/] {a['kind']}: {a['detector']} on {a['scope']}: "
            f"score {a['score']:.3g} > "
            f"threshold {a['threshold']:.3g}, {after:.1f} s after onset"
        )

        def triggered() -> Any:
            events = hub.get("/triggers/events", model=MODEL)["events"]
            return [e for e in events if e["kind"] in {"drift", "degradation"} and e["rollout_id"]]

        with progress("9. retraining on field samples + labels, packaging, starting a canary"):
            events = await _wait("a retraining run", triggered, timeout_s=options.timeout_s)
        event = events[0]
        timeline.mark("canary_start")
        say(f"[bold]9. retrained[/] {event['kind']} trigger: {event['reason']}")
        say(f"   {event['detail']}")
        canary = await _follow_rollout(
            hub,
            str(event["rollout_id"]),
            timeline=timeline,
            total=options.devices,
            timeout_s=options.timeout_s,
        )
        timeline.mark("canary_end")
        say(f"[bold]10. canary[/] {canary['state']} ({canary.get('reason') or 'all gates passed'})")
        await asyncio.sleep(options.after_s)
        timeline.mark("end")
        shot = await asyncio.to_thread(
            rollout_screenshot,
            hub_url=hub.url,
            token=hub.token,
            rollout_id=str(event["rollout_id"]),
            out=options.data_dir / "report" / "dashboard-rollout.png",
        )
        if shot is not None:
            say(f"   dashboard: {hub.url}/ui/rollouts/{event['rollout_id']} (screenshot {shot})")
        counters = fleet.counters()
    return {
        "devices": options.devices,
        "drifted_devices": drifted,
        "first_version": str(trained["version"]),
        "second_version": str(event.get("model_version") or ""),
        "canary_state": canary["state"],
        "canary_reason": canary.get("reason") or "",
        "first_accuracy_test": trained["metrics"]["test_accuracy"],
        "counters": counters,
        "alert": a,
        "trigger": event,
    }


def run_demo(options: DemoOptions) -> dict[str, Any]:
    """Run the whole loop; returns the CLI contract's summary (``edgeloop demo --json``)."""
    options.data_dir.mkdir(parents=True, exist_ok=True)
    hub = HubProcess(
        data_dir=options.data_dir,
        mqtt_url=options.mqtt_url,
        database_url=options.database_url,
    )
    timeline = Timeline()
    hub.start()
    try:
        say(
            f"[bold]hub[/] {hub.url} (docs {hub.url}/docs, dashboard {hub.url}/ui), "
            f"MQTT {hub.health['mqtt']['broker']}, gRPC {hub.health['grpc']}"
        )
        story = asyncio.run(_story(hub, options, timeline))
        measured = Measurements.collect(
            database_url=options.database_url or f"sqlite:///{options.data_dir / 'hub.db'}",
            model=MODEL,
            timeline=timeline,
            wall_t0=_wall_t0(timeline),
        )
    finally:
        hub.stop()
    marks = timeline.marks
    onset = marks["drift_onset"]
    summary = {
        "devices": story["devices"],
        "accuracy_before": measured.accuracy_before,
        "accuracy_during_drift": measured.accuracy_during,
        "accuracy_after": measured.accuracy_after,
        "drift_detected_after_windows": round((marks["detected"] - onset) / WINDOW_S, 1),
        "canary_started_after_s": round(marks["canary_start"] - onset, 1),
        "recovered_after_s": round(marks["canary_end"] - onset, 1),
        "canary_state": story["canary_state"],
        "canary_reason": story["canary_reason"],
        "versions": [story["first_version"], story["second_version"]],
        "fleet": story["counters"],
        "hub": hub.url,
    }
    summary["report"] = str(
        write_report(
            options.data_dir / "report",
            summary=summary,
            measured=measured,
            timeline=timeline,
        )
    )
    return summary


def _wall_t0(timeline: Timeline) -> datetime:
    """Wall-clock time of the timeline's zero (feedback rows carry wall-clock times)."""
    offset = time.time() - time.monotonic()
    return datetime.fromtimestamp(timeline.t0 + offset, tz=UTC)
