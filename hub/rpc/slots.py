"""Download slots: how many bundle downloads the artifact server serves at once.

The gRPC server is synchronous: each running ``Download`` holds one of its worker threads
for the whole stream (also while it waits for a slow client to read). A call beyond the
threads used to be accepted and queued inside gRPC, where the device saw no byte until its
60 s read timeout, and retried. :class:`DownloadSlots` is the server's admission instead:
``capacity`` streams at once (the worker threads less a few kept for ``Stat``, enrolment
and the refusals themselves); a ``Download`` beyond them is refused at once with
``RESOURCE_EXHAUSTED`` and a ``retry-after-ms`` hint (the mean time a stream has taken
lately), which the agent honours by waiting, not as a failure.

:meth:`DownloadSlots.snapshot` is what the server reports (in-process to the rollout
controller, over ``ArtifactService.Capacity`` to one in another process, and in the
service's health): capacity, streams in flight, free slots, mean stream time, downloads
served and refused. The controller commands new deploys only into free slots.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass

#: Worker threads kept for calls that are not streams (Stat, Enroll, refusals, Capacity).
RESERVED_WORKERS = 4
#: The retry hint's bounds, seconds.
MIN_RETRY_S, MAX_RETRY_S = 0.05, 5.0
#: The metadata key of the hint (milliseconds, as text).
RETRY_AFTER_KEY = "retry-after-ms"
_EWMA = 0.2  # weight of the newest stream in the mean stream time


def stream_capacity(max_workers: int) -> int:
    """Streams a server with ``max_workers`` threads serves at once."""
    return max(1, max_workers - RESERVED_WORKERS)


@dataclass(frozen=True, slots=True)
class SlotsSnapshot:
    """The artifact server's download slots at one moment."""

    capacity: int
    in_flight: int
    mean_stream_s: float
    served: int
    refused: int

    @property
    def free(self) -> int:
        return max(0, self.capacity - self.in_flight)

    @property
    def retry_after_s(self) -> float:
        """How long a refused device is told to wait before calling again."""
        return min(MAX_RETRY_S, max(MIN_RETRY_S, self.mean_stream_s))

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "free": self.free, "retry_after_s": round(self.retry_after_s, 3)}


class DownloadSlots:
    """A counting admission of download streams (thread-safe)."""

    def __init__(self, capacity: int) -> None:
        if capacity < 1:
            raise ValueError("a download capacity must be >= 1")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._in_flight = 0
        self._served = 0
        self._refused = 0
        self._mean_s = 0.0

    def try_acquire(self) -> bool:
        """Take a slot; False (and one more refusal counted) when every slot is taken."""
        with self._lock:
            if self._in_flight >= self.capacity:
                self._refused += 1
                return False
            self._in_flight += 1
            return True

    def release(self, started: float) -> None:
        """Give back a slot taken at ``started`` (``time.monotonic()``)."""
        took = max(0.0, time.monotonic() - started)
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)
            self._served += 1
            self._mean_s = took if self._served == 1 else (1 - _EWMA) * self._mean_s + _EWMA * took

    def snapshot(self) -> SlotsSnapshot:
        with self._lock:
            return SlotsSnapshot(
                capacity=self.capacity,
                in_flight=self._in_flight,
                mean_stream_s=self._mean_s,
                served=self._served,
                refused=self._refused,
            )


class CapacityClient:
    """The slots of an artifact server in another process (``ArtifactService.Capacity``
    over plaintext gRPC): for ``python -m hub.rollouts`` beside a separate server.
    Calling it returns the snapshot, or raises ``grpc.RpcError``."""

    def __init__(self, endpoint: str, *, timeout_s: float = 1.0) -> None:
        import grpc

        from proto import services_pb2_grpc

        self._channel = grpc.insecure_channel(endpoint)
        self._stub = services_pb2_grpc.ArtifactServiceStub(self._channel)
        self._timeout = timeout_s

    def __call__(self) -> SlotsSnapshot:
        from proto import services_pb2

        got = self._stub.Capacity(services_pb2.CapacityRequest(), timeout=self._timeout)
        return SlotsSnapshot(
            capacity=got.capacity,
            in_flight=got.in_flight,
            mean_stream_s=got.mean_stream_s,
            served=got.served,
            refused=got.refused,
        )

    def close(self) -> None:
        self._channel.close()
