"""Training: ``service.train`` (a tracked, registered run of a spec on a dataset version),
the seeded ``loop``, DDP under torchrun (``launch``, ``distributed``), the model
``artifact``, Optuna ``tuning`` and the model code's CI (``check``).
"""

__all__ = ["artifact", "check", "distributed", "launch", "loop", "service", "tuning"]
