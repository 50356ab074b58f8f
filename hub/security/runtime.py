"""The hub's security runtime: enrol and revoke devices, then keep the broker in step.

:class:`Security` is built once per hub process (``hub serve`` gives it the embedded
broker's address and the bound gRPC port; the admin API builds one from the settings when
it runs alone, e.g. the CLI on ``--data-dir``). Both the gRPC ``DeviceService`` and the
admin API enrol through it, so the two paths cannot drift apart.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Protocol

from sqlalchemy.engine import Engine

from hub.core.db import session_scope
from hub.core.errors import InvalidInput
from hub.core.settings import HubSettings
from hub.security.client_certs import DeviceCA
from hub.security.enrollment import (
    DeviceEndpoints,
    EnrollResult,
    enroll_device,
    issue_client_certificate,
    revoke_device,
    strip_credentials,
)
from hub.security.keys import bundle_public_key

log = logging.getLogger(__name__)


def device_endpoints(
    settings: HubSettings, *, mqtt_url: str | None = None, grpc_port: int | None = None
) -> DeviceEndpoints:
    """Broker and ArtifactService addresses for devices (``EDGELOOP_DEVICE_*`` win).

    ``grpc_port``: the port devices download from; by default ``grpc_mtls_port`` with
    client certificates on (``hub.rpc.auth``), else ``grpc_port``.
    """
    broker = (
        settings.device_mqtt_url
        or mqtt_url
        or settings.mqtt_url
        or f"mqtt://127.0.0.1:{settings.embedded_mqtt_port}"
    )
    return DeviceEndpoints(
        mqtt_url=strip_credentials(broker),
        artifact_endpoint=device_artifact_endpoint(settings, grpc_port=grpc_port),
        hub_public_key=bundle_public_key(settings),
    )


def device_artifact_endpoint(settings: HubSettings, *, grpc_port: int | None = None) -> str:
    """The ArtifactService address devices download from, in enrolment answers and in every
    deploy command: ``EDGELOOP_DEVICE_GRPC_ENDPOINT`` when set, else ``grpc_host`` and the
    download port (``grpc_port`` here, else the settings')."""
    if settings.device_grpc_endpoint:
        return settings.device_grpc_endpoint
    if grpc_port is None:
        grpc_port = settings.grpc_mtls_port if settings.mqtt_client_certs else settings.grpc_port
    return f"{settings.grpc_host}:{grpc_port}"


class BrokerLogins(Protocol):
    """What enrolment needs from the broker's access control: regenerate the logins from the
    database (debounced, or now) and stop. :class:`hub.mqtt.auth.BrokerAuth` implements it."""

    def request_sync(self) -> None: ...

    def flush(self, timeout: float = 10.0) -> None: ...

    def sync_now(self) -> None: ...

    def close(self) -> None: ...


class Security:
    """Enrolment + revocation with the broker's files regenerated (debounced) after each."""

    def __init__(
        self,
        *,
        settings: HubSettings,
        engine: Engine,
        broker_auth: BrokerLogins,
        endpoints: Callable[[], DeviceEndpoints] | None = None,
    ) -> None:
        self.settings = settings
        self.engine = engine
        self.broker_auth = broker_auth
        self._endpoints = endpoints or (lambda: device_endpoints(settings))
        self._ca: DeviceCA | None = None

    def enroll(
        self,
        *,
        device_id: str,
        token: str | None,
        capabilities: Mapping[str, str] | None = None,
        tags: Mapping[str, str] | None = None,
        group: str | None = None,
        wait: bool = False,
        client_csr: bytes | None = None,
    ) -> EnrollResult:
        """Enrol; with ``wait`` return only once the broker accepts the new login.

        With client certificates on (``mqtt_client_certs``) ``client_csr`` is required and
        the result carries the signed certificate; otherwise it is ignored.
        """
        certs = self.settings.mqtt_client_certs
        if certs and not client_csr:
            raise InvalidInput(
                "this hub's broker takes client certificates only: enrol from the device "
                "with `edgeloop agent enroll` (it sends a certificate signing request)"
            )
        with session_scope(self.engine) as session:
            result = enroll_device(
                session,
                device_id=device_id,
                token=token,
                capabilities=capabilities or {},
                tags=tags or {},
                settings=self._endpoints(),
                group=group,
            )
            if certs and client_csr:
                ca = self._device_ca()
                issued = issue_client_certificate(
                    session,
                    ca=ca,
                    device_id=result.device_id,
                    csr_pem=client_csr,
                    days=self.settings.mqtt_client_cert_days,
                )
                result = replace(result, client_certificate=issued.pem, client_ca=ca.ca_pem)
        self.broker_auth.request_sync()
        if wait:
            self.broker_auth.flush()
        return result

    def _device_ca(self) -> DeviceCA:
        if self._ca is None:
            self._ca = DeviceCA.for_data_dir(self.settings.data_dir)
        return self._ca

    def revoke(self, *, device_id: str) -> None:
        """Remove the login and reload the broker now: the device is disconnected."""
        with session_scope(self.engine) as session:
            revoke_device(session, device_id=device_id)
        self.broker_auth.sync_now()

    def close(self) -> None:
        self.broker_auth.close()
