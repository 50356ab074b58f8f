"""The demo's simulated fleet: a scenario, devices enrolled over gRPC, real agents."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge_agent.enroll import Enrollment, enroll
from hub.datasets.sources import load_source
from hub.datasets.splits import assign_splits
from hub.demo._hub import HubProcess
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
SITES = ("berlin", "paris")


def demo_scenario(*, devices: int, drift_fraction: float, seed: int = 0) -> Scenario:
    """Two sites; a share of the devices gets a rotation drift (cameras knocked askew) when
    the demo says so; half of the predictions get a label back a second later."""
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
            GroupSpec(name=site, fraction=1 / len(SITES), tags={"site": site}) for site in SITES
        ],
        data=DataSpec(rate_hz=2.0, batch=4),
        drift=[DriftSpec(kind="rotation", intensity=0.25, fraction=drift_fraction, start_s=NEVER)],
        feedback=FeedbackSpec(coverage=0.5, delay_s=1.0),
    )


def held_out_source(*, dataset: str = "digits") -> DataSource:
    """What the devices' sensors see: the digits the model was *not* trained on (the val and
    test splits, by the same stable hash rule the hub uses)."""
    records = load_source("sklearn:digits")
    split = assign_splits(
        records.ids, fractions={"train": 0.7, "val": 0.15, "test": 0.15}, salt=dataset
    )
    keep = np.asarray(split) != "train"
    labels = records.labels[keep] if records.labels is not None else None
    return DataSource.from_arrays(records.features[keep], labels)


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
        source=held_out_source(),
        credentials=lambda d: (
            (enrollments[d].mqtt_username, enrollments[d].mqtt_password)
            if d in enrollments
            else None
        ),
        agent_options={"reservoir_size": 10, "probation_s": 2.0},
    )
    return EnrolledFleet(fleet=fleet, enrollments=enrollments, groups=groups)
