"""TLS towards the hub: gRPC channels (artifacts, enrolment) and MQTT, verified with a CA.

``ca_file`` is the hub's CA certificate (``EDGELOOP_AGENT_CA_FILE``, or ``--ca-file`` at
enrolment). Given one, gRPC channels are secure and verify the hub's certificate against
it; without one they are plaintext, as before. ``mqtts://`` URLs connect over TLS
(verified against ``ca_file``, else the system's trust store).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.aio

TLS_SCHEMES = frozenset({"mqtts", "ssl"})


def channel_credentials(ca_file: Path) -> grpc.ChannelCredentials:
    """Credentials that trust only the certificates ``ca_file`` signs."""
    return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes())


def aio_channel(
    endpoint: str, *, ca_file: Path | None, options: Sequence[tuple[str, Any]] = ()
) -> grpc.aio.Channel:
    """An asyncio channel to ``endpoint``: TLS with ``ca_file``, else plaintext."""
    if ca_file is None:
        return grpc.aio.insecure_channel(endpoint, options=options)
    return grpc.aio.secure_channel(endpoint, channel_credentials(ca_file), options=options)


def sync_channel(endpoint: str, *, ca_file: Path | None) -> grpc.Channel:
    """A blocking channel to ``endpoint``: TLS with ``ca_file``, else plaintext."""
    if ca_file is None:
        return grpc.insecure_channel(endpoint)
    return grpc.secure_channel(endpoint, channel_credentials(ca_file))


def mqtt_uses_tls(url: str) -> bool:
    return urlparse(url).scheme in TLS_SCHEMES


def mqtt_tls_params(url: str, *, ca_file: Path | None) -> Any:
    """``aiomqtt.TLSParameters`` for an ``mqtts://`` URL, else None."""
    if not mqtt_uses_tls(url):
        return None
    import aiomqtt

    return aiomqtt.TLSParameters(ca_certs=str(ca_file) if ca_file is not None else None)
