"""Client certificates for MQTT (mTLS, ``EDGELOOP_MQTT_CLIENT_CERTS``): a device CA, CSRs, a CRL.

Off by default (devices log in with a password). When on, the embedded Mosquitto's TLS
listener requires a client certificate signed by the hub's **device CA** and takes the
certificate's common name as the MQTT username (``use_identity_as_username``), so the
ACL's per-username patterns apply unchanged: CN = device id.

* The device CA lives in ``DATA_DIR/tls/clients/`` (``ca.pem``; ``ca.key`` 0600). It is
  separate from the CA that signed the server certificate, so client certificates work
  with an operator's own server certificate too (whose CA key the hub never sees).
* A device sends a CSR at enrolment (its private key never leaves it);
  :meth:`DeviceCA.issue` checks the CSR's self-signature and key type (EC P-256/P-384 or
  Ed25519) and signs a certificate with CN = device id, ``clientAuth`` only, valid for
  ``mqtt_client_cert_days``.
* The hub's own MQTT client gets a certificate for ``edgeloop-hub`` (key made here, 0600).
* Revocation: every certificate serial is kept in the ``device_certificate`` table;
  revoking a device (or re-enrolling it) revokes its certificates, and the CRL
  (``crl.pem``, Mosquitto's ``crlfile``) is rewritten with the password file, followed by
  the same SIGHUP: Mosquitto 2.0.11 re-reads the CRL on SIGHUP and refuses the revoked
  certificate's next TLS handshake, but keeps connections that are open. Those are cut off
  by the ACL (:func:`hub.mqtt.auth.render_acl` names live devices only in this mode), so
  a revoked device still connected can publish and read nothing.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hub.core.clock import utcnow
from hub.core.errors import InvalidInput
from hub.core.tls import _write

CLIENTS_DIR = Path("tls") / "clients"
HUB_CERT, HUB_KEY = "hub.pem", "hub.key"
CRL_FILE = "crl.pem"
_CURVES = (ec.SECP256R1, ec.SECP384R1)


class CsrRejected(InvalidInput, ValueError):
    """A certificate signing request the hub will not sign; the message says why."""


@dataclass(frozen=True)
class Issued:
    pem: bytes
    serial: int
    not_after: dt.datetime


def _key_usage(*, ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


class DeviceCA:
    """The CA that signs device (and hub) client certificates, in ``folder``."""

    def __init__(self, folder: Path, *, days: int = 3650) -> None:
        self.folder = Path(folder)
        self.ca_file = self.folder / "ca.pem"
        self.key_file = self.folder / "ca.key"
        self.crl_file = self.folder / CRL_FILE
        if not (self.ca_file.is_file() and self.key_file.is_file()):
            self._generate(days)
        self._cert = x509.load_pem_x509_certificate(self.ca_file.read_bytes())
        key = serialization.load_pem_private_key(self.key_file.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key
        if not self.crl_file.is_file():
            self.write_crl([])

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> DeviceCA:
        return cls(Path(data_dir) / CLIENTS_DIR)

    @property
    def ca_pem(self) -> bytes:
        return self.ca_file.read_bytes()

    def _generate(self, days: int) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgeloop device CA")])
        start = utcnow() - dt.timedelta(minutes=5)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(ca=True), critical=True)
            .sign(key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        key_pem = key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        _write(self.key_file, key_pem, private=True)
        _write(self.ca_file, cert.public_bytes(pem), private=False)

    def _sign(self, *, common_name: str, public_key: object, days: float) -> Issued:
        start = utcnow() - dt.timedelta(minutes=5)
        not_after = min(start + dt.timedelta(days=days), self._cert.not_valid_after_utc)
        serial = x509.random_serial_number()
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self._cert.subject)
            .public_key(public_key)  # type: ignore[arg-type]
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(ca=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        return Issued(
            pem=cert.public_bytes(serialization.Encoding.PEM), serial=serial, not_after=not_after
        )

    def issue(self, csr_pem: bytes, *, common_name: str, days: float) -> Issued:
        """Sign ``csr_pem`` for ``common_name`` (the CSR's own subject is ignored)."""
        try:
            csr = x509.load_pem_x509_csr(csr_pem)
        except ValueError as exc:
            raise CsrRejected(f"client_csr is not a PEM certificate request: {exc}") from None
        if not csr.is_signature_valid:
            raise CsrRejected("client_csr's signature does not verify (proof of key possession)")
        key = csr.public_key()
        if isinstance(key, ec.EllipticCurvePublicKey):
            if not isinstance(key.curve, _CURVES):
                raise CsrRejected(f"client_csr uses curve {key.curve.name}; use P-256 or P-384")
        elif not isinstance(key, ed25519.Ed25519PublicKey):
            raise CsrRejected("client_csr's key must be EC P-256/P-384 or Ed25519")
        return self._sign(common_name=common_name, public_key=key, days=days)

    def hub_certificate(self, user: str, *, days: float = 365) -> tuple[Path, Path]:
        """The hub's own client cert + key (made here, 0600), renewed when < 1/3 is left."""
        cert_file, key_file = self.folder / HUB_CERT, self.folder / HUB_KEY
        if cert_file.is_file() and key_file.is_file():
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            left = cert.not_valid_after_utc - utcnow()
            if cert.issuer == self._cert.subject and left > dt.timedelta(days=days / 3):
                return cert_file, key_file
        key = ec.generate_private_key(ec.SECP256R1())
        issued = self._sign(common_name=user, public_key=key.public_key(), days=days)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        _write(key_file, key_pem, private=True)
        _write(cert_file, issued.pem, private=True)
        return cert_file, key_file

    def write_crl(self, revoked: Iterable[tuple[int, dt.datetime]], *, days: int = 365) -> None:
        """Rewrite ``crl.pem``: every (serial, revoked at) given; next update in ``days``."""
        now = utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self._cert.subject)
            .last_update(now - dt.timedelta(minutes=5))
            .next_update(now + dt.timedelta(days=days))
        )
        for serial, moment in revoked:
            when = moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(when).build()
            )
        crl = builder.sign(self._key, hashes.SHA256())
        _write(self.crl_file, crl.public_bytes(serialization.Encoding.PEM), private=False)
