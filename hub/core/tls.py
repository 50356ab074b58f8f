"""TLS for the hub's MQTT broker and gRPC server: certificate files and a self-signed CA.

:func:`generate_self_signed` writes a private CA and a server certificate signed by it
(``ca.pem``, ``server.pem``, ``server.key``; keys 0600) for tests and for
``EDGELOOP_TLS_SELF_SIGNED``. Devices get ``ca.pem`` and verify the hub against it
(``EDGELOOP_AGENT_CA_FILE``). The server certificate names ``localhost``, the loopback
addresses, this machine's host name and any ``hosts`` given.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import grpc

CA_FILE, CERT_FILE, KEY_FILE = "ca.pem", "server.pem", "server.key"


@dataclass(frozen=True, kw_only=True)
class TlsFiles:
    """A server certificate chain, its private key and the CA devices verify it with."""

    cert_file: Path
    key_file: Path
    ca_file: Path

    def grpc_server_credentials(self) -> grpc.ServerCredentials:
        """``grpc.ssl_server_credentials`` for this key pair (no client certificates)."""
        import grpc  # lazily: light callers (the CLI) never need it

        pair = (self.key_file.read_bytes(), self.cert_file.read_bytes())
        return grpc.ssl_server_credentials([pair])


def _write(path: Path, data: bytes, *, private: bool) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)


def _names(hosts: tuple[str, ...]) -> list[object]:
    from cryptography import x509

    found: list[object] = []
    for name in ("localhost", socket.gethostname(), "127.0.0.1", "::1", *hosts):
        try:
            entry: object = x509.IPAddress(ipaddress.ip_address(name))
        except ValueError:
            entry = x509.DNSName(name)
        if entry not in found:
            found.append(entry)
    return found


def generate_self_signed(
    folder: Path, *, hosts: tuple[str, ...] = (), days: int = 825, reuse: bool = True
) -> TlsFiles:
    """Write a CA and a server certificate it signs into ``folder``; keep existing ones."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder = Path(folder)
    files = TlsFiles(
        cert_file=folder / CERT_FILE, key_file=folder / KEY_FILE, ca_file=folder / CA_FILE
    )
    if reuse and all(p.is_file() for p in (files.cert_file, files.key_file, files.ca_file)):
        return files
    now = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeloop hub CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeloop hub")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(_names(hosts)), critical=False)  # type: ignore[arg-type]
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    _write(files.key_file, key_pem, private=True)
    _write(files.cert_file, cert.public_bytes(pem), private=False)
    _write(files.ca_file, ca_cert.public_bytes(pem), private=False)
    return files
