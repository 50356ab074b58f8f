"""TLS towards the hub: gRPC channels (artifacts, enrolment) and MQTT, verified with a CA.

``ca_file`` is the hub's CA certificate (``EDGELOOP_AGENT_CA_FILE``, or ``--ca-file`` at
enrolment). Given one, gRPC channels are secure and verify the hub's certificate against
it; without one they are plaintext, as before. ``mqtts://`` URLs connect over TLS
(verified against ``ca_file``, else the system's trust store), presenting the device's
client certificate when it has one (a hub with ``EDGELOOP_MQTT_CLIENT_CERTS``; the key is
made here by :func:`new_client_key`, the hub signs only its CSR). Bundle downloads present
it too (such a hub serves bundles only to device certificates, ``hub.rpc.auth``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import grpc
import grpc.aio

TLS_SCHEMES = frozenset({"mqtts", "ssl"})


def channel_credentials(
    ca_file: Path, *, client_cert: Path | None = None, client_key: Path | None = None
) -> grpc.ChannelCredentials:
    """Credentials that trust only the certificates ``ca_file`` signs.

    With ``client_cert`` + ``client_key`` (PEM files, read now) the channel presents the
    device's client certificate, as a hub with client certificates requires for downloads.
    """
    if (client_cert is None) != (client_key is None):
        raise ValueError("a client certificate needs both client_cert and client_key")
    pair: dict[str, bytes] = {}
    if client_cert is not None and client_key is not None:
        pair = {
            "certificate_chain": Path(client_cert).read_bytes(),
            "private_key": Path(client_key).read_bytes(),
        }
    return grpc.ssl_channel_credentials(root_certificates=Path(ca_file).read_bytes(), **pair)


def aio_channel(
    endpoint: str,
    *,
    ca_file: Path | None,
    options: Sequence[tuple[str, Any]] = (),
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> grpc.aio.Channel:
    """An asyncio channel to ``endpoint``: TLS with ``ca_file``, else plaintext.

    ``client_cert`` + ``client_key``: presented over TLS (ignored without ``ca_file``).
    """
    if ca_file is None:
        return grpc.aio.insecure_channel(endpoint, options=options)
    credentials = channel_credentials(ca_file, client_cert=client_cert, client_key=client_key)
    return grpc.aio.secure_channel(endpoint, credentials, options=options)


def sync_channel(endpoint: str, *, ca_file: Path | None) -> grpc.Channel:
    """A blocking channel to ``endpoint``: TLS with ``ca_file``, else plaintext."""
    if ca_file is None:
        return grpc.insecure_channel(endpoint)
    return grpc.secure_channel(endpoint, channel_credentials(ca_file))


def mqtt_uses_tls(url: str) -> bool:
    return urlparse(url).scheme in TLS_SCHEMES


def mqtt_tls_params(
    url: str,
    *,
    ca_file: Path | None,
    client_cert: Path | None = None,
    client_key: Path | None = None,
) -> Any:
    """``aiomqtt.TLSParameters`` for an ``mqtts://`` URL (client cert if given), else None."""
    if not mqtt_uses_tls(url):
        return None
    import aiomqtt

    return aiomqtt.TLSParameters(
        ca_certs=str(ca_file) if ca_file is not None else None,
        certfile=str(client_cert) if client_cert is not None else None,
        keyfile=str(client_key) if client_key is not None else None,
    )


def new_client_key(common_name: str) -> tuple[bytes, bytes]:
    """A new EC P-256 private key (PKCS#8 PEM) and a CSR for it (PEM), for mTLS."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)
