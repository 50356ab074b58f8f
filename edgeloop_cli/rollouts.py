"""``edgeloop rollout ...``: phased rollouts with ML-health gates."""

from __future__ import annotations

import json
import time
from typing import Annotated, Any

import typer

from edgeloop_cli._client import HubClient, connect
from edgeloop_cli._common import JsonFlag, target
from edgeloop_cli.output import emit, emit_error, key_values, number, print_human, progress_bar

app = typer.Typer(help="Phased rollouts: create, watch, pause, roll back.", no_args_is_help=True)
COLUMNS = [
    "id",
    "model",
    "version",
    "state",
    "promotion",
    "phase",
    "selector",
    "reason",
    "created_at",
]
# rollout show for people: these as tables of their own, every other key as `key value` rows
DETAIL = ("phases", "devices", "device_states", "events")
ReasonOpt = Annotated[str, typer.Option(help="why (kept in the rollout's event log)")]
#: Rollout states that do not change any more (hub.rollouts.service.FINAL).
FINAL_STATES = {"completed", "rolled_back", "cancelled"}
#: Exit status of ``rollout wait`` when the rollout ended other than completed, and on timeout.
EXIT_NOT_COMPLETED = 1
EXIT_TIMEOUT = 3
WaitFlag = Annotated[
    bool,
    typer.Option(
        "--wait",
        help="wait until the rollout ends (progress on stderr); exit 0 only when it completed",
    ),
]
TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds to wait before giving up (exit 3)")
]


def promotion_text(promotion: dict[str, Any] | None, *, long: bool = False) -> str:
    """A rollout's promotion for people: ``verified``, ``UNVERIFIED``, ``withheld`` (the alias
    was not moved) ...; ``long``: with the alias, version and what the gates had."""
    if not promotion:
        return ""
    status = str(promotion.get("status", ""))
    word = "UNVERIFIED" if status == "unverified" else status
    if not long:
        return word
    alias = promotion.get("alias") or "no alias"
    detail = promotion.get("detail") or ""
    return f"{word} ({alias}): {detail}" if detail else f"{word} ({alias})"


def _readable(view: dict[str, Any], *, long: bool) -> dict[str, Any]:
    return {**view, "promotion": promotion_text(view.get("promotion"), long=long)}


def _emit_rollout(view: dict[str, Any], *, as_json: bool) -> None:
    """A rollout as the API returns it (``--json``), or for people: its promotion in words,
    then :func:`_emit`'s tables."""
    _emit(view if as_json else _readable(view, long=True), as_json=as_json)


def _split_ref(ref: str) -> tuple[str, str]:
    name, sep, version = ref.partition("@")
    if not sep or not name or not version:
        raise typer.BadParameter(f"{ref!r} must look like MODEL@VERSION (or MODEL@latest)")
    return name, version


def _fraction(text: str, flag: str) -> float:
    try:
        return float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        raise typer.BadParameter(
            f"{flag} {text!r}: give a percentage (10%) or a fraction"
        ) from None


@app.command("create")
def create(
    ctx: typer.Context,
    model: Annotated[str, typer.Option("--model", help="MODEL@VERSION (or @latest, @alias)")],
    selector: Annotated[str, typer.Option(help="all | id:a,b | group:g | site=x and hw=y")],
    phases: Annotated[str, typer.Option(help="cumulative sizes")] = "1,10%,50%,100%",
    on_failure: Annotated[str, typer.Option(help="pause | rollback")] = "rollback",
    bake_s: Annotated[float, typer.Option(help="seconds to watch each phase")] = 60.0,
    min_reporting: Annotated[int, typer.Option(help="devices that must report")] = 1,
    device_timeout_s: Annotated[float, typer.Option(help="per-device answer timeout")] = 600.0,
    probation_s: Annotated[int | None, typer.Option(help="on-device probation seconds")] = None,
    approve_before: Annotated[
        str | None, typer.Option(help="phase indexes that need `rollout approve`, e.g. 1,2")
    ] = None,
    gates: Annotated[
        str | None, typer.Option(help='gate settings as JSON, e.g. {"max_accuracy_drop": 0.01}')
    ] = None,
    bundle_digest: Annotated[str | None, typer.Option(help="default: the version's bundle")] = None,
    max_commands_per_s: Annotated[float | None, typer.Option(help="rate limit")] = None,
    max_concurrent_downloads: Annotated[int | None, typer.Option(help="rate limit")] = None,
    shadow: Annotated[
        str | None,
        typer.Option(help="shadow phase first, on this share of the devices: 10% or 0.1"),
    ] = None,
    min_agreement: Annotated[
        float, typer.Option(help="shadow agreement the candidate needs")
    ] = 0.9,
    shadow_sample: Annotated[
        float, typer.Option(help="share of requests a shadowing device also runs")
    ] = 1.0,
    shadow_bake_s: Annotated[float, typer.Option(help="seconds to shadow")] = 60.0,
    promote_alias: Annotated[
        str, typer.Option(help="alias moved to the version when it completes ('' = none)")
    ] = "production",
    wait: WaitFlag = False,
    timeout: TimeoutOpt = 1800.0,
    as_json: JsonFlag = False,
) -> None:
    """Start a rollout of MODEL@VERSION to the devices SELECTOR matches."""
    name, version = _split_ref(model)
    shadow_cfg = None
    if shadow is not None:
        shadow_cfg = {
            "fraction_of_devices": _fraction(shadow, "--shadow"),
            "sample_fraction": shadow_sample,
            "bake_s": shadow_bake_s,
            "min_agreement": min_agreement,
        }
    try:
        gate_cfg = json.loads(gates) if gates else None
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"--gates is not JSON: {exc}") from None
    body: dict[str, Any] = {
        "model": name,
        "version": version,
        "selector": selector,
        "phases": phases,
        "on_failure": on_failure,
        "bake_s": bake_s,
        "min_reporting": min_reporting,
        "device_timeout_s": device_timeout_s,
        "probation_s": probation_s,
        "approval_phases": [int(i) for i in approve_before.split(",")] if approve_before else [],
        "gates": gate_cfg,
        "bundle_digest": bundle_digest,
        "max_commands_per_s": max_commands_per_s,
        "max_concurrent_downloads": max_concurrent_downloads,
        "shadow": shadow_cfg,
        "promote_alias": promote_alias,
    }
    if wait:
        _need_hub(ctx, as_json=as_json)
    with connect(target(ctx)) as client:
        made = client.post("/rollouts", json=body)
        if wait:
            _wait(client, str(made["id"]), timeout=timeout, as_json=as_json)
            return
    _emit_rollout(made, as_json=as_json)


def _need_hub(ctx: typer.Context, *, as_json: bool) -> None:
    if not target(ctx).hub_url:
        emit_error(
            message="rollouts advance only while a hub runs (`edgeloop hub serve`): "
            "wait through it with --hub URL (or EDGELOOP_HUB_URL)",
            code="needs_hub",
            as_json=as_json,
        )
        raise typer.Exit(code=2)


def _describe(view: dict[str, Any]) -> str:
    states = view.get("device_states") or {}
    phases = view.get("phases") or []
    where = f"phase {int(view.get('phase', 0)) + 1}/{len(phases)}" if phases else ""
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
    return f"{view['id']} {view['state']} {where}: {counts or 'no devices yet'}"


def _wait(client: HubClient, rollout_id: str, *, timeout: float, as_json: bool) -> None:
    """Poll the rollout until it is in a final state; print it; exit non-zero unless it
    completed (1), or on timeout (3)."""
    deadline = time.monotonic() + timeout
    view: dict[str, Any] = client.get(f"/rollouts/{rollout_id}")
    with progress_bar(transient=as_json) as bar:
        task = bar.add_task(_describe(view), total=max(1, len(view.get("phases") or [])))
        while True:
            phases = view.get("phases") or []
            done = sum(1 for p in phases if p.get("state") in {"passed", "advanced"})
            bar.update(task, description=_describe(view), completed=done)
            if view["state"] in FINAL_STATES or time.monotonic() >= deadline:
                break
            time.sleep(1.0)
            view = client.get(f"/rollouts/{rollout_id}")
    if view["state"] not in FINAL_STATES:
        emit_error(
            message=f"rollout {rollout_id} is still {view['state']} after {timeout:g} s "
            f"(it goes on: `edgeloop rollout wait {rollout_id}` again, or `rollout show`)",
            code="timeout",
            as_json=as_json,
        )
        raise typer.Exit(code=EXIT_TIMEOUT)
    _emit_rollout(view, as_json=as_json)
    if view["state"] != "completed":
        if not as_json:
            emit_error(
                message=f"rollout {rollout_id} ended {view['state']}: {view.get('reason') or ''}",
                code=f"rollout_{view['state']}",
                as_json=False,
            )
        raise typer.Exit(code=EXIT_NOT_COMPLETED)


@app.command("wait")
def wait_(
    ctx: typer.Context,
    rollout_id: str,
    timeout: TimeoutOpt = 1800.0,
    as_json: JsonFlag = False,
) -> None:
    """Wait until ROLLOUT_ID ends, with progress; exit 0 when it completed, 1 when it was
    rolled back or cancelled, 3 on timeout."""
    _need_hub(ctx, as_json=as_json)
    with connect(target(ctx)) as client:
        _wait(client, rollout_id, timeout=timeout, as_json=as_json)


def _gate_line(gate: dict[str, Any]) -> str:
    def shown(value: Any) -> str:
        return number(value) if isinstance(value, float) else str(value)

    if gate.get("insufficient_data"):
        verdict = f"insufficient data ({gate.get('samples', 0)} samples)"
    else:
        verdict = "passed" if gate.get("passed") else "FAILED"
    value = "-" if gate.get("value") is None else shown(gate["value"])
    return f"{gate.get('name')}: {value} vs threshold {shown(gate.get('threshold'))}, {verdict}"


def _emit(found: dict[str, Any], *, as_json: bool) -> None:
    """A rollout: its summary, then a table per phase (devices and each gate against its
    threshold), then its devices; ``--json`` as the API returns it."""
    if as_json:
        emit(found, as_json=True)
        return
    print_human(key_values({k: v for k, v in found.items() if k not in DETAIL}))
    phases = [
        {
            "phase": p.get("index"),
            "size": p.get("size"),
            "approval": p.get("approval"),
            "state": p.get("state"),
            "devices": p.get("devices"),
            "gates": "\n".join(_gate_line(g) for g in p.get("gates") or []),
        }
        for p in found.get("phases") or []
    ]
    if phases:
        emit(phases, as_json=False, key="phases")
    devices = found.get("devices") or []
    if devices:
        emit(
            devices,
            as_json=False,
            key="devices",
            columns=["id", "phase", "state", "late", "attempts", "previous_version", "reason"],
        )


@app.command("show")
def show(ctx: typer.Context, rollout_id: str, as_json: JsonFlag = False) -> None:
    """Phases (state, devices, gate values with thresholds), per-device status, and whether
    its promotion was verified (its gates had data) or not."""
    with connect(target(ctx)) as client:
        _emit_rollout(client.get(f"/rollouts/{rollout_id}"), as_json=as_json)


@app.command("list")
def list_(
    ctx: typer.Context,
    state: Annotated[str | None, typer.Option(help="only rollouts in this state")] = None,
    as_json: JsonFlag = False,
) -> None:
    params = {"state": state} if state else {}
    with connect(target(ctx)) as client:
        found = client.get("/rollouts", params=params)
    if not as_json:
        found = [_readable(r, long=False) for r in found]
    emit(found, as_json=as_json, columns=COLUMNS, key="rollouts")


@app.command("promote")
def promote(
    ctx: typer.Context,
    rollout_id: str,
    unverified: Annotated[
        bool,
        typer.Option(
            "--unverified",
            help="move the alias even without the gates' evidence (recorded as unverified)",
        ),
    ] = False,
    reason: ReasonOpt = "operator",
    as_json: JsonFlag = False,
) -> None:
    """Move a completed rollout's alias (e.g. production) that was not moved for lack of
    evidence: its gates are evaluated again now."""
    body = {"unverified": unverified, "reason": reason}
    with connect(target(ctx)) as client:
        _emit_rollout(client.post(f"/rollouts/{rollout_id}/promote", json=body), as_json=as_json)


def _action(name: str, doc: str) -> None:
    def command(
        ctx: typer.Context,
        rollout_id: str,
        reason: ReasonOpt = "operator",
        as_json: JsonFlag = False,
    ) -> None:
        with connect(target(ctx)) as client:
            body = None if name == "retry" else {"reason": reason}
            _emit_rollout(client.post(f"/rollouts/{rollout_id}/{name}", json=body), as_json=as_json)

    command.__doc__ = doc
    app.command(name)(command)


for _name, _doc in {
    "pause": "Stop commanding devices (devices already commanded carry on).",
    "resume": "Continue a paused rollout.",
    "advance": "Start the next phase now, without waiting for bake time or gates.",
    "cancel": "Stop the rollout; devices keep what they run.",
    "rollback": "Return every device the rollout touched to its previous version.",
    "retry": "Command failed / timed-out devices again (or retry failed rollbacks).",
    "approve": "Approve the phase that waits for approval.",
}.items():
    _action(_name, _doc)
