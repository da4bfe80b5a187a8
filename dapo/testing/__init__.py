"""Helpers for tests and benchmarks that start real servers (Redis) on loopback."""
