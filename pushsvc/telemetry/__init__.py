"""Metrics, logs and traces. Recorded by the pumps (node, http), from the core's effects."""
