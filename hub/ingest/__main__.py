"""``python -m hub.ingest --database-url URL --mqtt-url URL``: one ingest worker until SIGTERM.

For extra ingest processes beside the hub (they share the ``$share/hub`` subscription; give
each its own ``--client-id``) and for the crash test. ``--stats-file`` keeps the worker's
counters in a JSON file (rewritten atomically as they change).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from hub.core.db import make_engine
from hub.core.redact import install_log_redaction
from hub.ingest.worker import IngestWorker
from hub.mqtt.features import probe_features, use_shared_ingest
from hub.tables import create_all
from proto.topics import Topics


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hub.ingest", description=__doc__)
    p.add_argument("--database-url", required=True)
    p.add_argument("--mqtt-url", required=True)
    p.add_argument("--fleet", default="default")
    p.add_argument("--topic-prefix", default="edgeloop/v1")
    p.add_argument("--client-id", default="edgeloop-hub-ingest")
    p.add_argument(
        "--no-shared",
        action="store_true",
        help="plain filters (amqtt, NATS, RabbitMQ have no $share)",
    )
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--batch-interval-s", type=float, default=0.2)
    p.add_argument("--max-payload-bytes", type=int, default=1_048_576)
    p.add_argument("--accept-unknown-devices", action="store_true")
    p.add_argument("--stats-file", type=Path, default=None)
    p.add_argument(
        "--decode-process",
        action="store_true",
        help="decode and store in a child process (a second core; same guarantees)",
    )
    p.add_argument(
        "--ack-interval-s", type=float, default=0.5, help="DeliveryAck per device; 0: none"
    )
    return p


def _write_stats(path: Path, body: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(body))
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    install_log_redaction()
    if not args.no_shared:
        base = Topics(prefix=args.topic_prefix, fleet=args.fleet).base
        features = probe_features(args.mqtt_url, topic_base=base)
        if not use_shared_ingest(requested=True, features=features):
            print(
                "this broker has no $share (or no MQTT 5): extra ingest workers cannot split "
                "the load there; run the hub's one worker (or this one with --no-shared) "
                "(docs/BROKERS.md)",
                file=sys.stderr,
            )
            return 2
    engine = make_engine(args.database_url)
    create_all(engine)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    worker = IngestWorker(
        engine=engine,
        mqtt_url=args.mqtt_url,
        fleet=args.fleet,
        topic_prefix=args.topic_prefix,
        shared=not args.no_shared,
        client_id=args.client_id,
        batch_size=args.batch_size,
        batch_interval_s=args.batch_interval_s,
        max_payload_bytes=args.max_payload_bytes,
        accept_unknown_devices=args.accept_unknown_devices,
        ack_interval_s=args.ack_interval_s or None,
        decode_process=args.decode_process,
    )
    worker.start()
    last: dict[str, object] = {}
    try:
        while not stop.wait(0.05):
            body = {**worker.stats().as_dict(), "pid": os.getpid()}
            if args.stats_file is not None and body != last:
                _write_stats(args.stats_file, body)
                last = body
    finally:
        worker.stop()
        if args.stats_file is not None:
            _write_stats(
                args.stats_file, {**worker.stats().as_dict(), "pid": os.getpid(), "stopped": True}
            )
        engine.dispose()
    return 0


if __name__ == "__main__":
    sys.exit(main())
