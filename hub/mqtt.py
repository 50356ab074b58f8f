"""Where the hub's own MQTT clients connect: one parsed broker address, credentials included.

The hub's clients (ingest, the rollout command publisher) take a URL such as
``mqtt://hub:secret@127.0.0.1:1883``; the user and password in it authenticate the hub to
the broker (the broker's ACL gives the hub's user every device topic).

>>> t = MqttTarget.from_url("mqtt://hub:s3cret@10.0.0.5:1884")
>>> (t.host, t.port, t.username, t.password)
('10.0.0.5', 1884, 'hub', 's3cret')
>>> MqttTarget.from_url("mqtt://127.0.0.1").port
1883
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import unquote, urlparse

from hub.errors import InvalidInput


@dataclass(frozen=True, kw_only=True)
class MqttTarget:
    host: str
    port: int = 1883
    username: str | None = None
    password: str | None = None

    @classmethod
    def from_url(cls, url: str) -> MqttTarget:
        parsed = urlparse(url)
        if parsed.scheme not in {"mqtt", "tcp"} or not parsed.hostname:
            raise InvalidInput(
                f"{_redact(url)!r} is not a broker address; use mqtt://[user:password@]host:port"
            )
        return cls(
            host=parsed.hostname,
            port=parsed.port or 1883,
            username=unquote(parsed.username) if parsed.username else None,
            password=unquote(parsed.password) if parsed.password else None,
        )

    def __repr__(self) -> str:  # never print the password
        return f"MqttTarget(host={self.host!r}, port={self.port}, username={self.username!r})"


def _redact(url: str) -> str:
    parsed = urlparse(url)
    if parsed.password:
        return url.replace(f":{parsed.password}@", ":***@")
    return url
