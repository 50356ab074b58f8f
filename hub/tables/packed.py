"""The packed form of a telemetry window's sketches (``TelemetryWindowRow.packed``).

Since format 1 the ingest stores a window's feature sketches (and its other histograms) as
the device sent them: one format byte, then the ``TelemetryWindow`` protobuf without its
``samples`` (those go to ``field_sample``). Nothing is converted on the way in (the payload
is stored as it came when it carries no samples), and the monitoring reads each sketch's
``index`` and ``counts`` straight from the parsed message, with no JSON in between.

Rows written before (``packed`` NULL) keep their sketches in the JSON column ``features``;
:func:`feature_counts` and :func:`feature_dicts` read either form, so every reader goes
through them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from proto import messages_pb2 as pb

__all__ = [
    "FORMAT_PROTOBUF",
    "feature_count_bytes",
    "feature_counts",
    "feature_dicts",
    "pack_window",
    "unpack",
]

FORMAT_PROTOBUF = 1  # the format byte: protobuf ``TelemetryWindow`` without samples
_PREFIX = bytes([FORMAT_PROTOBUF])


def pack_window(window: pb.TelemetryWindow, payload: bytes) -> bytes:
    """The packed column for ``window`` (parsed from ``payload``): the payload itself when
    it has no samples, else the window serialised again without them (``window`` is left
    without its samples)."""
    if len(window.samples):
        window.ClearField("samples")
        payload = window.SerializeToString()
    return _PREFIX + payload


def unpack(packed: bytes) -> pb.TelemetryWindow:
    """The window of a packed column; ``ValueError`` for an unknown format or bad bytes."""
    if not packed or packed[0] != FORMAT_PROTOBUF:
        raise ValueError(f"unknown packed telemetry format {packed[:1]!r}")
    window = pb.TelemetryWindow()
    try:
        window.ParseFromString(packed[1:])
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise ValueError(f"packed telemetry window does not parse ({exc})") from exc
    return window


def feature_counts(row: Any) -> list[tuple[int, Sequence[int]]]:
    """``(index, counts)`` of each feature sketch of ``row`` (anything with ``packed`` and
    ``features`` as stored), from the packed column when it is set, else from the JSON.
    ``ValueError`` / ``KeyError`` / ``TypeError`` on malformed data."""
    packed = getattr(row, "packed", None)
    if packed:
        return [(s.index, s.counts) for s in unpack(packed).features]
    return [(int(s["index"]), s["counts"]) for s in row.features or []]


def feature_dicts(row: Any) -> list[dict[str, Any]]:
    """The feature sketches of ``row`` in the JSON column's form (one dict per sketch with
    the ``FeatureSketch`` fields), whichever form the row stores them in."""
    packed = getattr(row, "packed", None)
    if not packed:
        return list(row.features or [])
    return [
        {
            "name": s.name,
            "index": s.index,
            "counts": list(s.counts),
            "min": s.min,
            "max": s.max,
            "sum": s.sum,
            "sum_sq": s.sum_sq,
            "count": s.count,
            "non_finite": s.non_finite,
        }
        for s in unpack(packed).features
    ]


def _raw_window_type() -> Any:
    """A view of ``TelemetryWindow`` that reads only each sketch's ``index`` and its packed
    ``counts`` as one ``bytes`` (a packed repeated field and a bytes field share the wire
    type): no Python int per count. Field numbers come from the real descriptors."""
    sketch, window = pb.FeatureSketch.DESCRIPTOR, pb.TelemetryWindow.DESCRIPTOR
    f = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(
        name="edgeloop_packed_view.proto", package="edgeloop_packed_view", syntax="proto3"
    )
    raw_sketch = file.message_type.add(name="Sketch")
    raw_sketch.field.add(
        name="index", number=sketch.fields_by_name["index"].number, type=f.TYPE_UINT32,
        label=f.LABEL_OPTIONAL,
    )  # fmt: skip
    raw_sketch.field.add(
        name="counts", number=sketch.fields_by_name["counts"].number, type=f.TYPE_BYTES,
        label=f.LABEL_OPTIONAL,
    )  # fmt: skip
    raw_window = file.message_type.add(name="Window")
    raw_window.field.add(
        name="features", number=window.fields_by_name["features"].number,
        type=f.TYPE_MESSAGE, type_name=".edgeloop_packed_view.Sketch", label=f.LABEL_REPEATED,
    )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(
        pool.FindMessageTypeByName("edgeloop_packed_view.Window")
    )


_RawWindow = _raw_window_type()


def feature_count_bytes(packed: bytes) -> list[tuple[int, bytes]]:
    """``(index, counts)`` of each feature sketch of a packed column with the counts as the
    bytes of their packed varints (no Python int per count: the monitoring decodes them
    with numpy). A sketch whose counts were sent unpacked (legal, unusual) shows ``b""``
    here: a caller that finds sizes it did not expect reads the row with
    :func:`feature_counts`. ``ValueError`` on bad bytes or an unknown format."""
    if not packed or packed[0] != FORMAT_PROTOBUF:
        raise ValueError(f"unknown packed telemetry format {packed[:1]!r}")
    window = _RawWindow()
    try:
        window.ParseFromString(packed[1:])
    except Exception as exc:  # google.protobuf.message.DecodeError and friends
        raise ValueError(f"packed telemetry window does not parse ({exc})") from exc
    return [(sketch.index, sketch.counts) for sketch in window.features]
