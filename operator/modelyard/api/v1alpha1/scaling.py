"""spec.scaling and status.scaling: autoscaling on Triton's own metrics, through KEDA or an HPA.

The operator renders the autoscaler (modelyard.render.scaling) and owns it; the autoscaler owns the serving
Deployment's replica count. The PromQL behind each built-in metric is in modelyard.measure.promql, and
docs/scaling.md says what each one measures.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from modelyard.api.conditions import Condition
from modelyard.api.v1alpha1.common import Observed, Spec, cel
from modelyard.api.v1alpha1.rollout import Duration

MetricType = Literal["queueTime", "pendingRequests", "inferenceRate", "gpuUtilization", "requestsWaiting",
                     "kvCacheUsage", "timeToFirstToken", "custom"]
LLM_METRICS = ("requestsWaiting", "kvCacheUsage", "timeToFirstToken")
"""Read from the vLLM backend's metrics: for serving.runtime vllm only."""


class ScalingMetric(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("(self.type == 'custom') == has(self.query)",
            "scaling.metric.query is required with type custom and applies only to it"),
        cel("self.type == 'custom' || !has(self.targetType)",
            "scaling.metric.targetType applies only to type custom: the built-in metrics know theirs"),
        cel("duration(self.window) >= duration('10s')",
            "scaling.metric.window must be at least 10s: a rate needs two scrapes inside it"),
    ]})

    type: MetricType = Field(
        description="queueTime: average time a request waits in Triton's queue, in milliseconds, over the serving "
        "revision's pods. pendingRequests: requests waiting or executing, per replica. inferenceRate: inferences "
        "per second, per replica. gpuUtilization: percent, averaged over the revision's GPUs. For serving.runtime "
        "vllm: requestsWaiting: requests queued in the engine (beyond its concurrent sequences), per replica; "
        "kvCacheUsage: percent of the KV cache in use, averaged over the replicas; timeToFirstToken: average "
        "milliseconds from arrival to the first generated token. custom: your PromQL.")
    target: float = Field(
        gt=0, le=1_000_000,
        description="The value the autoscaler holds the metric at: milliseconds (queueTime, timeToFirstToken), "
        "requests per replica (pendingRequests, requestsWaiting), inferences per second per replica (inferenceRate), "
        "percent (gpuUtilization, kvCacheUsage), or the query's unit (custom).")
    window: Duration = Field(default="1m", description="The rate window of the built-in metrics' PromQL.")
    query: str | None = Field(
        default=None, min_length=1, max_length=4096,
        description="type custom: PromQL returning one number. $namespace, $modeldeployment and $revision stand for "
        "the serving revision.")
    target_type: Literal["Value", "AverageValue"] | None = Field(
        default=None,
        description="type custom: Value (the query's value is compared with target) or AverageValue (the value "
        "divided by the replicas is). Default AverageValue.")

    @model_validator(mode="after")
    def _custom(self) -> ScalingMetric:
        if (self.type == "custom") != (self.query is not None):
            raise ValueError("scaling.metric.query is required with type custom and applies only to it")
        return self


class ScalingPolicy(Spec):
    type: Literal["Pods", "Percent"] = Field(description="Pods: a number of pods. Percent: of the current replicas.")
    value: int = Field(gt=0, le=10_000, description="How many pods, or what percent, per period.")
    period_seconds: int = Field(gt=0, le=1800, description="The window the value applies to.")


class ScalingRules(Spec):
    stabilization_window_seconds: int | None = Field(
        default=None, ge=0, le=3600,
        description="Look back this long and use the most conservative recommendation (HPA default: 0 up, 300 "
        "down).")
    select_policy: Literal["Max", "Min", "Disabled"] | None = Field(
        default=None, description="Which policy wins when several apply; Disabled stops scaling this way.")
    policies: list[ScalingPolicy] | None = Field(default=None, max_length=10,
                                                 description="How fast replicas may change.")


class ScalingBehavior(Spec):
    scale_up: ScalingRules | None = Field(default=None, description="Rules for adding replicas.")
    scale_down: ScalingRules | None = Field(default=None, description="Rules for removing replicas.")


class Scaling(Spec):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        cel("self.minReplicas <= self.maxReplicas", "scaling.minReplicas may not exceed scaling.maxReplicas"),
        cel("self.minReplicas > 0 || self.engine == 'keda'",
            "scaling.minReplicas 0 needs engine keda: a HorizontalPodAutoscaler cannot scale to zero"),
        cel("self.engine == 'keda' || self.metric.type != 'custom'",
            "scaling.metric.type custom needs engine keda: an HPA reads the metrics its adapter serves and cannot "
            "carry a PromQL query"),
    ]})

    engine: Literal["keda", "hpa"] = Field(
        default="keda",
        description="keda: a KEDA ScaledObject with a Prometheus trigger (scales to zero). hpa: an autoscaling/v2 "
        "HorizontalPodAutoscaler on an External metric, for clusters with their own metrics adapter.")
    min_replicas: int = Field(
        default=1, ge=0, le=1000,
        description="Fewest replicas. 0 scales to zero when idle (engine keda, with traffic.gateway).")
    max_replicas: int = Field(ge=1, le=1000, description="Most replicas.")
    metric: ScalingMetric = Field(description="What the autoscaler holds at its target.")
    behavior: ScalingBehavior | None = Field(
        default=None, description="Scale-up and scale-down rules, passed to the HorizontalPodAutoscaler as they are.")
    idle_period: Duration = Field(
        default="5m", description="With minReplicas 0: how long without requests before scaling to zero (KEDA's "
        "cooldownPeriod).")
    polling_interval: Duration = Field(
        default="30s", description="engine keda: how often KEDA checks whether a model at zero has requests "
        "(KEDA's pollingInterval).")

    @model_validator(mode="after")
    def _bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError("scaling.minReplicas may not exceed scaling.maxReplicas")
        if self.min_replicas == 0 and self.engine != "keda":
            raise ValueError("scaling.minReplicas 0 needs engine keda")
        if self.metric.type == "custom" and self.engine != "keda":
            raise ValueError("scaling.metric.type custom needs engine keda")
        return self


# --- status ------------------------------------------------------------------------------------------------------


class ScalingStatus(Observed):
    engine: str = Field(description="keda or hpa.")
    autoscaler: str = Field(description="The autoscaler object: ScaledObject/<name> or HorizontalPodAutoscaler/<name>.")
    target: str | None = Field(default=None, description="The revision whose Deployment it scales.")
    range: str = Field(description="minReplicas-maxReplicas, as `kubectl get` shows it.")
    current_replicas: int | None = Field(default=None, description="Replicas the target revision's Deployment has.")
    desired_replicas: int | None = Field(
        default=None, description="Replicas the autoscaler asked for at its last sync (the HPA's desiredReplicas).")
    current_value: str | None = Field(default=None, description="The metric's last value, as the autoscaler read it.")
    last_scale_time: str | None = Field(default=None, description="When the autoscaler last changed the replicas.")
    scaled_to_zero: bool = Field(default=False, description="The serving revision runs no pod: it is idle.")
    woke_at: float | None = Field(
        default=None, description="When the serving revision left zero (epoch seconds), until its first pod is ready.")
    last_cold_start_seconds: float | None = Field(
        default=None, description="From leaving zero to the first ready pod, the last time it happened.")
    conditions: list[Condition] = Field(
        default_factory=list, description="The autoscaler's own conditions (AbleToScale, ScalingActive, "
        "ScalingLimited; with KEDA also Ready and Active), with their messages.")
