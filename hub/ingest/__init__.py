"""Telemetry ingest: what devices publish over MQTT, stored in the shared fleet tables.

``IngestWorker`` (paho, MQTT 5, manual acks after the commit, batched, deduped),
``gaps`` (missing sequence numbers per device and stream), ``retention.rollup_and_prune``
(hourly roll-ups, then raw windows deleted). ``python -m hub.ingest`` runs one worker.
"""

from hub.ingest._decode import REASONS
from hub.ingest._stats import IngestStats
from hub.ingest.gaps import SeqGap, gaps
from hub.ingest.worker import IngestWorker

__all__ = ["REASONS", "IngestStats", "IngestWorker", "SeqGap", "gaps"]
