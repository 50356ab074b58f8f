"""Monitoring: drift and degradation of deployed model versions, from telemetry and labels.

- :func:`evaluate` (one pass over what arrived since the last; the hub's
  :class:`MonitorLoop` calls it every ``EDGELOOP_MONITOR_INTERVAL_S``) writes the score time
  series (``monitor_score``) and debounced :class:`~hub.tables.monitoring.Alert` rows.
- For other parts of the hub (training triggers, rollout gates): :func:`open_alerts`,
  :func:`live_accuracy` and :func:`drift_score`, plain functions on a session.
- :class:`Budget`: the fleet-wide false-alarm budget the windows' rates come from
  (docs/MONITORING.md).
- The detectors themselves live in :mod:`hub.monitoring.detectors`.
"""

from typing import TYPE_CHECKING

from hub._lazy import attributes

if TYPE_CHECKING:
    from hub.monitoring._alerts import drift_score, list_alerts, open_alerts
    from hub.monitoring._cache import DetectorCache
    from hub.monitoring._report import MonitorReport, alert_json
    from hub.monitoring.accuracy import AccuracyEstimate, live_accuracy
    from hub.monitoring.budget import Budget
    from hub.monitoring.publish import MqttAlertPublisher, alerts_topic
    from hub.monitoring.serve import MonitorLoop
    from hub.monitoring.service import AlertPublisher, MonitorConfig, evaluate

__all__ = [
    "AccuracyEstimate",
    "AlertPublisher",
    "Budget",
    "DetectorCache",
    "MonitorConfig",
    "MonitorLoop",
    "MonitorReport",
    "MqttAlertPublisher",
    "alert_json",
    "alerts_topic",
    "drift_score",
    "evaluate",
    "list_alerts",
    "live_accuracy",
    "open_alerts",
]

# each name from its module on first use: `from hub.monitoring.status import ...` (the API's
# `monitor status`) loads no detector, numpy or MQTT client
_ORIGIN = {
    "AccuracyEstimate": "accuracy",
    "AlertPublisher": "service",
    "Budget": "budget",
    "DetectorCache": "_cache",
    "MonitorConfig": "service",
    "MonitorLoop": "serve",
    "MonitorReport": "_report",
    "MqttAlertPublisher": "publish",
    "alert_json": "_report",
    "alerts_topic": "publish",
    "drift_score": "_alerts",
    "evaluate": "service",
    "list_alerts": "_alerts",
    "live_accuracy": "accuracy",
    "open_alerts": "_alerts",
}

__getattr__ = attributes(__name__, _ORIGIN)
