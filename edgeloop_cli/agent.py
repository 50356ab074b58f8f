"""``edgeloop agent ...``: run the device agent, or score a file with a bundle (batch job).

Imports only what ``pip install edgeloop[agent]`` brings (no torch, no hub server parts).
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated

import typer

from edge_agent.paths import DEFAULT_DATA_DIR, ENROLLMENT_FILE
from edgeloop_cli._common import JsonFlag, parse_pairs
from edgeloop_cli.output import emit, progress_bar, stderr
from hub.core.errors import BundleRejected, InvalidInput

app = typer.Typer(help="The device agent.", no_args_is_help=True)


DEFAULT_GRPC = "127.0.0.1:50051"  # a local `edgeloop hub serve` (its --grpc-port)
AgentDirOpt = Annotated[
    Path,
    typer.Option(
        "--agent-dir",
        "--data-dir",
        envvar="EDGELOOP_AGENT_DATA_DIR",
        help="the agent's state folder: login, hub key, model slots, outbound queue "
        "(one subfolder per device)",
    ),
]
GrpcOpt = Annotated[
    str,
    typer.Option(
        "--grpc", help="the hub's gRPC address host:port for enrolment (hub serve prints it)"
    ),
]
CapabilityOpt = Annotated[
    list[str] | None, typer.Option("--capability", help="key=value, repeatable")
]
TagOpt = Annotated[
    list[str] | None, typer.Option("--tag", help="key=value, repeatable (sent at enrolment)")
]
CaFileOpt = Annotated[
    Path | None,
    typer.Option("--ca-file", help="the hub's CA certificate: TLS (enrolment stores it)"),
]


def _say(text: str) -> None:
    """One line on stderr, never wrapped (paths and commands are copied from it)."""
    stderr.print(text, soft_wrap=True, markup=False, highlight=False)


def _enroll(
    *,
    grpc_target: str,
    token: str,
    device_id: str,
    data_dir: Path,
    capabilities: dict[str, str],
    tags: dict[str, str],
    ca_file: Path | None,
) -> dict[str, object]:
    """Enrol (``edge_agent.enroll``); a refusal becomes a CliError that says what to do."""
    from edge_agent.enroll import EnrollError
    from edge_agent.enroll import enroll as run_enroll
    from edgeloop_cli.errors import CliError

    try:
        done = run_enroll(
            grpc_target=grpc_target,
            token=token,
            device_id=device_id,
            data_dir=data_dir,
            capabilities=capabilities,
            tags=tags,
            ca_file=ca_file,
        )
    except EnrollError as exc:
        raise CliError(f"{exc}; {_enroll_advice(exc.code, grpc_target)}", code=exc.code) from exc
    return done.summary()


def _enroll_advice(code: str, grpc_target: str) -> str:
    if code in {"unavailable", "deadline_exceeded"}:
        return (
            f"is the hub running and is {grpc_target} its gRPC address (--grpc HOST:PORT; "
            "`edgeloop hub serve` prints it, default port 50051)? With TLS on, add --ca-file"
        )
    if code in {"unauthenticated", "permission_denied"}:
        return "a new token comes from `edgeloop --hub http://HUB:8000 device token create`"
    return "check the device id and the options, then try again"


@app.command("run")
def run(
    device_id: Annotated[str, typer.Option("--device-id", help="this device's stable id")],
    mqtt_url: Annotated[
        str | None, typer.Option(help="broker, e.g. mqtt://hub:1884 (enrolment stores it)")
    ] = None,
    public_key: Annotated[
        Path | None,
        typer.Option(help="the hub's bundle public key file (enrolment stores it)"),
    ] = None,
    data_dir: AgentDirOpt = DEFAULT_DATA_DIR,
    http_port: Annotated[
        int | None, typer.Option(help="serve the local inference API on 127.0.0.1:PORT")
    ] = None,
    fleet: Annotated[str | None, typer.Option(help="fleet name in the topic prefix")] = None,
    capability: CapabilityOpt = None,
    enroll_token: Annotated[
        str | None,
        typer.Option(
            "--enroll-token",
            envvar="EDGELOOP_AGENT_ENROLL_TOKEN",
            show_default=False,
            help="enrol first with this token (`edgeloop device token create` on the hub); "
            "skipped when the state folder already holds this device's login. The variable "
            "keeps it out of the process list",
        ),
    ] = None,
    grpc_target: GrpcOpt = DEFAULT_GRPC,
    tag: TagOpt = None,
    ca_file: CaFileOpt = None,
) -> None:
    """Run the agent until SIGTERM/SIGINT (settings also from EDGELOOP_AGENT_* variables).

    The state folder is ~/.edgeloop-agent unless --agent-dir says otherwise. With
    --enroll-token it enrols first (like `agent enroll`), then runs: one step for a new device.
    """
    from edge_agent.agent import Agent
    from edge_agent.enroll import stored_enrollment
    from edge_agent.settings import AgentSettings, shown_url

    folder = data_dir.expanduser().resolve()
    capabilities = parse_pairs(capability, what="capability")
    _say(f"agent {device_id}: state folder {folder / device_id} (--agent-dir {folder})")
    if enroll_token:
        if stored_enrollment(folder, device_id) is not None:
            _say(
                f"already enrolled ({folder / device_id / ENROLLMENT_FILE}): "
                "--enroll-token not used"
            )
        else:
            _enroll(
                grpc_target=grpc_target,
                token=enroll_token,
                device_id=device_id,
                data_dir=folder,
                capabilities=capabilities,
                tags=parse_pairs(tag, what="tag"),
                ca_file=ca_file,
            )
            _say(f"enrolled at {grpc_target}: login kept in {folder / device_id}")
    overrides: dict[str, object] = {
        "device_id": device_id,
        "mqtt_url": mqtt_url,
        "public_key": public_key,
        "data_dir": folder,
        "http_port": http_port,
        "fleet": fleet,
        "ca_file": ca_file,
    }
    if capability:
        overrides["capabilities"] = capabilities
    settings = AgentSettings(**{k: v for k, v in overrides.items() if v is not None})  # type: ignore[arg-type]

    async def main() -> None:
        async with Agent(settings=settings) as agent:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, lambda: asyncio.ensure_future(agent.stop()))
            _say(
                f"agent {settings.device_id} on {shown_url(settings.mqtt_url)}"
                + (f", local API http://127.0.0.1:{agent.http_port}" if agent.http_port else "")
            )
            await agent.wait_stopped()

    asyncio.run(main())


@app.command("enroll")
def enroll(
    token: Annotated[
        str,
        typer.Option(
            envvar="EDGELOOP_AGENT_ENROLL_TOKEN",
            show_default=False,
            help="enrolment token from the hub admin (`edgeloop device token create`)",
        ),
    ],
    device_id: Annotated[str, typer.Option("--device-id", help="this device's id")],
    grpc_target: GrpcOpt = DEFAULT_GRPC,
    data_dir: AgentDirOpt = DEFAULT_DATA_DIR,
    capability: CapabilityOpt = None,
    tag: TagOpt = None,
    ca_file: CaFileOpt = None,
    as_json: JsonFlag = False,
) -> None:
    """Enrol with the hub: store MQTT login + hub public key for `agent run` (0600 files)."""
    summary = _enroll(
        grpc_target=grpc_target,
        token=token,
        device_id=device_id,
        data_dir=data_dir,
        capabilities=parse_pairs(capability, what="capability"),
        tags=parse_pairs(tag, what="tag"),
        ca_file=ca_file,
    )
    emit(summary, as_json=as_json)


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
