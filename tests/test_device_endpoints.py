"""The ArtifactService address devices are given — in enrolment answers and in the rollout
controller's deploy commands (both use ``hub.security.runtime.device_artifact_endpoint``)."""

from __future__ import annotations

from pathlib import Path

from hub.core.settings import HubSettings
from hub.security.runtime import device_artifact_endpoint, device_endpoints


def test_the_device_facing_endpoint_wins_everywhere(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path, device_grpc_endpoint="hub.example.net:443")
    assert device_artifact_endpoint(settings, grpc_port=41234) == "hub.example.net:443"
    assert device_endpoints(settings, grpc_port=41234).artifact_endpoint == "hub.example.net:443"


def test_without_it_the_bound_download_port(tmp_path: Path) -> None:
    settings = HubSettings(data_dir=tmp_path, grpc_host="10.0.0.5", grpc_port=6000)
    assert device_artifact_endpoint(settings, grpc_port=41234) == "10.0.0.5:41234"
    assert device_artifact_endpoint(settings) == "10.0.0.5:6000"


def test_client_certificates_send_devices_to_the_download_port(tmp_path: Path) -> None:
    settings = HubSettings(
        data_dir=tmp_path,
        tls_self_signed=True,
        mqtt_client_certs=True,
        grpc_port=6000,
        grpc_mtls_port=6001,
    )
    assert device_artifact_endpoint(settings).endswith(":6001")
