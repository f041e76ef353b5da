"""spec.scaling's child: a KEDA ScaledObject (engine keda) or an autoscaling/v2 HorizontalPodAutoscaler (engine hpa).

Pure, like every renderer; applied by modelyard.reconcile.scaling. Either one scales the Deployment of the revision
that serves (`target`); the PromQL behind each built-in metric is written here, once, and documented in
docs/scaling.md.

Triton's series come from the revision's pods through the scrape config (docs/monitoring/scrape-config.yaml), which
labels them namespace, modeldeployment and revision. Triton's counters are cumulative:
nv_inference_queue_duration_us sums the queue time of every request, nv_inference_request_success counts requests,
nv_inference_count counts inferences (a batch of 8 is 8). A revision with no request in the window measures 0 queue
time, not "no data".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from modelyard.api.names import child_metadata, common_labels, revision_object_name, service_name
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import seconds
from modelyard.api.v1alpha1.scaling import Scaling, ScalingMetric

KEDA_API_VERSION = "keda.sh/v1alpha1"
GATEWAY_TRIGGER = "gateway-requests"
"""The ScaledObject trigger that wakes a model at zero: the gateway counts requests for a model with no pod."""
GATEWAY_THRESHOLD = "1000000"
"""Its per-replica target: so high that it never asks for more than one replica; the Triton metric scales."""

EXTERNAL_METRIC_NAMES = {
    "queueTime": "modelyard_triton_queue_time_ms",
    "pendingRequests": "modelyard_triton_pending_requests",
    "inferenceRate": "modelyard_triton_inference_rate",
    "gpuUtilization": "modelyard_triton_gpu_utilization_percent",
    "requestsWaiting": "modelyard_vllm_requests_waiting",
    "kvCacheUsage": "modelyard_vllm_kv_cache_usage_percent",
    "timeToFirstToken": "modelyard_vllm_time_to_first_token_ms",
}
"""engine hpa: the External metrics the cluster's adapter must serve (docs/monitoring/prometheus-adapter.yaml)."""


@dataclass(frozen=True)
class ScalingQuery:
    query: str
    metric_type: str
    """How the autoscaler compares it with the target: Value (as it is) or AverageValue (divided by replicas)."""


def triton_selector(namespace: str, modeldeployment: str, revision: str) -> str:
    """The scrape config's labels of one revision's Triton pods."""
    return f'{{namespace="{namespace}",modeldeployment="{modeldeployment}",revision="{revision}"}}'


def scaling_query(metric: ScalingMetric, namespace: str, modeldeployment: str, revision: str) -> ScalingQuery:
    """spec.scaling.metric as the PromQL the autoscaler evaluates for one revision."""
    sel, w = triton_selector(namespace, modeldeployment, revision), metric.window
    if metric.type == "queueTime":
        requests = f"clamp_min(sum(rate(nv_inference_request_success{sel}[{w}])), 1e-9)"
        return ScalingQuery(f"sum(rate(nv_inference_queue_duration_us{sel}[{w}])) / 1000 / {requests}", "Value")
    if metric.type == "pendingRequests":
        return ScalingQuery(f"sum(nv_inference_pending_request_count{sel})", "AverageValue")
    if metric.type == "inferenceRate":
        return ScalingQuery(f"sum(rate(nv_inference_count{sel}[{w}]))", "AverageValue")
    if metric.type == "gpuUtilization":
        return ScalingQuery(f"100 * avg(nv_gpu_utilization{sel})", "Value")
    # The vLLM backend's series (serving.runtime vllm), from the same pods and with the same labels.
    if metric.type == "requestsWaiting":
        return ScalingQuery(f"sum(vllm:num_requests_waiting{sel})", "AverageValue")
    if metric.type == "kvCacheUsage":
        return ScalingQuery(f"100 * avg(vllm:kv_cache_usage_perc{sel})", "Value")
    if metric.type == "timeToFirstToken":
        first = f"clamp_min(sum(rate(vllm:time_to_first_token_seconds_count{sel}[{w}])), 1e-9)"
        return ScalingQuery(f"1000 * sum(rate(vllm:time_to_first_token_seconds_sum{sel}[{w}])) / {first}", "Value")
    assert metric.query is not None
    query = (metric.query.replace("$namespace", namespace).replace("$modeldeployment", modeldeployment)
             .replace("$revision", revision))
    return ScalingQuery(query, metric.target_type or "AverageValue")


def gateway_request_rate(md: ModelDeployment, window: str) -> str:
    """Requests per second through the model's HTTPRoute, as Traefik's router counts them: a request that finds no
    pod behind the route (503) is counted too, so this series exists at zero. (Traefik's per-backend counter does not
    count a backend without endpoints.) Traefik names the route's routers httproute-<namespace>-<route>-gw-..."""
    router = f"httproute-{md.metadata.namespace}-{service_name(md)}-gw-.+"
    return f'sum(rate(traefik_router_requests_total{{router=~"{router}"}}[{window}]))'


def number(value: float) -> str:
    """A target as KEDA's threshold and a resource.Quantity both read it: plain decimal, no exponent."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text or "0"


def min_replicas(scaling: Scaling, rolling_out: bool) -> int:
    """Nothing scales to zero while a new revision rolls out: it is measured against the serving one."""
    return max(scaling.min_replicas, 1) if rolling_out else scaling.min_replicas


def autoscaler_name(md: ModelDeployment) -> str:
    return md.metadata.name


def keda_hpa_name(md: ModelDeployment) -> str:
    """The HPA KEDA keeps for the ScaledObject (KEDA's own default name)."""
    return f"keda-hpa-{autoscaler_name(md)}"


def _target_ref(md: ModelDeployment, revision: str) -> dict[str, str]:
    return {"apiVersion": "apps/v1", "kind": "Deployment", "name": revision_object_name(md, revision)}


def _behavior(scaling: Scaling) -> dict[str, Any] | None:
    return scaling.behavior.model_dump(by_alias=True, exclude_none=True) if scaling.behavior else None


def render_scaled_object(md: ModelDeployment, target: str, prometheus_url: str, rolling_out: bool) -> dict[str, Any]:
    """A KEDA ScaledObject on the target revision's Deployment, with a Prometheus trigger for the metric and, when
    the model may scale to zero, one on the gateway's request counter that wakes it."""
    scaling = md.spec.scaling
    assert scaling is not None
    ns, name = md.metadata.namespace, md.metadata.name
    q = scaling_query(scaling.metric, ns, name, target)
    triggers: list[dict[str, Any]] = [{
        "type": "prometheus",
        "name": f"triton-{scaling.metric.type.lower()}",
        "metricType": q.metric_type,
        "metadata": {"serverAddress": prometheus_url, "query": q.query, "threshold": number(scaling.metric.target)},
    }]
    if scaling.min_replicas == 0:
        triggers.append({
            "type": "prometheus",
            "name": GATEWAY_TRIGGER,
            "metricType": "AverageValue",
            "metadata": {"serverAddress": prometheus_url, "query": gateway_request_rate(md, scaling.metric.window),
                         "threshold": GATEWAY_THRESHOLD, "activationThreshold": "0"},
        })
    hpa: dict[str, Any] = {"name": keda_hpa_name(md)}
    behavior = _behavior(scaling)
    if behavior:
        hpa["behavior"] = behavior
    return {
        "apiVersion": KEDA_API_VERSION,
        "kind": "ScaledObject",
        "metadata": child_metadata(md, autoscaler_name(md), common_labels(md)),
        "spec": {
            "scaleTargetRef": _target_ref(md, target),
            "minReplicaCount": min_replicas(scaling, rolling_out),
            "maxReplicaCount": scaling.max_replicas,
            "pollingInterval": max(1, round(seconds(scaling.polling_interval))),
            "cooldownPeriod": max(1, round(seconds(scaling.idle_period))),
            "advanced": {"horizontalPodAutoscalerConfig": hpa},
            "triggers": triggers,
        },
    }


def render_hpa(md: ModelDeployment, target: str) -> dict[str, Any]:
    """An autoscaling/v2 HPA on the External metric the cluster's adapter serves for the target revision."""
    scaling = md.spec.scaling
    assert scaling is not None and scaling.metric.type in EXTERNAL_METRIC_NAMES
    q = scaling_query(scaling.metric, md.metadata.namespace, md.metadata.name, target)
    value = number(scaling.metric.target)
    metric_target = ({"type": "Value", "value": value} if q.metric_type == "Value"
                     else {"type": "AverageValue", "averageValue": value})
    spec: dict[str, Any] = {
        "scaleTargetRef": _target_ref(md, target),
        "minReplicas": scaling.min_replicas,
        "maxReplicas": scaling.max_replicas,
        "metrics": [{"type": "External", "external": {
            "metric": {"name": EXTERNAL_METRIC_NAMES[scaling.metric.type],
                       "selector": {"matchLabels": {"modeldeployment": md.metadata.name, "revision": target}}},
            "target": metric_target}}],
    }
    behavior = _behavior(scaling)
    if behavior:
        spec["behavior"] = behavior
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": child_metadata(md, autoscaler_name(md), common_labels(md)),
        "spec": spec,
    }
