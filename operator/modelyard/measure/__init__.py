"""Measuring a canary: checks -> PromQL (promql.py, pure) -> numbers from Prometheus (prometheus.py)."""
