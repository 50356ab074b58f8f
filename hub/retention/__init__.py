"""hub.retention.service."""
