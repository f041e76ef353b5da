"""The operator's own Prometheus metrics (names per Prometheus conventions; alerts: docs/monitoring/alerts.yaml)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RECONCILES = Counter("modelyard_reconciles", "ModelDeployment reconciles run.")
RECONCILE_ERRORS = Counter(
    "modelyard_reconcile_errors",
    "Reconciles that failed, by kind of failure: api_<HTTP status>, unreachable, internal (a bug: the object gets "
    "ReconcileFailed), invalid_spec.",
    ["kind"],
)
RECONCILE_SECONDS = Histogram("modelyard_reconcile_duration_seconds", "Time one reconcile takes.",
                              buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
ROLLOUT_EVENTS = Counter(
    "modelyard_rollout_events",
    "Canary rollout events by reason: CanaryProgressing (a new weight or a passed analysis), CanaryWaiting (a failed "
    "analysis under the limit), CanaryPromoted, CanaryRolledBack.",
    ["reason"],
)
RECONCILES_RUNNING = Gauge("modelyard_reconciles_in_flight", "Reconciles running now.")
QUEUE_DEPTH = Gauge("modelyard_queue_depth", "Models waiting for a reconcile worker.")
REQUEUES_PENDING = Gauge("modelyard_requeues_pending",
                         "Models waiting for a timed reconcile (a rollout's next analysis, a drain's end, a retry).")
LEADER = Gauge("modelyard_leader", "1 while this replica reconciles (it holds the Lease, or runs without leader "
               "election), 0 while it stands by.")


class ModelStates(Collector):
    """modelyard_model_ready{namespace, modeldeployment, reason}: 1 when the model's Ready condition is True, 0
    otherwise, with the condition's reason; one series a model, as kube-state-metrics does for pods."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._states: dict[tuple[str, str], tuple[bool, str]] = {}

    def set(self, namespace: str, name: str, ready: bool, reason: str) -> None:
        with self._lock:
            self._states[(namespace, name)] = (ready, reason)

    def forget(self, namespace: str, name: str) -> None:
        with self._lock:
            self._states.pop((namespace, name), None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("modelyard_model_ready", "1 when the ModelDeployment's Ready condition is True, "
                                   "0 otherwise; the reason is the condition's.",
                                   labels=["namespace", "modeldeployment", "reason"])
        with self._lock:
            for (namespace, name), (ready, reason) in sorted(self._states.items()):
                family.add_metric([namespace, name, reason], 1.0 if ready else 0.0)
        yield family


MODELS = ModelStates()
REGISTRY.register(MODELS)


def start_metrics_server(port: int) -> None:
    """Serve /metrics on `port` (0 disables it)."""
    if port:
        start_http_server(port)
