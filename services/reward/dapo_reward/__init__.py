"""dapo reward service."""
