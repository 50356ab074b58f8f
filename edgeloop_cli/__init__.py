"""The ``edgeloop`` command line: one entry point for operators and scripts.

Every command takes ``--json`` (one JSON object on stdout; errors as
``{"error": ..., "code": ...}`` with a non-zero exit). The hub is reached in-process on
``--data-dir`` / ``EDGELOOP_DATA_DIR``, or over HTTP with ``--hub`` / ``EDGELOOP_HUB_URL``.
"""

from __future__ import annotations

import gc
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError

from edgeloop_cli import (
    agent,
    bundles,
    cluster,
    datasets,
    devices,
    ingest,
    keys,
    model_code,
    models,
    monitor,
    rollouts,
    security,
    sim,
    training,
    triggers,
    tuning,
)
from edgeloop_cli._client import Target
from edgeloop_cli._quiet import configure as configure_logging
from edgeloop_cli._quiet import unfiltered
from edgeloop_cli.output import emit, emit_error
from hub.core.errors import EdgeloopError
from hub.core.redact import install_log_redaction

__all__ = ["app", "main"]

app = typer.Typer(
    name="edgeloop",
    help="edgeloop: datasets, training, registry, signed bundles and rollouts for edge models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
hub_app = typer.Typer(help="Run the hub.", no_args_is_help=True)
app.add_typer(hub_app, name="hub")
app.add_typer(datasets.app, name="dataset")
app.add_typer(models.app, name="model")
app.add_typer(models.runs, name="run")
app.add_typer(devices.app, name="device")
devices.app.add_typer(security.enroll_tokens, name="token")
devices.app.command("enroll")(security.enroll)
devices.app.command("revoke")(security.revoke)
app.add_typer(security.api_tokens, name="token")
app.add_typer(bundles.app, name="bundle")
app.add_typer(agent.app, name="agent")
app.add_typer(model_code.app, name="model-code")
app.add_typer(triggers.app, name="trigger")
app.add_typer(monitor.app, name="monitor")
app.add_typer(ingest.app, name="ingest")
app.add_typer(rollouts.app, name="rollout")
app.add_typer(sim.app, name="sim")
app.add_typer(keys.app, name="keys")
app.add_typer(cluster.app, name="cluster")
app.command("train")(training.train)
app.command("package")(training.package)
app.command("tune")(tuning.tune)


@app.callback()
def root(
    ctx: typer.Context,
    data_dir: Annotated[
        Path | None,
        typer.Option(envvar="EDGELOOP_DATA_DIR", help="work in-process on this hub data folder"),
    ] = None,
    hub_url: Annotated[
        str | None,
        typer.Option("--hub", envvar="EDGELOOP_HUB_URL", help="talk to a running hub at this URL"),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            envvar="EDGELOOP_ADMIN_TOKEN", help="admin token for --hub", show_default=False
        ),
    ] = None,
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="log at INFO, and show what dependencies print (warnings, logs, C++ logs)",
        ),
    ] = False,
) -> None:
    configure_logging(verbose=verbose)
    install_log_redaction()  # no password in a URL, no ?token= reaches a log line
    ctx.obj = Target(
        data_dir=str(data_dir) if data_dir else None,
        hub_url=hub_url,
        token=token,
        verbose=verbose,
    )


@hub_app.command("serve")
def serve(
    ctx: typer.Context,
    host: Annotated[str | None, typer.Option(help="API address (default 127.0.0.1)")] = None,
    port: Annotated[int | None, typer.Option(help="API port (default 8000)")] = None,
    grpc_port: Annotated[int | None, typer.Option(help="gRPC port (default 50051)")] = None,
    grpc_mtls_port: Annotated[
        int | None,
        typer.Option(help="with client certificates: the download port (default 50052)"),
    ] = None,
    mqtt_port: Annotated[
        int | None,
        typer.Option(
            help="the embedded broker's port for devices (default 1884; "
            "EDGELOOP_EMBEDDED_MQTT_PORT)"
        ),
    ] = None,
    mqtt_url: Annotated[
        str | None, typer.Option(help="external broker; unset: start an embedded one")
    ] = None,
    tls_self_signed: Annotated[
        bool | None,
        typer.Option(
            "--tls-self-signed", help="TLS for broker + gRPC with a generated CA (DATA_DIR/tls)"
        ),
    ] = None,
    components: Annotated[
        str | None,
        typer.Option(
            envvar="EDGELOOP_COMPONENTS",
            help="what this process runs: api,grpc,ingest,monitor,controller,triggers "
            "(default all); several processes on one database split the work",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="a start-up error as one JSON object on stdout")
    ] = False,
) -> None:
    """Serve the admin API (docs at /docs), gRPC artifacts and the embedded broker.

    It prints a one-time dashboard sign-in link and where the admin token is (never the token).
    """
    from hub.core.settings import load_settings
    from hub.serve import serve as run_server

    del as_json  # main() prints an error as JSON when --json is on the command line

    if mqtt_port is not None and mqtt_url is not None:
        raise typer.BadParameter(
            "--mqtt-port is the embedded broker's port; with --mqtt-url (an external broker) "
            "no broker is started: give one of them",
            param_hint="--mqtt-port",
        )
    target: Target = ctx.find_root().obj
    unfiltered()  # the server's log shows its dependencies' records too
    logging.getLogger().setLevel(logging.INFO)
    settings = load_settings(
        data_dir=target.data_dir,
        api_host=host,
        api_port=port,
        grpc_port=grpc_port,
        grpc_mtls_port=grpc_mtls_port,
        embedded_mqtt_port=mqtt_port,
        mqtt_url=mqtt_url,
        tls_self_signed=tls_self_signed,
        components=components,
    )
    run_server(settings)


@app.command("demo")
def demo(
    data_dir: Annotated[
        Path, typer.Option("--demo-dir", help="where the demo's hub keeps its data")
    ] = Path(".edgeloop/demo"),
    devices: Annotated[int, typer.Option(min=2, help="simulated devices")] = 50,
    drift: Annotated[
        str,
        typer.Option(help="the drift injected: rotation, noise, contrast, knockout or scale"),
    ] = "rotation",
    seed: Annotated[int, typer.Option(help="the fleet's and the oracle's seed")] = 0,
    mqtt_url: Annotated[
        str | None, typer.Option(help="external broker (default: the hub starts one)")
    ] = None,
    database_url: Annotated[
        str | None, typer.Option(help="external database (default: SQLite)")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The whole loop on one machine: train, package, roll out, drift, detect, retrain, canary."""
    from edgeloop_cli.demo import DemoOptions, run_demo

    summary = run_demo(
        DemoOptions(
            data_dir=data_dir.resolve(),
            devices=devices,
            drift=drift,
            seed=seed,
            mqtt_url=mqtt_url,
            database_url=database_url,
        )
    )
    emit(summary, as_json=as_json)


@app.command("version")
def version(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Print the edgeloop version."""
    import hub

    emit({"version": hub.__version__}, as_json=as_json)


def _is_settings_error(exc: Exception) -> bool:
    # hub.core.settings (pydantic-settings) is imported only by the commands that read
    # settings: if it is not loaded, no SettingsError was raised
    settings = sys.modules.get("hub.core.settings")
    return settings is not None and isinstance(exc, settings.SettingsError)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the CLI and turns every error into a clear message and exit code."""
    code = _main(sys.argv[1:] if argv is None else argv)
    if argv is None:  # the process's own command line: it exits next
        sys.stdout.flush()
        sys.stderr.flush()
        # the interpreter's last garbage collection over every object of the web stack and
        # the hub takes ~0.4 s, a third of an in-process command; exiting without it loses
        # nothing (files are closed, stdout and stderr flushed, atexit handlers still run)
        gc.freeze()
    return code


def _main(args: list[str]) -> int:
    as_json = "--json" in args
    try:
        result = app(args=args, prog_name="edgeloop", standalone_mode=False)
    except (ValidationError, EdgeloopError) as exc:
        if isinstance(exc, ValidationError) or _is_settings_error(exc):
            emit_error(message=f"bad settings: {exc}", code="settings", as_json=as_json)
            return 2
        emit_error(message=exc.message, code=exc.code, as_json=as_json)
        return 1
    except typer.Exit as exc:
        return int(exc.exit_code or 0)
    except typer.Abort:
        emit_error(message="aborted", code="aborted", as_json=as_json)
        return 130
    except typer.TyperException as exc:  # usage errors: unknown command, bad option, ...
        usage = getattr(exc, "ctx", None)
        message = exc.format_message().strip()
        if not message:  # no command given: the help was already printed
            if as_json:
                emit_error(message="missing command; see --help", code="usage", as_json=True)
            return 2
        if usage is not None and not as_json:
            message += f"\n\n{usage.get_usage()}\nTry '{usage.command_path} --help' for help."
        emit_error(message=message, code="usage", as_json=as_json)
        return int(getattr(exc, "exit_code", 2))
    return result if isinstance(result, int) else 0
