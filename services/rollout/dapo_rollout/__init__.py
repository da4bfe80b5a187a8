"""dapo rollout service."""
