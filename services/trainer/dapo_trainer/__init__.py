"""dapo trainer service."""
