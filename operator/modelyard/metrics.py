"""The operator's own Prometheus metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

RECONCILES = Counter("modelyard_reconciles", "ModelDeployment reconciles run.")
RECONCILE_ERRORS = Counter("modelyard_reconcile_errors", "Reconciles that failed, by kind of failure.", ["kind"])
RECONCILE_SECONDS = Histogram("modelyard_reconcile_duration_seconds", "Time one reconcile takes.")
ROLLOUT_EVENTS = Counter(
    "modelyard_rollout_events",
    "Canary rollout events by reason: CanaryProgressing (a new weight or a passed analysis), CanaryWaiting (a failed "
    "analysis under the limit), CanaryPromoted, CanaryRolledBack.",
    ["reason"],
)


def start_metrics_server(port: int) -> None:
    """Serve /metrics on `port` (0 disables it)."""
    if port:
        start_http_server(port)
