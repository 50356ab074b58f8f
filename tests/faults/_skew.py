"""Run ``python -m edgeloop_cli ...`` with ``time.time`` (and ``time.time_ns``) shifted by
``EDGELOOP_TEST_CLOCK_OFFSET_S`` seconds: a device whose clock is off (test only; faketime
is not installed). Usage: ``python _skew.py <python> -m edgeloop_cli <args>``.

gRPC's Python layer turns a ``timeout`` into an absolute deadline with ``time.time()`` while
its C core reads the real clock; on a real device both are off together, here only Python's
would be (a deadline hours in the past), so grpc's modules keep the real ``time``."""

from __future__ import annotations

import os
import runpy
import sys
import time
import types

REAL_TIME = types.ModuleType("time")
REAL_TIME.__dict__.update(time.__dict__)
OFFSET = float(os.environ.get("EDGELOOP_TEST_CLOCK_OFFSET_S", "0"))
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + OFFSET
time.time_ns = lambda: _time_ns() + int(OFFSET * 1e9)

import grpc._channel  # noqa: E402
import grpc._common  # noqa: E402
import grpc._server  # noqa: E402
import grpc._utilities  # noqa: E402
import grpc.aio._utils  # noqa: E402

for _module in (grpc._channel, grpc._common, grpc._server, grpc._utilities, grpc.aio._utils):
    _module.time = REAL_TIME  # type: ignore[attr-defined]

if __name__ == "__main__":
    sys.argv = ["edgeloop_cli", *sys.argv[4:]]  # drop: _skew.py <python> -m edgeloop_cli
    runpy.run_module("edgeloop_cli", run_name="__main__", alter_sys=True)
