"""The hub side of the rollout benchmark, in its own process (its own GIL, like a real hub):
the gRPC ``ArtifactService`` over an artifact store, plus ``python -m hub.rollouts``
(rollout controller + telemetry/event ingest) on the same database.

    python -m bench._rollout_hub --store DIR --port-file FILE -- <hub.rollouts arguments>

The gRPC port is written to ``--port-file`` once the server listens; SIGTERM stops both.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hub.core.artifacts import FileArtifactStore
from hub.rollouts.__main__ import main as rollouts_main
from hub.rpc.server import start_grpc_server


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._rollout_hub")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    args, rest = parser.parse_known_args(argv)
    server, port = start_grpc_server(
        store=FileArtifactStore(root=args.store), host="127.0.0.1", port=0
    )
    tmp = args.port_file.with_suffix(".tmp")
    tmp.write_text(str(port))
    tmp.replace(args.port_file)
    try:
        endpoint = ["--artifact-endpoint", f"127.0.0.1:{port}"]
        endpoint += ["--capacity-endpoint", f"127.0.0.1:{port}"]  # admission by its slots
        return rollouts_main([a for a in rest if a != "--"] + endpoint)
    finally:
        server.stop(None)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
