"""Scenario files: what a simulated fleet does, declared in TOML and validated with pydantic.

    scenario = load_scenario(Path("simulators/scenarios/drift.toml"))

Every table refuses unknown keys, so a typo is an error that names the key and its table
(``ScenarioError`` carries pydantic's message with the file name). See
``simulators/README.md`` for the format.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from simulators.errors import ScenarioError

DriftKind = Literal[
    "noise",
    "rotation",
    "contrast",
    "brightness",
    "knockout",
    "scale",
    "label_shift",
    "unseen_class",
]
FaultKind = Literal["disconnect", "partition", "broker_restart"]
BadBundleKind = Literal["tampered", "unhealthy", "foreign"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FleetSpec(_Strict):
    devices: int = Field(default=20, ge=1, le=100_000)
    name: str = Field(default="sim", pattern=r"^[A-Za-z0-9_.-]+$", description="topic fleet")
    id_prefix: str = Field(default="sim", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,100}$")
    stagger_s: float = Field(default=0.005, ge=0, description="pause between device starts")
    telemetry_window_s: float = Field(default=10.0, gt=0)
    telemetry_tick_s: float = Field(default=1.0, gt=0)
    keepalive_s: int = Field(default=60, ge=5)
    mqtt_protocol: Literal["3.1.1", "5"] = "3.1.1"


class GroupSpec(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    fraction: float = Field(gt=0, le=1, description="share of the fleet in this group")
    tags: dict[str, str] = Field(default_factory=dict)
    runtime: Literal["onnx", "tflite"] = "onnx"
    slow_cpu_ms: float = Field(default=0.0, ge=0, description="extra time per inference")
    network: Literal["direct", "flaky"] = "direct"


class DataSpec(_Strict):
    source: str = Field(
        default="sklearn:digits", description="'sklearn:digits' or a dataset-version .npz path"
    )
    rate_hz: float = Field(default=1.0, gt=0, le=1000, description="predictions per device")
    batch: int = Field(default=1, ge=1, le=1024, description="records per predict call")


class DriftSpec(_Strict):
    kind: DriftKind
    intensity: float = Field(default=0.5, ge=0, le=1)
    fraction: float = Field(default=0.3, ge=0, le=1, description="share of devices drifted")
    start_s: float = Field(default=0.0, ge=0, description="seconds after the fleet starts")
    group: str | None = None
    classes: list[int] = Field(
        default_factory=list,
        description="label_shift: favoured classes; unseen_class: classes held out until then",
    )


class FeedbackSpec(_Strict):
    coverage: float = Field(default=0.0, ge=0, le=1, description="share of predictions labelled")
    delay_s: float = Field(default=5.0, ge=0)


class FaultSpec(_Strict):
    kind: FaultKind
    at_s: float = Field(ge=0)
    duration_s: float = Field(default=5.0, ge=0)
    group: str | None = Field(
        default=None, description="disconnect/partition: a group with network = 'flaky'"
    )


class ChurnSpec(_Strict):
    interval_s: float = Field(default=0.0, ge=0, description="0: no restarts")
    fraction: float = Field(default=0.05, ge=0, le=1, description="devices restarted per round")
    down_s: float = Field(default=1.0, ge=0)
    leave_fraction: float = Field(default=0.0, ge=0, le=1, description="leave for good")
    leave_at_s: float = Field(default=0.0, ge=0)
    join: int = Field(default=0, ge=0, description="devices that join late")
    join_at_s: float = Field(default=0.0, ge=0)


class BadBundleSpec(_Strict):
    fraction: float = Field(default=0.0, ge=0, le=1)
    kind: BadBundleKind = "tampered"


class Scenario(_Strict):
    name: str = "scenario"
    seed: int = 0
    fleet: FleetSpec = FleetSpec()
    groups: list[GroupSpec] = Field(default_factory=list)
    data: DataSpec = DataSpec()
    drift: list[DriftSpec] = Field(default_factory=list)
    feedback: FeedbackSpec = FeedbackSpec()
    faults: list[FaultSpec] = Field(default_factory=list)
    churn: ChurnSpec = ChurnSpec()
    bad_bundles: BadBundleSpec = BadBundleSpec()

    @model_validator(mode="after")
    def _consistent(self) -> Scenario:
        names = [g.name for g in self.groups]
        if len(set(names)) != len(names):
            raise ValueError(f"group names must be unique, got {names}")
        total = sum(g.fraction for g in self.groups)
        if self.groups and total > 1.0 + 1e-9:
            raise ValueError(f"group fractions add up to {total:g}, more than 1")
        flaky = {g.name for g in self.groups if g.network == "flaky"}
        for where, group in [("drift", d.group) for d in self.drift] + [
            ("faults", f.group) for f in self.faults
        ]:
            if group is not None and group not in names:
                raise ValueError(f"{where}: unknown group {group!r}; groups: {names}")
        for fault in self.faults:
            if fault.kind != "broker_restart" and fault.group not in flaky:
                raise ValueError(
                    f"a {fault.kind} fault needs a group with network = 'flaky' "
                    f"(faults go through its proxy); flaky groups: {sorted(flaky)}"
                )
        return self

    def with_devices(self, devices: int) -> Scenario:
        return self.model_copy(update={"fleet": self.fleet.model_copy(update={"devices": devices})})


def parse_scenario(text: str, *, where: str = "<scenario>") -> Scenario:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{where}: not valid TOML: {exc}") from exc
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{where}: {exc}") from exc


def load_scenario(path: Path) -> Scenario:
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    return parse_scenario(text, where=str(path))
