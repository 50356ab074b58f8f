"""``make demo`` / ``edgeloop demo``: the whole loop on embedded defaults, narrated.

A real hub (``edgeloop hub serve``: SQLite, an embedded broker with per-device logins, local
artifacts, or external Mosquitto/PostgreSQL by URL) is driven over its admin API: import
``sklearn:digits``, train ``digits-cnn``, package a signed int8 bundle, enrol a simulated
fleet of real agents over gRPC, roll out in phases, inject drift on part of the fleet, detect
it, retrain on the field samples and labels, and canary the new model to promotion. A report
(HTML with plots) is written under ``DATA_DIR/report``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgeloop_cli.demo._story import DRIFT_INTENSITY, DemoOptions, run_demo
from edgeloop_cli.errors import CliError

__all__ = ["DRIFT_INTENSITY", "DemoOptions", "main", "run_demo"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--data-dir", type=Path, default=Path(".edgeloop/demo"))
    parser.add_argument("--devices", type=int, default=50)
    parser.add_argument(
        "--drift", choices=sorted(DRIFT_INTENSITY), default="rotation", help="the drift injected"
    )
    parser.add_argument("--seed", type=int, default=0, help="the fleet's and the oracle's seed")
    parser.add_argument("--mqtt-url", default=None, help="external broker (default: embedded)")
    parser.add_argument("--database-url", default=None, help="external database (default: SQLite)")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    try:
        summary = run_demo(
            DemoOptions(
                data_dir=args.data_dir.resolve(),
                devices=args.devices,
                drift=args.drift,
                seed=args.seed,
                mqtt_url=args.mqtt_url,
                database_url=args.database_url,
            )
        )
    except CliError as exc:  # the message says why and where to look
        raise SystemExit(f"demo: {exc.message}") from None
    print(json.dumps(summary) if args.json else json.dumps(summary, indent=2))
