"""When to send again what the broker has but the hub has not acknowledged (``hub_ack``).

A fixed timeout turns a hub that falls behind into a storm: at 5,000 devices with the
ingest ~4 minutes behind, a 30 s timeout re-sent every window ~4 times (984,113 repeats for
230,888 windows, `make bench-fleet`), which pushed the hub further behind. This is the
retransmission timer of TCP (RFC 6298) over the hub's acknowledgement latency instead:

- a sample is the age of an item when the hub's ``DeliveryAck`` removed it, taken only from
  items sent once (Karn's rule: the ack of a repeated item may answer either copy);
- the timeout is ``srtt + 4 * rttvar``, never below ``floor_s`` (the configured
  ``hub_ack_timeout_s``) nor above ``max_s``;
- each round of timed-out repeats doubles it (exponential backoff) until a fresh sample
  arrives, so a hub that is behind receives fewer repeats, not more.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AckTimeout"]

_ALPHA = 0.125  # RFC 6298 smoothing gains
_BETA = 0.25
_MAX_DOUBLINGS = 16


@dataclass
class AckTimeout:
    """The hub-ack retransmission timer of one device (a few floats: per-device state)."""

    floor_s: float
    max_s: float = 600.0
    srtt: float | None = None
    rttvar: float = 0.0
    doublings: int = 0  # timed-out rounds since the last fresh sample

    def sample(self, rtt_s: float) -> None:
        """An item sent once was acknowledged ``rtt_s`` after it was sent."""
        rtt = max(0.0, rtt_s)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = (1 - _BETA) * self.rttvar + _BETA * abs(self.srtt - rtt)
            self.srtt = (1 - _ALPHA) * self.srtt + _ALPHA * rtt
        self.doublings = 0

    def timed_out(self) -> None:
        """Items were sent again because no ack came within :attr:`seconds`: back off."""
        self.doublings = min(self.doublings + 1, _MAX_DOUBLINGS)

    @property
    def seconds(self) -> float:
        """How long an item the broker has may wait for the hub's ack before it goes again."""
        base = self.floor_s
        if self.srtt is not None:
            base = max(base, self.srtt + 4 * self.rttvar)
        return min(self.max_s, base * 2**self.doublings)
