"""Thin kopf handlers: parse the body into the model, call reconcile, map errors. Nothing else."""
