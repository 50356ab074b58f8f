from tests.rollouts.fleet import rollout_hub

__all__ = ["rollout_hub"]
