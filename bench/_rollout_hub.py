"""The hub side of the rollout benchmark, in its own process (its own GIL, like a real hub):
the gRPC ``ArtifactService`` over an artifact store, plus ``python -m hub.rollouts``
(rollout controller + telemetry/event ingest) on the same database.

    python -m bench._rollout_hub --store DIR --port-file FILE -- <hub.rollouts arguments>

The gRPC port is written to ``--port-file`` once the server listens; SIGTERM stops both.
With ``--threads-file``, the process keeps a JSON map there of its threads' native ids to
their Python names (rewritten when its threads change), so that the benchmark can split
the process's CPU by component from ``/proc/<pid>/task/<tid>/stat``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from hub.core.artifacts import FileArtifactStore
from hub.rollouts.__main__ import main as rollouts_main
from hub.rpc.server import start_grpc_server

#: How often the thread map is checked for new or ended threads.
THREADS_EVERY_S = 0.25


def _write_threads(path: Path, stop: threading.Event) -> None:
    """Keep ``path`` a JSON ``{native id: Python thread name}`` of this process's threads
    (this thread included), rewritten atomically whenever the set changes."""
    last: dict[str, str] = {}
    while True:
        now = {str(t.native_id): t.name for t in threading.enumerate() if t.native_id}
        if now != last:
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(now))
            tmp.replace(path)
            last = now
        if stop.wait(THREADS_EVERY_S):
            return


def _profile_threads(out: Path) -> None:
    """cProfile every thread started from now on (``EDGELOOP_ROLLOUT_PROFILE=DIR``): each
    writes ``<thread name>.pstats`` there when the process stops."""
    profiles: dict[str, cProfile.Profile] = {}

    def first_call(*_args: object) -> None:
        profile = cProfile.Profile(time.thread_time)  # CPU, not waits for the GIL
        profiles[threading.current_thread().name] = profile
        profile.enable()  # replaces this hook for the thread

    def dump() -> None:
        out.mkdir(parents=True, exist_ok=True)
        for name, profile in list(profiles.items()):
            profile.disable()  # only stops this thread's if it is this thread's
            profile.dump_stats(out / f"{name}.pstats")

    threading.setprofile(first_call)
    _dump.append(dump)


_dump: list[Callable[[], None]] = []


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._rollout_hub")
    parser.add_argument("--store", type=Path, required=True)
    parser.add_argument("--port-file", type=Path, required=True)
    parser.add_argument("--threads-file", type=Path)
    args, rest = parser.parse_known_args(argv)
    stop = threading.Event()
    if profile := os.environ.get("EDGELOOP_ROLLOUT_PROFILE"):
        _profile_threads(Path(profile))
    if args.threads_file is not None:
        threading.Thread(
            target=_write_threads,
            args=(args.threads_file, stop),
            name="bench-thread-map",
            daemon=True,
        ).start()
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
        stop.set()
        server.stop(None)
        for dump in _dump:
            dump()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
