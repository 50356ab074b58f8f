"""Where the hub's own MQTT clients connect: one parsed broker address, credentials included.

The hub's clients (ingest, the rollout command publisher) take a URL such as
``mqtt://hub:secret@127.0.0.1:1883``; the user and password in it authenticate the hub to
the broker (the broker's ACL gives the hub's user every device topic).

>>> t = MqttTarget.from_url("mqtt://hub:s3cret@10.0.0.5:1884")
>>> (t.host, t.port, t.username, t.password)
('10.0.0.5', 1884, 'hub', 's3cret')
>>> MqttTarget.from_url("mqtt://127.0.0.1").port
1883

``mqtts://`` (default port 8883) connects over TLS and verifies the broker against the CA
file named by the ``ca_file`` query parameter (else the system's trust store):

>>> t = MqttTarget.from_url("mqtts://127.0.0.1?ca_file=/etc/edgeloop/ca.pem")
>>> (t.port, t.tls, t.ca_file)
(8883, True, '/etc/edgeloop/ca.pem')

``cert_file`` and ``key_file`` parameters add a client certificate (mTLS, the hub's own
when ``EDGELOOP_MQTT_CLIENT_CERTS`` is on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from hub.core.errors import InvalidInput
from hub.core.redact import redact_url


@dataclass(frozen=True, kw_only=True)
class MqttTarget:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    @classmethod
    def from_url(cls, url: str) -> MqttTarget:
        parsed = urlparse(url)
        if parsed.scheme not in {"mqtt", "tcp", "mqtts", "ssl"} or not parsed.hostname:
            raise InvalidInput(
                f"{redact_url(url)!r} is not a broker address; use mqtt://host:port or "
                "mqtts://host:port?ca_file=/path/ca.pem (a login goes before the host: "
                "user:password@host)"
            )
        tls = parsed.scheme in {"mqtts", "ssl"}
        query = parse_qs(parsed.query)
        ca_file = query.get("ca_file", [None])[-1]
        return cls(
            host=parsed.hostname,
            port=parsed.port or (8883 if tls else 1883),
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
            tls=tls,
            ca_file=ca_file,
            cert_file=query.get("cert_file", [None])[-1],
            key_file=query.get("key_file", [None])[-1],
        )

    def configure(self, client: Any) -> None:
        """Give a paho ``Client`` this target's login and, for ``mqtts``, TLS with the CA."""
        if self.username:
            client.username_pw_set(self.username, self.password)
        if self.tls:
            # verifies the broker's certificate and host name; presents ours if we have one
            client.tls_set(ca_certs=self.ca_file, certfile=self.cert_file, keyfile=self.key_file)

    def __repr__(self) -> str:  # never print the password
        return (
            f"MqttTarget(host={self.host!r}, port={self.port}, username={self.username!r}, "
            f"tls={self.tls})"
        )
