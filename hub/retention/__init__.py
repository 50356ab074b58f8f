"""Retention of every table that grows with traffic, with hourly roll-ups (``service``; the
``RetentionLoop`` ``hub serve`` runs).
"""

from hub._lazy import submodules

__all__ = ["service"]


__getattr__ = submodules(__name__, __all__)
