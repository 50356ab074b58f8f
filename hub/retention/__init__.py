"""Retention of every table that grows with traffic, with hourly roll-ups (``service``; the
``RetentionLoop`` ``hub serve`` runs).
"""

from hub.retention import service

__all__ = ["service"]
