"""Several hub replicas on one database (``hub serve --components ...``).

Each ``hub serve`` process is a *replica*: a row in ``cluster_replica`` (id, host, pid, the
components it runs, a heartbeat). Singleton work (the rollout controller, trigger
evaluation, retention, the key-rotation sender) runs only where its *lease* is held (a row
in ``cluster_lease``: holder, term, expiry); the others stand by and take it over when the
holder stops renewing. Monitoring splits model versions over the live monitor replicas by
rendezvous hashing (:meth:`ClusterMember.owns`). ``member`` holds the machinery;
``status`` reads it back for ``GET /api/v1/cluster``.
"""

from hub._lazy import submodules

__all__ = ["member", "status"]


__getattr__ = submodules(__name__, __all__)
