"""``edgeloop sim run``: a simulated fleet of real agents, driven by a scenario file.

Imports the simulator lazily (it pulls the agent, numpy and the gRPC server).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from edgeloop_cli._client import connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.errors import CliError
from edgeloop_cli.output import emit, stderr

app = typer.Typer(help="Simulated fleets of real edge agents.", no_args_is_help=True)


@app.command("run")
def run(
    ctx: typer.Context,
    scenario: Annotated[Path | None, typer.Option(help="scenario TOML file")] = None,
    devices: Annotated[int | None, typer.Option(help="fleet size (overrides the scenario)")] = None,
    duration: Annotated[float, typer.Option(help="seconds to run")] = 30.0,
    mqtt_url: Annotated[
        str | None, typer.Option(help="broker; unset: a private Mosquitto for the run")
    ] = None,
    bundle: Annotated[Path | None, typer.Option(help="a signed bundle to deploy")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="the key the bundle is signed with (hub public key)")
    ] = None,
    root: Annotated[
        Path | None, typer.Option(help="fleet folder (device state); default: a temp dir")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run a fleet for DURATION seconds; report messages sent / lost / duplicated (with
    --hub: also at the hub's ingest, and the hub's rollouts, detections and retraining)."""
    from simulators.errors import ScenarioError
    from simulators.runner import RunOptions, run_simulation
    from simulators.scenario import Scenario, load_scenario

    try:
        spec = load_scenario(scenario) if scenario is not None else Scenario()
    except ScenarioError as exc:
        raise CliError(str(exc), code="invalid_input") from exc
    if devices is not None:
        if devices < 1:
            raise CliError("--devices must be at least 1", code="invalid_input")
        spec = spec.with_devices(devices)
    register = _registrar(ctx)
    options = RunOptions(
        scenario=spec,
        duration_s=duration,
        root=root,
        mqtt_url=mqtt_url,
        bundle=bundle,
        public_key=public_key,
        register=register,
        hub_stats=_hub_stats(ctx),
        # a real hub acks what it stores: devices keep each message until it has it
        agent_options={"delivery": "hub_ack"} if register is not None else None,
    )
    stderr.print(f"simulating {spec.fleet.devices} device(s) for {duration:g} s ({spec.name})")
    started = datetime.now(UTC)
    try:
        report: dict[str, Any] = asyncio.run(run_simulation(options))
    except ValueError as exc:
        raise CliError(str(exc), code="invalid_input") from exc
    where = target(ctx)
    if where.hub_url:  # what the hub made of it: rollouts, detections, retraining
        from edgeloop_cli._sim_story import hub_story

        with connect(where) as client:
            report.setdefault("hub", {}).update(hub_story(client.get, since=started))
    emit(report, as_json=as_json)


def _hub_stats(ctx: typer.Context) -> Any:
    """With ``--hub``, the hub's ingest view, so the report counts loss at the hub too."""
    where = target(ctx)
    if not where.hub_url:
        return None

    def stats() -> dict[str, Any]:
        with connect(where) as client:
            body: dict[str, Any] = client.get("/ingest/stats")
            return body

    return stats


def _registrar(ctx: typer.Context) -> Any:
    """With ``--hub``, register each simulated device (an existing one is left as it is)."""
    where = target(ctx)
    if not where.hub_url:
        return None

    def register(device_id: str, group: str, tags: dict[str, str]) -> None:
        with connect(where) as client:
            try:
                client.post("/devices", json={"id": device_id, "group": group, "tags": tags})
            except CliError as exc:
                if exc.code != "conflict":
                    raise

    return register
