"""``make demo``: the loop as far as it is built, on embedded defaults.

Starts a real hub (``edgeloop hub serve``: SQLite, embedded broker, local artifacts) on
free ports, then drives it over its admin API: imports ``sklearn:digits``, registers a few
devices, offers a drifted batch of field samples (validation blocks it), overrides it with
a reason, trains ``digits-cnn`` and packages it into a signed int8 bundle. Rollouts and
drift detection join this narrative as their issues land.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from hub.cli._output import progress, stderr
from hub.datasets.sources import load_source


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_hub(data_dir: Path) -> tuple[subprocess.Popen[bytes], str]:
    api = _free_port()
    env = {
        **os.environ,
        "EDGELOOP_DATA_DIR": str(data_dir),
        "EDGELOOP_EMBEDDED_MQTT_PORT": str(_free_port()),
        "EDGELOOP_GRPC_PORT": str(_free_port()),
        "EDGELOOP_API_PORT": str(api),
    }
    log = (data_dir / "hub.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "hub.cli", "hub", "serve"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{api}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the hub exited early; see {data_dir / 'hub.log'}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the hub did not start in 60 s; see {data_dir / 'hub.log'}")


def _check(response: httpx.Response) -> Any:
    if response.status_code >= 400:
        raise SystemExit(f"{response.request.method} {response.request.url}: {response.text}")
    return response.json() if response.content else None


def run_demo(data_dir: Path) -> dict[str, Any]:
    data_dir.mkdir(parents=True, exist_ok=True)
    proc, url = _start_hub(data_dir)
    try:
        health = httpx.get(f"{url}/healthz").json()
        stderr.print(
            f"[bold]hub[/] {url} (docs {url}/docs), MQTT {health['mqtt']['url']} "
            f"({health['mqtt']['broker']}), gRPC {health['grpc']}"
        )
        token = (data_dir / "admin_token").read_text().strip()
        api = httpx.Client(
            base_url=f"{url}/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=120
        )
        first = _check(api.post("/datasets/digits/versions", json={"source": "sklearn:digits"}))
        stderr.print(
            f"[bold]dataset[/] {first['ref']}: {first['num_records']} records, splits "
            f"{first['splits']}, validation {first['validation_status']}"
        )
        for i in range(5):
            body = {"id": f"demo-{i}", "group": "lab", "tags": {"site": ["berlin", "paris"][i % 2]}}
            if api.get(f"/devices/{body['id']}").status_code == 404:
                _check(api.post("/devices", json=body))
        stderr.print("[bold]devices[/] 5 registered in group 'lab'")

        digits = load_source("sklearn:digits")
        rng = np.random.default_rng(0)
        noisy = np.clip(digits.features[:400] + rng.normal(3, 2, (400, 8, 8)), 0, 16)
        with tempfile.TemporaryDirectory() as tmp:
            field = Path(tmp) / "field.npz"
            np.savez(
                field,
                X=noisy.astype(np.float32),
                y=np.asarray(digits.labels)[:400],
                ids=np.array([f"field-{i}" for i in range(400)]),
                feature_names=np.array(digits.feature_names),
                label_names=np.array(digits.label_names or ()),
            )
            with field.open("rb") as fh:
                grown = _check(
                    api.post(
                        "/datasets/digits/versions/upload",
                        files={"file": ("field.npz", fh)},
                        data={"append": "true"},
                    )
                )
        stderr.print(
            f"[bold]field samples[/] {grown['ref']}: +{grown['lineage']['diff']['added']} "
            f"records, validation [red]{grown['validation_status']}[/]"
        )
        if grown["validation_status"] == "failed":
            _check(
                api.post(
                    f"/datasets/digits/versions/{grown['version']}/override",
                    json={"reason": "demo: accept the noisy sensor batch"},
                )
            )
            stderr.print("  overridden with a recorded reason; training may now use it")
        with progress("training digits-cnn on digits@1"):
            trained = _check(
                api.post("/training-runs", json={"spec": "digits-cnn", "dataset": "digits@1"})
            )
        stderr.print(
            f"[bold]trained[/] {trained['model']}@{trained['version']} "
            f"(run {trained['run_id'][:8]}): "
            f"test accuracy {trained['metrics']['test_accuracy']:.2f}%, "
            f"candidate={trained['candidate']}"
        )
        with progress("packaging: ONNX, int8 behind the accuracy gate, TFLite, signing"):
            bundle = _check(
                api.post(f"/models/digits-cnn/versions/{trained['version']}/package", json={})
            )
        stderr.print(f"[bold]bundle[/] {bundle['digest'][:19]}… {bundle['size_bytes']} bytes")
        for v in bundle["variants"]:
            stderr.print(
                f"  {v['file']:18s} {v['size_bytes']:>8d} B  accuracy {v['accuracy']:.2f}%  "
                f"{v['latency_ms_b1']:.3f} ms/record"
            )
        for note in bundle["notes"]:
            stderr.print(f"  [yellow]note[/]: {note}")
        stderr.print("[dim]rollouts to agents and drift detection are not built yet[/]")
        return {
            "model": f"{trained['model']}@{trained['version']}",
            "accuracy": trained["metrics"]["test_accuracy"],
            "bundle": bundle["digest"],
            "hub": url,
            "dataset": first["ref"],
            "grown_dataset": grown["ref"],
            "validation_blocked": grown["validation_status"] == "failed",
            "devices": len(_check(api.get("/devices"))),
            "broker": health["mqtt"]["broker"],
        }
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path(".edgeloop/demo"))
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    summary = run_demo(args.data_dir.resolve())
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
