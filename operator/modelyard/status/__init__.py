"""Conditions and what the child objects say about a revision."""
