"""Rollout decisions: pure functions of state, measurements and spec (no I/O)."""
