"""spec.scaling's pure parts: the PromQL of each built-in metric, the numbers KEDA and the HPA read, the rules of
the replica count's hand-over, and the local checks that mirror the CEL rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.scaling import Scaling, ScalingMetric
from modelyard.reconcile.scaling import autoscaled, clamp, replicas_owners
from modelyard.render.scaling import min_replicas, number, scaling_query
from modelyard.render.triton import render_triton_deployment

ROOT = Path(__file__).resolve().parents[2]

SEL = '{namespace="ml",modeldeployment="resnet",revision="abc"}'

QUERIES = [
    ({"type": "queueTime", "target": 20},
     f"sum(rate(nv_inference_queue_duration_us{SEL}[1m])) / 1000 / "
     f"clamp_min(sum(rate(nv_inference_request_success{SEL}[1m])), 1e-9)", "Value"),
    ({"type": "pendingRequests", "target": 4}, f"sum(nv_inference_pending_request_count{SEL})", "AverageValue"),
    ({"type": "inferenceRate", "target": 100, "window": "30s"}, f"sum(rate(nv_inference_count{SEL}[30s]))",
     "AverageValue"),
    ({"type": "gpuUtilization", "target": 80}, f"100 * avg(nv_gpu_utilization{SEL})", "Value"),
    ({"type": "requestsWaiting", "target": 2}, f"sum(vllm:num_requests_waiting{SEL})", "AverageValue"),
    ({"type": "kvCacheUsage", "target": 70}, f"100 * avg(vllm:kv_cache_usage_perc{SEL})", "Value"),
    ({"type": "timeToFirstToken", "target": 500, "window": "30s"},
     f"1000 * sum(rate(vllm:time_to_first_token_seconds_sum{SEL}[30s])) / "
     f"clamp_min(sum(rate(vllm:time_to_first_token_seconds_count{SEL}[30s])), 1e-9)", "Value"),
    ({"type": "custom", "target": 1, "query": 'sum(x{ns="$namespace",md="$modeldeployment",rev="$revision"})'},
     'sum(x{ns="ml",md="resnet",rev="abc"})', "AverageValue"),
    ({"type": "custom", "target": 1, "query": "max(y)", "targetType": "Value"}, "max(y)", "Value"),
]


@pytest.mark.parametrize(("metric", "query", "kind"), QUERIES, ids=[str(m["type"]) for m, _, _ in QUERIES])
def test_each_metric_is_one_promql_for_the_serving_revision(metric: dict[str, Any], query: str, kind: str) -> None:
    q = scaling_query(ScalingMetric.model_validate(metric), "ml", "resnet", "abc")
    assert (q.query, q.metric_type) == (query, kind)


@pytest.mark.parametrize(("value", "text"), [(20, "20"), (0.5, "0.5"), (1_000_000, "1000000"), (0.000001, "0.000001"),
                                             (12.25, "12.25")])
def test_targets_are_plain_decimals_that_keda_and_a_quantity_both_read(value: float, text: str) -> None:
    assert number(value) == text


def _scaling(**kw: Any) -> Scaling:
    return Scaling.model_validate({"maxReplicas": 6, "metric": {"type": "queueTime", "target": 20}, **kw})


def test_nothing_scales_to_zero_while_a_revision_rolls_out() -> None:
    zero = _scaling(minReplicas=0)
    assert (min_replicas(zero, rolling_out=False), min_replicas(zero, rolling_out=True)) == (0, 1)
    assert min_replicas(_scaling(minReplicas=3), rolling_out=True) == 3


@pytest.mark.parametrize(("current", "start"), [(0, 2), (1, 2), (4, 4), (9, 6)])
def test_a_revision_starts_inside_the_range_and_never_at_zero(current: int, start: int) -> None:
    assert clamp(_scaling(minReplicas=2), current) == start
    assert clamp(_scaling(minReplicas=0), 0) == 1


def _entry(manager: str, operation: str, replicas: bool, subresource: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"f:template": {}}
    if replicas:
        spec["f:replicas"] = {}
    out = {"manager": manager, "operation": operation, "fieldsType": "FieldsV1", "fieldsV1": {"f:spec": spec}}
    if subresource:
        out["subresource"] = subresource
    return out


OWNERSHIP = [
    ("created by the operator's apply without a count: nobody owns the default", [
        _entry("modelyard-operator", "Apply", False)], set()),
    ("a fixed count, the operator's apply owns it", [
        _entry("modelyard-operator", "Apply", True)], {"modelyard-operator/Apply"}),
    ("handed over to modelyard-replicas", [
        _entry("modelyard-operator", "Apply", False), _entry("modelyard-replicas", "Apply", True)],
     {"modelyard-replicas/Apply"}),
    ("scaled by the HPA through the scale subresource", [
        _entry("modelyard-operator", "Apply", False), _entry("kube-controller-manager", "Update", True, "scale")],
     {"kube-controller-manager/Update/scale"}),
]


@pytest.mark.parametrize(("case", "entries", "owners"), OWNERSHIP, ids=[c[0][:40] for c in OWNERSHIP])
def test_who_owns_the_replica_count_is_read_from_managed_fields(
    case: str, entries: list[dict[str, Any]], owners: set[str]
) -> None:
    assert replicas_owners({"metadata": {"managedFields": entries}, "spec": {"replicas": 2}}) == owners


def test_the_operators_apply_marks_a_deployment_whose_count_is_the_autoscalers() -> None:
    """The mark, not field ownership, says whether the count was handed over: KEDA's write to zero leaves the field
    with no owner at all (seen on the real API server), so ownership cannot tell "handed over" from "never"."""
    doc = yaml.safe_load((ROOT / "examples" / "autoscaling" / "resnet-keda.yaml").read_text())
    doc["metadata"]["uid"] = "u"
    md = ModelDeployment.model_validate(doc)
    deployment = render_triton_deployment(md, "abc")
    assert "replicas" not in deployment["spec"] and autoscaled(deployment)
    doc["spec"].pop("scaling")
    doc["spec"]["scaling"] = None
    fixed = render_triton_deployment(ModelDeployment.model_validate(doc), "abc")
    assert fixed["spec"]["replicas"] == 1 and not autoscaled(fixed)


@pytest.mark.parametrize(("fields", "message"), [
    ({"minReplicas": 7}, "may not exceed"),
    ({"minReplicas": 0, "engine": "hpa"}, "needs engine keda"),
    ({"engine": "hpa", "metric": {"type": "custom", "target": 1, "query": "up"}}, "custom needs engine keda"),
    ({"metric": {"type": "custom", "target": 1}}, "query is required with type custom"),
])
def test_a_local_file_breaks_the_same_rules_as_at_apply(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        _scaling(**fields)
