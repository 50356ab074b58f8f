"""The broker ``hub serve`` owns: started with the hub's per-device logins and ACL."""

from __future__ import annotations

import logging

from hub.core.settings import HubSettings, SettingsError
from hub.mqtt.auth import BrokerAuth
from hub.mqtt.broker import EmbeddedBroker

__all__ = ["embedded_broker"]

log = logging.getLogger(__name__)


def embedded_broker(settings: HubSettings, *, broker_auth: BrokerAuth) -> EmbeddedBroker:
    """The broker ``hub serve`` owns, with per-device logins unless turned off.

    Mosquitto gets the generated password + ACL files. amqtt cannot enforce per-device
    topic rules here: production mode refuses it; dev mode runs it anonymous with a loud
    warning.
    """
    tls = settings.tls_files()  # TLS listener when configured (Mosquitto only)
    broker = EmbeddedBroker(
        data_dir=settings.data_dir,
        port=settings.embedded_mqtt_port,
        kind=settings.embedded_broker,
        tls=tls,
    )
    if settings.broker_auth and broker.kind_in_use == "mosquitto":
        broker = EmbeddedBroker(
            data_dir=settings.data_dir,
            port=settings.embedded_mqtt_port,
            kind="mosquitto",
            auth=broker_auth.files(),
            tls=tls,
            internal_port=settings.embedded_mqtt_internal_port,
        )
    elif settings.broker_auth:
        if settings.mode == "production":
            raise SettingsError(
                "production mode needs broker access control, which the amqtt fallback cannot "
                "enforce: install mosquitto, or set EDGELOOP_MQTT_URL to a secured broker"
            )
        log.warning(
            "SECURITY: the embedded amqtt broker runs WITHOUT authentication or ACLs (dev "
            "mode only): any client may read and write every topic; install mosquitto"
        )
    return broker
