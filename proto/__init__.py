"""The edgeloop wire protocol (protobuf package ``edgeloop.v1``) and its MQTT topic names.

``messages_pb2`` holds the MQTT payloads (``Command``, ``AgentState``,
``DeploymentEvent``, ``TelemetryWindow``, ``Feedback``), ``services_pb2`` the gRPC
request/response messages. ``services_pb2_grpc`` (stubs and servicers) needs grpcio, which
the core install lacks, so it is not imported here: ``from proto import services_pb2_grpc``.
The rules are in docs/PROTOCOL.md; regenerate the modules with ``python -m proto.generate``.
"""

from proto import messages_pb2, services_pb2
from proto.topics import TopicKind, Topics, validate_device_id

__all__ = ["TopicKind", "Topics", "messages_pb2", "services_pb2", "validate_device_id"]
