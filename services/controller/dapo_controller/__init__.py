"""dapo controller service."""
