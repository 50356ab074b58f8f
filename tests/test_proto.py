"""The wire protocol: generated code is current, messages round-trip, garbage is refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proto import messages_pb2, services_pb2
from proto.generate import GENERATED, ROOT, generate

FILES = (messages_pb2.DESCRIPTOR, services_pb2.DESCRIPTOR)
MESSAGES: list[Descriptor] = [
    descriptor for file in FILES for descriptor in file.message_types_by_name.values()
]


def _ids(descriptor: Descriptor) -> str:
    return descriptor.name


# --- generated code -------------------------------------------------------------------


def test_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    written = generate(tmp_path)

    assert sorted(path.relative_to(tmp_path).as_posix() for path in written) == sorted(GENERATED)
    stale = [name for name in GENERATED if _read(ROOT / name) != (tmp_path / name).read_bytes()]
    assert not stale, f"{stale} are not what proto/*.proto generate: run python -m proto.generate"


def _read(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def test_no_stray_generated_modules_are_committed() -> None:
    present = {f"proto/{path.name}" for path in (ROOT / "proto").glob("*_pb2*")}
    assert present == set(GENERATED), "run python -m proto.generate (it removes stray modules)"


# --- round trips ----------------------------------------------------------------------


def _is_real_oneof(oneof: Any) -> bool:
    """A `oneof` written in the .proto, not the synthetic one behind `optional`."""
    return oneof is not None and not (len(oneof.fields) == 1 and oneof.name.startswith("_"))


def _scalar(field: Any, seed: int) -> object:
    cpp = field.cpp_type
    if cpp == FieldDescriptor.CPPTYPE_STRING:
        if field.type == FieldDescriptor.TYPE_BYTES:
            return bytes([seed, 0, 255]) * 3
        return f"{field.name}-{seed}-é✓"
    if cpp == FieldDescriptor.CPPTYPE_BOOL:
        return True
    if cpp in (FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE):
        return 0.25 * (seed + 1)  # exact in float32
    if cpp == FieldDescriptor.CPPTYPE_ENUM:
        return field.enum_type.values[-1].number
    if cpp in (FieldDescriptor.CPPTYPE_UINT64, FieldDescriptor.CPPTYPE_INT64):
        return 2**40 + seed  # needs more than 32 bits
    return 1000 + seed


def _chosen(field: Any, choice: dict[str, str]) -> bool:
    """Whether ``_fill`` sets ``field`` for ``choice``."""
    oneof = field.containing_oneof
    if not _is_real_oneof(oneof):
        return True
    return bool(choice.get(oneof.name, oneof.fields[0].name) == field.name)


def _fill(message: Message, *, choice: dict[str, str], seed: int = 1) -> Message:
    """Set every field of ``message`` (for each real oneof, only the member in ``choice``)."""
    for field in message.DESCRIPTOR.fields:
        if not _chosen(field, choice):
            continue
        value = getattr(message, field.name)
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            value_field = field.message_type.fields_by_name["value"]
            for i in range(2):
                value[f"key-{i}"] = _scalar(value_field, seed + i)
        elif field.message_type is not None:
            for i in range(2 if field.is_repeated else 1):
                child = value.add() if field.is_repeated else value
                _fill(child, choice={}, seed=seed + i)
                child.SetInParent()
        elif field.is_repeated:
            value.extend(_scalar(field, seed + i) for i in range(3))
        else:
            setattr(message, field.name, _scalar(field, seed))
    return message


def _variants(descriptor: Descriptor) -> list[dict[str, str]]:
    """One choice per member of each real oneof."""
    oneofs = [oneof for oneof in descriptor.oneofs if _is_real_oneof(oneof)]
    variants = [{oneof.name: field.name} for oneof in oneofs for field in oneof.fields]
    return variants or [{}]


@pytest.mark.parametrize("descriptor", MESSAGES, ids=_ids)
def test_every_message_round_trips_with_every_field_set(descriptor: Descriptor) -> None:
    cls = GetMessageClass(descriptor)
    for choice in _variants(descriptor):
        original = _fill(cls(), choice=choice)
        parsed = cls.FromString(original.SerializeToString())

        assert parsed == original
        set_fields = {field.name for field, _ in parsed.ListFields()}
        expected = {field.name for field in descriptor.fields if _chosen(field, choice)}
        assert set_fields == expected, f"{descriptor.name}: fields lost on the wire"


def test_command_bodies_and_optional_presence_survive_the_wire() -> None:
    deploy = messages_pb2.Command(
        command_id="c-1",
        device_id="cam-7",
        issued_at=1_700_000_000_000,
        deploy=messages_pb2.Deploy(
            rollout_id="r-1",
            model="digits",
            version="3",
            bundle_digest="sha256:" + "ab" * 32,
            bundle_size=123_456,
            artifact_endpoint="hub.local:50051",
        ),
    )
    parsed = messages_pb2.Command.FromString(deploy.SerializeToString())
    assert parsed.WhichOneof("body") == "deploy"
    assert not parsed.deploy.HasField("probation_seconds")  # unset = agent default
    deploy.deploy.probation_seconds = 0
    parsed = messages_pb2.Command.FromString(deploy.SerializeToString())
    assert parsed.deploy.HasField("probation_seconds") and parsed.deploy.probation_seconds == 0

    rollback = messages_pb2.Command(
        command_id="c-2", rollback=messages_pb2.Rollback(to_version="previous", reason="gate")
    )
    parsed = messages_pb2.Command.FromString(rollback.SerializeToString())
    assert parsed.WhichOneof("body") == "rollback"
    assert parsed.rollback.to_version == "previous"

    config = messages_pb2.Command(config=messages_pb2.Config(settings={"telemetry.window_s": "60"}))
    parsed = messages_pb2.Command.FromString(config.SerializeToString())
    assert dict(parsed.config.settings) == {"telemetry.window_s": "60"}


def test_telemetry_window_keeps_shadow_presence_and_samples() -> None:
    window = messages_pb2.TelemetryWindow(
        device_id="d1",
        seq=42,
        count=10,
        latency=messages_pb2.Histogram(edges=[1.0, 5.0], counts=[3, 6, 1]),
        samples=[messages_pb2.Sample(prediction_id="p1", values=[0.5, 1.5], shape=[1, 2])],
    )
    parsed = messages_pb2.TelemetryWindow.FromString(window.SerializeToString())
    assert not parsed.HasField("shadow")
    assert list(parsed.latency.counts) == [3, 6, 1]
    assert list(parsed.samples[0].values) == [0.5, 1.5]
    assert not parsed.samples[0].HasField("predicted_label")

    window.shadow.compared = 5
    window.shadow.agreed = 4
    parsed = messages_pb2.TelemetryWindow.FromString(window.SerializeToString())
    assert parsed.HasField("shadow") and parsed.shadow.agreed == 4


def test_unknown_fields_from_a_newer_sender_are_kept() -> None:
    """Versioning: an older reader must accept and pass on fields it does not know."""
    known = messages_pb2.AgentState(device_id="d1", online=True).SerializeToString()
    newer = known + b"\xa0\x06\x07"  # field 100, varint 7: not in this version
    parsed = messages_pb2.AgentState.FromString(newer)

    assert parsed.device_id == "d1" and parsed.online
    assert parsed.SerializeToString() == newer


def test_enums_start_with_unspecified_and_are_prefixed() -> None:
    for enum in messages_pb2.DESCRIPTOR.enum_types_by_name.values():
        prefix = "".join(f"_{c}" if c.isupper() else c.upper() for c in enum.name).lstrip("_")
        assert enum.values_by_number[0].name == f"{prefix}_UNSPECIFIED"
        assert all(value.name.startswith(f"{prefix}_") for value in enum.values)


# --- garbage --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        b"\x08",  # truncated varint
        b"\x0a\x05ab",  # length past the end
        b"\xff" * 11,  # overlong varint tag
        b"\x0b",  # group that never ends
        b"\x0c",  # end of a group that never started
        b"\x0f",  # wire type 7 does not exist
        b"\x00",  # field number 0
    ],
)
@pytest.mark.parametrize("descriptor", MESSAGES, ids=_ids)
def test_corrupt_bytes_raise_decode_error(descriptor: Descriptor, data: bytes) -> None:
    with pytest.raises(DecodeError):
        GetMessageClass(descriptor).FromString(data)


def test_invalid_utf8_in_a_string_raises_decode_error() -> None:
    with pytest.raises(DecodeError):
        messages_pb2.Command.FromString(b"\x0a\x01\xff")  # command_id = b"\xff"


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(descriptor=st.sampled_from(MESSAGES), data=st.binary(max_size=256))
def test_random_bytes_parse_or_raise_decode_error(descriptor: Descriptor, data: bytes) -> None:
    cls = GetMessageClass(descriptor)
    try:
        parsed = cls.FromString(data)
    except DecodeError:
        return
    # What parses must survive a round trip unchanged (unknown fields included).
    assert cls.FromString(parsed.SerializeToString()) == parsed


@settings(max_examples=100, deadline=None)
@given(
    descriptor=st.sampled_from(MESSAGES),
    bad_tag=st.sampled_from([b"\x00", b"\x07", b"\x0f", b"\x0c"]),
    tail=st.binary(max_size=128),
)
def test_bytes_starting_with_an_invalid_tag_raise_decode_error(
    descriptor: Descriptor, bad_tag: bytes, tail: bytes
) -> None:
    with pytest.raises(DecodeError):
        GetMessageClass(descriptor).FromString(bad_tag + tail)
