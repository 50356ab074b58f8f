"""The demo's simulated fleet: a scenario, devices enrolled over gRPC, real agents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edge_agent.enroll import Enrollment, enroll
from edgeloop_cli.demo._hub import HubProcess
from hub.datasets.sources import load_source
from simulators.fleet import Fleet
from simulators.scenario import (
    DataSpec,
    DriftSpec,
    FeedbackSpec,
    FleetSpec,
    GroupSpec,
    Scenario,
)
from simulators.sensors import DataSource

NEVER = 1e9  # drift waits for Fleet.begin_drift()
SITES = ("berlin", "paris", "lyon")  # the drift hits the first


def demo_scenario(
    *,
    devices: int,
    drift_fraction: float,
    kind: str = "rotation",
    intensity: float = 0.25,
    seed: int = 0,
) -> Scenario:
    """Three sites; every camera at the first (``drift_fraction`` of the fleet) drifts when the
    demo says so; half of the predictions get a label back a second later."""
    rest = (1.0 - drift_fraction) / (len(SITES) - 1)
    return Scenario(
        name="demo",
        seed=seed,
        fleet=FleetSpec(
            devices=devices,
            name="default",
            id_prefix="cam",
            telemetry_window_s=2.0,
            telemetry_tick_s=0.5,
            stagger_s=0.02,
        ),
        groups=[
            GroupSpec(name=site, fraction=drift_fraction if i == 0 else rest, tags={"site": site})
            for i, site in enumerate(SITES)
        ],
        data=DataSpec(rate_hz=2.0, batch=4),
        drift=[
            DriftSpec(
                kind=kind,
                intensity=intensity,
                fraction=1.0,
                start_s=NEVER,
                group=SITES[0],
            )
        ],
        feedback=FeedbackSpec(coverage=0.5, delay_s=1.0),
    )


def world_source() -> DataSource:
    """What the devices' cameras see: every digit, each with its record id as its source. The
    figures score only the digits in no training split of any model of the run (labels carry
    their source; field records share their source's split)."""
    records = load_source("sklearn:digits")
    return DataSource.from_arrays(records.features, records.labels, records.ids)


@dataclass(frozen=True, kw_only=True)
class EnrolledFleet:
    fleet: Fleet
    enrollments: dict[str, Enrollment]
    groups: dict[str, str]


def enrolled_fleet(hub: HubProcess, *, root: Path, scenario: Scenario) -> EnrolledFleet:
    """One enrolment token per site; every device trades it for its own MQTT login over the
    hub's gRPC ``DeviceService`` (as a real device would), then runs as a real agent."""
    probe = Fleet(root=root, mqtt_url="mqtt://127.0.0.1:1", public_key=root, scenario=scenario)
    groups = probe.assignments()
    tokens = {
        site: hub.post(
            "/enrollment-tokens",
            {
                "group": site,
                "tags": {"site": site, "hw": "sim"},
                "max_uses": len(groups),
                "name": f"demo {site}",
            },
        )["token"]
        for site in SITES
    }
    enrollments = {
        device: enroll(
            grpc_target=hub.grpc_endpoint,
            token=tokens[group],
            device_id=device,
            data_dir=root / "devices",
            capabilities={"runtimes": "onnxruntime,tflite"},
        )
        for device, group in groups.items()
    }
    first = next(iter(enrollments.values()))
    fleet = Fleet(
        root=root,
        mqtt_url=first.mqtt_url,
        public_key=first.public_key_file,
        scenario=scenario,
        source=world_source(),
        credentials=lambda d: (
            (enrollments[d].mqtt_username, enrollments[d].mqtt_password)
            if d in enrollments
            else None
        ),
        agent_options={"reservoir_size": 10, "probation_s": 2.0},
    )
    return EnrolledFleet(fleet=fleet, enrollments=enrollments, groups=groups)
