"""``python -m hub.rollouts``: the rollout controller (and the ingest, when built) on its own.

Runs until SIGTERM/SIGINT. Used by tests that SIGKILL the hub side mid-rollout, and by
deployments that run the controller apart from the API. ``hub serve`` runs the same
controller in-process.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from contextlib import ExitStack
from pathlib import Path

from hub.core.artifacts import DownloadLinks, open_store
from hub.core.db import make_engine
from hub.core.redact import install_log_redaction
from hub.rollouts.controller import RolloutController
from hub.rpc.slots import CapacityClient
from hub.tables import create_all

log = logging.getLogger("edgeloop.rollouts")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hub.rollouts")
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--mqtt-url", required=True)
    parser.add_argument("--artifact-endpoint", required=True, help="the hub's gRPC host:port")
    parser.add_argument("--fleet", default="default")
    parser.add_argument("--topic-prefix", default="edgeloop/v1")
    parser.add_argument("--tick-s", type=float, default=0.5)
    parser.add_argument("--max-commands-per-s", type=float, default=50.0)
    parser.add_argument("--max-concurrent-downloads", type=int, default=100)
    parser.add_argument(
        "--capacity-endpoint",
        default="",
        help="an artifact server's host:port (plaintext gRPC) whose download slots new"
        " deploys are admitted by (ArtifactService.Capacity); default: only the fixed limit",
    )
    parser.add_argument(
        "--presign-artifact-url",
        default="",
        help="the hub's s3:// artifact store: deploy commands carry presigned download URLs "
        "from it (EDGELOOP_ARTIFACT_PRESIGN in hub serve); credentials from AWS_*",
    )
    parser.add_argument("--presign-ttl-s", type=int, default=900)
    parser.add_argument("--no-ingest", action="store_true", help="run the controller only")
    parser.add_argument(
        "--stats-file", type=Path, help="write the controller's health (JSON) here on exit"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()
    links = None
    if args.presign_artifact_url:
        store = open_store(args.presign_artifact_url)
        store.check()  # a store it cannot use stops it here
        links = DownloadLinks(store, ttl_s=args.presign_ttl_s)
    engine = make_engine(args.database_url)
    create_all(engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with ExitStack() as stack:
        if not args.no_ingest:
            try:
                from hub.ingest import IngestWorker
            except ImportError as exc:  # pragma: no cover - ingest is built beside this
                log.warning("no ingest in this build (%s): gates see no device data", exc)
            else:
                worker = IngestWorker(
                    engine=engine,
                    mqtt_url=args.mqtt_url,
                    fleet=args.fleet,
                    topic_prefix=args.topic_prefix,
                    client_id="edgeloop-rollouts-ingest",
                )
                stack.enter_context(worker)
        capacity = None
        if args.capacity_endpoint:
            capacity = CapacityClient(args.capacity_endpoint)
            stack.callback(capacity.close)
        controller = RolloutController(
            engine=engine,
            mqtt_url=args.mqtt_url,
            artifact_endpoint=args.artifact_endpoint,
            fleet=args.fleet,
            topic_prefix=args.topic_prefix,
            tick_s=args.tick_s,
            max_commands_per_s=args.max_commands_per_s,
            max_concurrent_downloads=args.max_concurrent_downloads,
            capacity=capacity,
            bundle_links=links,
        )
        stack.enter_context(controller)
        log.info("rollout controller running (tick %.2f s)", args.tick_s)
        stop.wait()
        if args.stats_file is not None:
            args.stats_file.write_text(json.dumps(controller.health(), default=str))
    engine.dispose()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
