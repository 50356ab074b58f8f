"""The demo's narrative: every step of the loop, against a real hub and a simulated fleet."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from edgeloop_cli.demo import metrics
from edgeloop_cli.demo._fleet import EnrolledFleet, demo_scenario, enrolled_fleet, world_source
from edgeloop_cli.demo._hub import DemoError, HubProcess
from edgeloop_cli.demo._measure import RunRecord
from edgeloop_cli.demo._oracle import train_oracle
from edgeloop_cli.demo._report import write_report
from edgeloop_cli.demo._screens import rollout_screenshot
from edgeloop_cli.demo._timeline import Timeline
from edgeloop_cli.output import progress, progress_bar, stderr
from hub.datasets.sources import load_source
from simulators.scenario import DriftSpec

MODEL = "digits-cnn"
DATASET = "digits"
WINDOW_S = 2.0  # the fleet's telemetry window
FINAL = {"completed", "rolled_back", "cancelled"}
DRIFT_SITE = "berlin"
# per drift kind: the intensity the demo applies (each costs the first model >= 5 pp)
DRIFT_INTENSITY: dict[str, float] = {
    "rotation": 0.25,  # 22.5 degrees: the cameras get knocked askew
    "noise": 0.3,  # gaussian, std = 0.3 x the pixel range: a failing sensor
    "contrast": 0.6,  # 60% towards the mean: a dirty lens
    "knockout": 0.2,  # 20% of the pixels dead
    "scale": 0.3,  # 1.3x zoom: the cameras moved closer
}
DRIFT_STORY = {
    "rotation": "cameras get knocked askew (22.5 degree rotation)",
    "noise": "cameras' sensors get noisy (gaussian, std 30% of the range)",
    "contrast": "cameras' lenses get dirty (contrast down 60%)",
    "knockout": "cameras lose 20% of their pixels",
    "scale": "cameras get moved closer (1.3x zoom)",
}
AFTER_S = 60.0  # accuracy after promotion is measured over this fixed span
# a phase bakes this long: long enough for a p95 over the first seconds after a model swap
# (warm-up calls) to be measured on tens of predictions per device, not a handful
CANARY_BAKE_S = 15.0
LATENCY_TOLERANCE = 3.0  # the canary's p95 latency may grow 3x (default 0.5): see deviations()


@dataclass(frozen=True, kw_only=True)
class DemoOptions:
    data_dir: Path
    devices: int = 50
    drift_fraction: float = 0.4  # the share of devices at the drifting site
    drift: str = "rotation"
    seed: int = 0
    mqtt_url: str | None = None
    database_url: str | None = None
    baseline_s: float = 20.0  # accuracy before drift is measured this long
    after_s: float = AFTER_S  # ... and after the new version is promoted
    timeout_s: float = 600.0  # for each wait
    epochs: int | None = None  # None: the spec's default (a short test run uses fewer)
    # None: the policy's default; a short test run with few devices waits for fewer
    min_incident_records: int | None = None
    oracle: bool = True  # train the oracle (the report's bound on recovery)

    def __post_init__(self) -> None:
        if self.drift not in DRIFT_INTENSITY:
            raise DemoError(
                f"unknown drift kind {self.drift!r}; choose one of {', '.join(DRIFT_INTENSITY)}"
            )


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


def _promotion(view: dict[str, Any]) -> str:
    """A rollout's promotion in one phrase: status, alias and what its gates lacked."""
    promotion = view.get("promotion") or {}
    status, alias = promotion.get("status", "none"), promotion.get("alias", "")
    missing = (promotion.get("evidence") or {}).get("missing") or []
    return f"{status} ({alias})" + (f": no data for {', '.join(missing)}" if missing else "")


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


def deviations(options: DemoOptions) -> list[dict[str, str]]:
    """Every setting where the demo departs from the defaults, with the reason (printed and in
    the summary): the figures are only as good as the settings they were measured under."""
    from edgeloop_cli.demo._hub import FAST

    why = {
        "EDGELOOP_MONITOR_INTERVAL_S": "the demo's devices close a telemetry window every "
        f"{WINDOW_S:g} s (agents' default 10 s) so the loop turns in minutes; the monitor "
        "checks at the same pace",
        "EDGELOOP_MONITOR_WINDOW_SIZE": "windows of 100 predictions match the demo's faster "
        "telemetry (a device predicts 8 records a second)",
        "EDGELOOP_MONITOR_MIN_LABELS": "the demo's devices label half their predictions; 40 "
        "labels arrive within seconds per scope",
        "EDGELOOP_TRIGGER_INTERVAL_S": "policies are checked every 2 s (default 60 s) so a "
        "retrain starts seconds after its condition holds",
        "EDGELOOP_ROLLOUT_TICK_S": "the rollout controller ticks every 0.5 s (default 2 s) so "
        "phases advance as soon as their gates pass",
    }
    found = [
        {"setting": key, "value": value, "reason": why.get(key, "")} for key, value in FAST.items()
    ]
    found.append(
        {
            "setting": "canary phases / bake_s",
            "value": f"10%,100% / {CANARY_BAKE_S:g} s",
            "reason": "a short canary fits the demo's minutes; every gate keeps its default",
        }
    )
    found.append(
        {
            "setting": "canary gate max_latency_p95_increase",
            "value": str(LATENCY_TOLERANCE),
            "reason": "the simulated devices share this machine's cores with the hub, the "
            "retraining and the packaging: a canary's p95 over a 6 s bake measures that "
            "contention (measured: 1.1-5x), not the model; real devices own their CPU",
        }
    )
    found.append(
        {
            "setting": "policy on_new_data / on_new_code",
            "value": "false / false",
            "reason": "the story retrains on the drift incident only (field data would otherwise "
            "also count as new data)",
        }
    )
    if options.min_incident_records is not None:
        found.append(
            {
                "setting": "policy min_incident_records",
                "value": str(options.min_incident_records),
                "reason": "a short run whose few drifted devices label ~10 samples a second",
            }
        )
    if options.epochs is not None:
        found.append(
            {
                "setting": "epochs",
                "value": str(options.epochs),
                "reason": "a short run (tests); the spec's default is used otherwise",
            }
        )
    return found


async def _story(hub: HubProcess, options: DemoOptions, timeline: Timeline) -> dict[str, Any]:
    params = {"epochs": options.epochs} if options.epochs else {}
    first = await asyncio.to_thread(
        hub.post, f"/datasets/{DATASET}/versions", {"source": "sklearn:digits"}
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
        f"{trained['metrics']['test_accuracy']:.2f}% on its dataset's test split "
        f"(run {trained['run_id']})"
    )
    with progress("3. packaging: ONNX, int8 behind the accuracy gate, TFLite, signing"):
        bundle = await asyncio.to_thread(
            hub.post, f"/models/{MODEL}/versions/{trained['version']}/package", {}
        )
    say(f"[bold]3. bundle[/] {bundle['digest']} {bundle['size_bytes']} bytes, signed")
    for v in bundle["variants"]:
        say(f"   {v['file']:18s} {v['size_bytes']:>8d} B  accuracy {v['accuracy']:.2f}%")
    await asyncio.to_thread(
        hub.put,
        f"/triggers/policies/{MODEL}",
        {
            "spec": MODEL,
            "dataset": DATASET,
            "params": params,
            "on_new_data": False,
            "on_new_code": False,
            "field_data": True,
            **(
                {"min_incident_records": options.min_incident_records}
                if options.min_incident_records is not None
                else {}
            ),
            # every other policy setting and every gate: the defaults, but one (deviations())
            "canary": {
                "selector": "all",
                "phases": "10%,100%",
                "bake_s": CANARY_BAKE_S,
                "gates": {"max_latency_p95_increase": LATENCY_TOLERANCE},
            },
        },
    )
    say("[bold]4. policy[/] retrain on drift or degradation, with field data; canary the result")
    for d in deviations(options):
        say(f"   [dim]non-default {d['setting']} = {d['value']}: {d['reason']}[/]")

    scenario = demo_scenario(
        devices=options.devices,
        drift_fraction=options.drift_fraction,
        kind=options.drift,
        intensity=DRIFT_INTENSITY[options.drift],
        seed=options.seed,
    )
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
        say(
            f"   {done['state']}: every device serves {MODEL}@{trained['version']}; "
            f"promotion {_promotion(done)}"
        )
        await asyncio.sleep(options.baseline_s)
        timeline.mark("drift_onset")
        fleet.begin_drift()
        drifted = sorted(d for d, dev in fleet.devices.items() if dev.drifted)
        say(
            f"[bold]7. drift[/] {len(drifted)} devices at {DRIFT_SITE}: "
            f"{DRIFT_STORY[options.drift]}, now"
        )
        alert = await _wait(
            "a drift or degradation alert",
            lambda: hub.get("/monitor/alerts", model=MODEL),
            timeout_s=options.timeout_s,
        )
        timeline.mark("first_alert_seen")
        a = alert[0]
        say(
            f"[bold]8. alert[/] {a['kind']}: {a['detector']} on {a['scope']}: "
            f"score {a['score']:.3g} > threshold {a['threshold']:.3g}"
        )

        def triggered() -> Any:
            events = hub.get("/triggers/events", model=MODEL)["events"]
            return [e for e in events if e["kind"] in {"drift", "degradation"} and e["rollout_id"]]

        with progress("9. waiting for the new regime's labels, retraining, packaging, canary"):
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
        say(f"   promotion {_promotion(canary)}")
        with progress(f"11. measuring the promoted model for {options.after_s:.0f} s"):
            await asyncio.sleep(options.after_s)
        timeline.mark("end")
        open_after = [
            x
            for x in await asyncio.to_thread(hub.get, "/monitor/alerts", model=MODEL)
            if str(x.get("version")) == str(event.get("model_version"))
        ]
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
        groups = {d: dev.group.name for d, dev in fleet.devices.items()}
    return {
        "devices": options.devices,
        "drifted": drifted,
        "groups": groups,
        "first_version": str(trained["version"]),
        "second_version": str(event.get("model_version") or ""),
        "canary_state": canary["state"],
        "canary_reason": canary.get("reason") or "",
        "first_promotion": (done.get("promotion") or {}).get("status", ""),
        "canary_promotion": (canary.get("promotion") or {}).get("status", ""),
        "first_accuracy_test": trained["metrics"]["test_accuracy"],
        "counters": counters,
        "trigger": event,
        "open_alerts_on_new_version": [
            {k: x.get(k) for k in ("id", "scope", "detector", "kind")} for x in open_after
        ],
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
        record = RunRecord.collect(
            database_url=options.database_url or f"sqlite:///{options.data_dir / 'hub.db'}",
            artifact_url=(options.data_dir / "artifacts").as_uri(),
            model=MODEL,
            wall_t0=_wall_t0(timeline),
        )
    finally:
        hub.stop()
    summary = summarize(options, story=story, record=record, timeline=timeline)
    tell_figures(summary)
    summary["hub"] = hub.url
    summary["report"] = str(
        write_report(
            options.data_dir / "report",
            summary=summary,
            measured=record,
            timeline=timeline,
        )
    )
    return summary


def summarize(
    options: DemoOptions, *, story: dict[str, Any], record: RunRecord, timeline: Timeline
) -> dict[str, Any]:
    """The CLI contract (docs/LOOP_METRICS.md defines every figure)."""
    marks = timeline.marks
    onset = marks["drift_onset"]
    drifted = set(story["drifted"])
    groups: dict[str, str] = story["groups"]
    v1, v2 = story["first_version"], story["second_version"]
    trained = record.trained_anywhere
    rows = metrics.scoreable(record.labels, trained=trained)
    promoted = marks["canary_end"] if story["canary_state"] == "completed" else None
    periods = {
        "before": (marks["rollout1_end"], onset, {v1}),
        "during": (onset, marks["canary_start"], {v1}),
    }
    if promoted is not None:
        periods["after"] = (promoted, promoted + options.after_s, {v2})
    by_period = {
        name: metrics.cohort_accuracy(rows, drifted=drifted, start=lo, end=hi, versions=vs)
        for name, (lo, hi, vs) in periods.items()
    }
    by_cohort = {
        cohort: {p: by_period[p][cohort].as_dict() for p in by_period} for cohort in metrics.COHORTS
    }

    def acc(period: str, cohort: str = "fleet") -> float | None:
        return by_period[period][cohort].accuracy if period in by_period else None

    detected = metrics.detection(
        record.alerts,
        record.windows,
        onset=onset,
        drifted=drifted,
        groups=groups,
        served=record.served,
    )
    false = metrics.false_alarms(
        record.alerts, onset=onset, drifted=drifted, groups=groups, served=record.served
    )
    oracle = None
    world = world_source()
    if options.oracle and world.ids is not None:
        with progress("12. training the oracle (the report's bound; the hub never sees it)"):
            oracle = train_oracle(
                spec_name=MODEL,
                params={"epochs": options.epochs} if options.epochs else {},
                records=load_source("sklearn:digits"),
                dataset=DATASET,
                drift=DriftSpec(
                    kind=options.drift,
                    intensity=DRIFT_INTENSITY[options.drift],
                    fraction=len(drifted) / max(1, options.devices),
                ),
                world=world,
                eval_sources={s for s in world.ids.tolist() if s not in trained},
                drifted_share=len(drifted) / max(1, options.devices),
                seed=options.seed,
            )
    oracle_drifted = oracle.accuracy["drifted"] if oracle else None
    recovered = metrics.recovered_after(
        rows, onset=onset, drifted=drifted, target=oracle_drifted, versions={v2} if v2 else set()
    )
    summary: dict[str, Any] = {
        "devices": story["devices"],
        "drifted_devices": len(drifted),
        "drift": {
            "kind": options.drift,
            "intensity": DRIFT_INTENSITY[options.drift],
            "site": DRIFT_SITE,
        },
        "seed": options.seed,
        # the CLI contract's keys, with the meanings docs/LOOP_METRICS.md gives them
        "accuracy_before": acc("before"),
        "accuracy_during_drift": acc("during"),
        "accuracy_after": acc("after"),
        "drift_detected_after_windows": detected.windows_per_device,
        "canary_started_after_s": round(marks["canary_start"] - onset, 1),
        "recovered_after_s": recovered,
        # added by issue #16
        "detection_s": detected.detection_s,
        "detection_windows": detected.windows_per_device,
        "detection_windows_total": detected.windows_total,
        "first_alert": None
        if detected.alert is None
        else {
            "id": detected.alert.id,
            "scope": detected.alert.scope,
            "detector": detected.alert.detector,
            "kind": detected.alert.kind,
        },
        "false_alarms": len(false),
        "false_alarm_list": [
            {
                "id": a.id,
                "at_s_after_onset": round(a.t - onset, 1),
                "scope": a.scope,
                "detector": a.detector,
                "kind": a.kind,
                "version": a.version,
            }
            for a in false
        ],
        "accuracy_by_cohort": by_cohort,
        "oracle_accuracy": oracle.as_dict() if oracle else None,
        "drifted_after_vs_oracle": (
            round(acc("after", "drifted") / oracle_drifted, 4)  # type: ignore[operator]
            if oracle_drifted and acc("after", "drifted") is not None
            else None
        ),
        "clean_after_minus_before_pp": (
            round(acc("after", "clean") - acc("before", "clean"), 2)  # type: ignore[operator]
            if acc("after", "clean") is not None and acc("before", "clean") is not None
            else None
        ),
        "after_window_s": options.after_s,
        "scoreable_labels": len(rows),
        "labels": len(record.labels),
        "canary_state": story["canary_state"],
        "canary_reason": story["canary_reason"],
        # verified | unverified | withheld: whether production moved on the gates' evidence
        "first_promotion": story["first_promotion"],
        "canary_promotion": story["canary_promotion"],
        "open_alerts_on_new_version": story["open_alerts_on_new_version"],
        "versions": [v1, v2],
        "deviations": deviations(options),
        "fleet": story["counters"],
    }
    return summary


def _pct(cell: dict[str, Any] | None) -> str:
    if not cell or cell.get("accuracy") is None:
        return "n/a"
    lo, hi = cell["ci95"]
    sources = f"/{cell['sources']}" if cell.get("sources") else ""
    return f"{cell['accuracy']:.2f}% [{lo:.1f}, {hi:.1f}] n={cell['n']}{sources}"


def tell_figures(summary: dict[str, Any]) -> None:
    """The figures in words (docs/LOOP_METRICS.md defines each; --json has them all)."""
    say(
        "[bold]13. figures[/] (only inputs no model of the run was trained on; 95% intervals "
        "clustered by source record; n = labelled predictions/distinct sources)"
    )
    oracle = (summary.get("oracle_accuracy") or {}).get("accuracy") or {}
    for cohort, cells in summary["accuracy_by_cohort"].items():
        say(
            f"   {cohort:8s} before {_pct(cells.get('before'))} | during "
            f"{_pct(cells.get('during'))} | after {_pct(cells.get('after'))} | oracle "
            f"{oracle.get(cohort, 'n/a')}"
        )
    first = summary.get("first_alert") or {}
    say(
        f"   detection: {summary['detection_s']} s, {summary['detection_windows']} windows per "
        f"drifted device ({first.get('kind')} {first.get('detector')} on {first.get('scope')}); "
        f"false alarms {summary['false_alarms']}; canary after {summary['canary_started_after_s']}"
        f" s; recovered (drifted cohort within 1 pp of the oracle) after "
        f"{summary['recovered_after_s']} s; drifted after / oracle "
        f"{summary['drifted_after_vs_oracle']}"
    )


def _wall_t0(timeline: Timeline) -> datetime:
    """Wall-clock time of the timeline's zero (feedback rows carry wall-clock times)."""
    offset = time.time() - time.monotonic()
    return datetime.fromtimestamp(timeline.t0 + offset, tz=UTC)
