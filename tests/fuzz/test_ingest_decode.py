"""Fuzzing the hub's ingest decoder: any topic and payload either decodes into rows that can
be stored, or is rejected with a reason — never another exception, never a hang."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hub.ingest._decode import REASONS, Rejected, decode
from hub.ingest._store import pack
from proto import messages_pb2 as pb
from proto.topics import Topics

TOPICS = Topics(prefix="edgeloop/v1", fleet="default")
KINDS = ["telemetry", "feedback", "events", "state", "cmd", "other"]
DEVICES = st.one_of(st.sampled_from(["cam-1", "cam-2"]), st.text(max_size=12))


def _topic(device: str, kind: str) -> str:
    return f"{TOPICS.base}/devices/{device}/{kind}"


def _window(device: str, seq: int, n: int, values: list[float]) -> bytes:
    return pb.TelemetryWindow(
        device_id=device,
        seq=seq,
        count=n,
        errors=n // 3,
        latency=pb.Histogram(edges=sorted(values[:3]), counts=[n] * (len(values[:3]) + 1)),
        output_counts=[n, 0, 1],
        features=[pb.FeatureSketch(name="f0", index=0, counts=[1, 2], sum=sum(values))],
        samples=[pb.Sample(prediction_id="p", values=values, shape=[len(values)])],
    ).SerializeToString()


STRUCTURED = st.builds(
    _window,
    DEVICES,
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**32),
    st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=6),
)


@settings(max_examples=400, deadline=None)
@given(
    device=DEVICES,
    kind=st.sampled_from(KINDS),
    payload=st.one_of(st.binary(max_size=300), STRUCTURED),
    cut=st.floats(0, 1),
)
def test_decode_stores_or_rejects_with_a_reason(
    device: str, kind: str, payload: bytes, cut: float
) -> None:
    payload = payload[: max(1, int(len(payload) * cut))] if cut < 0.5 else payload
    try:
        item = decode(topics=TOPICS, topic=_topic(device, kind), payload=payload, max_bytes=4096)
    except Rejected as rejected:
        assert rejected.reason in REASONS
        return
    assert item.device_id == device
    pack(item)  # the rows serialise for the database, NaN and huge ints included
