"""``edgeloop agent ...``: run the device agent, or score a file with a bundle (batch job).

Imports only what ``pip install edgeloop[agent]`` brings (no torch, no hub server parts).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from edgeloop_cli._common import JsonFlag, parse_pairs
from edgeloop_cli.output import emit, progress_bar, stderr
from hub.core.errors import BundleRejected, InvalidInput
from hub.core.redact import redact_url

app = typer.Typer(help="The device agent.", no_args_is_help=True)


@app.command("run")
def run(
    device_id: Annotated[str, typer.Option("--device-id", help="this device's stable id")],
    mqtt_url: Annotated[str | None, typer.Option(help="broker, e.g. mqtt://hub:1883")] = None,
    public_key: Annotated[
        Path | None, typer.Option(help="the hub's bundle public key file")
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--agent-dir", help="slots, queue, state")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="serve the local inference API on 127.0.0.1:PORT")
    ] = None,
    fleet: Annotated[str | None, typer.Option(help="fleet name in the topic prefix")] = None,
    capability: Annotated[
        list[str] | None, typer.Option("--capability", help="key=value, repeatable")
    ] = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (settings also from EDGELOOP_AGENT_* variables)."""
    from edge_agent.agent import Agent
    from edge_agent.settings import AgentSettings

    overrides: dict[str, object] = {
        "device_id": device_id,
        "mqtt_url": mqtt_url,
        "public_key": public_key,
        "data_dir": data_dir,
        "http_port": http_port,
        "fleet": fleet,
    }
    if capability:
        overrides["capabilities"] = parse_pairs(capability, what="capability")
    settings = AgentSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    async def main() -> None:
        async with Agent(settings=settings) as agent:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.stop()))
            stderr.print(
                f"agent {settings.device_id} on {redact_url(settings.mqtt_url)}"
                + (f", local API http://127.0.0.1:{agent.http_port}" if agent.http_port else "")
            )
            await agent.wait_stopped()

    asyncio.run(main())


@app.command("enroll")
def enroll(
    grpc_target: Annotated[str, typer.Option("--grpc", help="the hub's gRPC address host:port")],
    token: Annotated[str, typer.Option(help="enrolment token from the hub admin")],
    device_id: Annotated[str, typer.Option("--device-id", help="this device's id")],
    data_dir: Annotated[
        Path, typer.Option("--data-dir", "--agent-dir", help="the agent's folder")
    ] = Path("~/.edgeloop-agent"),
    capability: Annotated[
        list[str] | None, typer.Option("--capability", help="key=value, repeatable")
    ] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="key=value, repeatable")] = None,
    ca_file: Annotated[
        Path | None, typer.Option("--ca-file", help="the hub's CA certificate: enrol over TLS")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Enrol with the hub: store MQTT login + hub public key for `agent run` (0600 files)."""
    from edge_agent.enroll import EnrollError
    from edge_agent.enroll import enroll as run_enroll
    from edgeloop_cli.errors import CliError

    try:
        done = run_enroll(
            grpc_target=grpc_target,
            token=token,
            device_id=device_id,
            data_dir=data_dir,
            capabilities=parse_pairs(capability, what="capability"),
            tags=parse_pairs(tag, what="tag"),
            ca_file=ca_file,
        )
    except EnrollError as exc:
        raise CliError(str(exc), code=exc.code) from exc
    emit(done.summary(), as_json=as_json)


@app.command("predict-batch")
def predict_batch(
    bundle: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="signed bundle")],
    inputs: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=".npz or .csv")],
    output: Annotated[Path, typer.Argument(help=".npz or .csv to write")],
    public_key: Annotated[Path, typer.Option(help="the hub's bundle public key file")],
    as_json: JsonFlag = False,
) -> None:
    """Verify BUNDLE and run it over every record of INPUTS (a short-running batch job)."""
    from edge_agent.batch import BatchError
    from edge_agent.batch import predict_batch as run_batch
    from model_packager.bundle import BundleError
    from model_packager.signing import KeyMaterialError, load_public_key

    try:
        key = load_public_key(public_key)
    except KeyMaterialError as exc:
        raise InvalidInput(f"--public-key {public_key}: {exc}") from exc
    with progress_bar(transient=as_json) as bar:
        task = bar.add_task("scoring", total=None)
        try:
            summary = run_batch(
                bundle=bundle,
                public_key=key,
                inputs=inputs,
                output=output,
                progress=lambda done, total: bar.update(task, completed=done, total=total),
            )
        except BundleError as exc:
            raise BundleRejected(f"{bundle}: {exc}") from exc
        except (BatchError, ValueError) as exc:
            raise InvalidInput(str(exc)) from exc
    emit(summary.as_dict() if hasattr(summary, "as_dict") else vars(summary), as_json=as_json)
