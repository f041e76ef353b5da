"""Integration: spec.scaling against the real API server, real KEDA (operator and metrics adapter), the real HPA
controller in kube-controller-manager and real Prometheus. Pods are kwok's here (tests/e2e has real Triton).

The metric here is a custom PromQL constant (`vector(3)` with target 1 per replica asks for 3 replicas): it makes
KEDA, the external metrics API and the HPA controller do a real scale-out without load, so that what is tested is
the ownership of the replica count, not the load.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from helpers import model_deployment, operator_writes, ready_condition, wait_for
from localcluster import GATEWAY_NAME, GATEWAY_NAMESPACE, LocalCluster
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Measurement
from modelyard.kube.client import DEPLOYMENTS, HPAS, MODEL_DEPLOYMENTS, SCALED_OBJECTS, Kube
from modelyard.reconcile.model_deployment import Outcome, reconcile_model_deployment
from modelyard.reconcile.scaling import REPLICAS_MANAGER, replicas_owners

pytestmark = pytest.mark.integration


def _scaled(name: str, namespace: str, replicas_wanted: int, engine: str = "keda", **scaling: Any) -> dict[str, Any]:
    manifest = model_deployment(name, namespace)
    manifest["spec"]["serving"].pop("replicas")
    metric = ({"type": "custom", "query": f"vector({replicas_wanted})", "target": 1} if engine == "keda"
              else {"type": "inferenceRate", "target": 100})
    manifest["spec"]["scaling"] = {"engine": engine, "minReplicas": 1, "maxReplicas": 4, "metric": metric,
                                   "pollingInterval": "5s", **scaling}
    return manifest


def _reconcile(cluster: LocalCluster, admin: Kube, operator: Kube, namespace: str, name: str,
               prometheus: bool = True, **kw: Any) -> Outcome:
    body = admin.get(MODEL_DEPLOYMENTS, namespace, name)
    assert body is not None
    return reconcile_model_deployment(operator, ModelDeployment.model_validate(body),
                                      prometheus_url=cluster.prometheus_url if prometheus else None, **kw)


def _deployment(admin: Kube, namespace: str, name: str, revision: str) -> dict[str, Any]:
    found = admin.get(DEPLOYMENTS, namespace, f"{name}-{revision}")
    assert found is not None
    return found


def _apply(cluster: LocalCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "--server-side", "--field-manager=kubectl-user", "-f", "-", input=json.dumps(manifest))


def test_keda_scales_the_serving_revision_and_a_resync_leaves_the_count_alone(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    _apply(cluster, _scaled("keda", namespace, replicas_wanted=3))
    first = wait_for("Ready", lambda: ((o := _reconcile(cluster, admin, operator_kube, namespace, "keda")).ready
                     and o) or None)
    so = admin.get(SCALED_OBJECTS, namespace, "keda")
    assert so is not None and so["metadata"]["ownerReferences"][0]["name"] == "keda"
    assert so["spec"]["scaleTargetRef"]["name"] == f"keda-{first.revision}"
    # The starting count came from modelyard-replicas (the operator's own apply leaves the field out).
    assert REPLICAS_MANAGER + "/Apply" in replicas_owners(_deployment(admin, namespace, "keda", first.revision))

    # KEDA makes its HPA; the HPA controller reads vector(3) through KEDA's external metrics API and scales to 3.
    def scaled_by_hpa() -> dict[str, Any] | None:
        d = _deployment(admin, namespace, "keda", first.revision)
        return d if d["spec"]["replicas"] == 3 else None

    deployment = wait_for("the HPA to scale the serving revision to 3", scaled_by_hpa, timeout=120)
    owners = replicas_owners(deployment)
    assert any(o.endswith("/Update/scale") for o in owners), owners
    assert REPLICAS_MANAGER + "/Apply" not in owners, "the autoscaler's write took the field over"

    # Reconcile until the status has caught up (kwok's pods ready, the HPA's next sync), then: a resync writes
    # nothing and the count stays the HPA's.
    def settled() -> bool | None:
        writes = _reconcile(cluster, admin, operator_kube, namespace, "keda").writes
        body = admin.get(MODEL_DEPLOYMENTS, namespace, "keda") or {}
        scaling = body.get("status", {}).get("scaling", {})
        return (writes == 0 and scaling.get("desiredReplicas") == 3 and body["status"].get("readyReplicas") == 3
                and "ScalingActive" in {c["type"] for c in scaling.get("conditions", [])}) or None

    wait_for("kwok's pods and the status to settle", settled)
    since = len(cluster.audit_events())
    outcome = _reconcile(cluster, admin, operator_kube, namespace, "keda")
    assert outcome.writes == 0
    assert operator_writes(cluster, since) == []
    assert _deployment(admin, namespace, "keda", first.revision)["spec"]["replicas"] == 3

    body = admin.get(MODEL_DEPLOYMENTS, namespace, "keda")
    assert body is not None
    scaling = body["status"]["scaling"]
    assert (scaling["engine"], scaling["autoscaler"], scaling["target"], scaling["range"]) == (
        "keda", "ScaledObject/keda", first.revision, "1-4")
    assert scaling["currentReplicas"] == 3 and scaling["desiredReplicas"] == 3
    conditions = {c["type"]: c for c in scaling["conditions"]}
    assert conditions["AbleToScale"]["status"] == "True"
    assert conditions["ScalingActive"]["status"] == "True", conditions["ScalingActive"]
    assert conditions["KedaReady"]["status"] == "True"
    assert body["status"]["readyReplicas"] == 3
    printed = cluster.kubectl("get", "mdep", "keda", "-n", namespace).stdout
    assert "1-4" in printed.splitlines()[1], printed


def test_turning_scaling_on_keeps_the_count_and_turning_it_off_removes_the_autoscaler(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    fixed = model_deployment("handover", namespace, replicas=2)
    _apply(cluster, fixed)
    first = wait_for("Ready", lambda: ((o := _reconcile(cluster, admin, operator_kube, namespace, "handover")).ready
                     and o) or None)
    assert _deployment(admin, namespace, "handover", first.revision)["spec"]["replicas"] == 2

    # Scaling on (a query that asks for 1): the reconcile that drops replicas from the operator's apply keeps 2.
    _apply(cluster, _scaled("handover", namespace, replicas_wanted=1,
                            behavior={"scaleDown": {"stabilizationWindowSeconds": 0}}))
    outcome = _reconcile(cluster, admin, operator_kube, namespace, "handover")
    assert outcome.revision == first.revision, "scaling is not a new revision"
    deployment = _deployment(admin, namespace, "handover", first.revision)
    assert deployment["spec"]["replicas"] == 2, "the count was handed over, not reset to the default"
    assert "modelyard-operator/Apply" not in replicas_owners(deployment)
    # Then the HPA takes it where the metric says (1), at once: the behavior passed through has no scale-down window.
    wait_for("the HPA to scale in to 1", lambda: _deployment(
        admin, namespace, "handover", first.revision)["spec"]["replicas"] == 1 or None, timeout=120)

    # Scaling off, a fixed count again: the operator owns the count and removes the ScaledObject.
    _apply(cluster, model_deployment("handover", namespace, replicas=2))
    _reconcile(cluster, admin, operator_kube, namespace, "handover")
    wait_for("the ScaledObject to go", lambda: admin.get(SCALED_OBJECTS, namespace, "handover") is None or None)
    _reconcile(cluster, admin, operator_kube, namespace, "handover")
    assert _deployment(admin, namespace, "handover", first.revision)["spec"]["replicas"] == 2
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "handover")
    assert body is not None and "scaling" not in body["status"]


def test_the_hpa_engine_makes_an_hpa_and_mirrors_what_the_hpa_controller_says(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    """No adapter here serves modelyard_triton_inference_rate (KEDA's serves only ScaledObjects' metrics): the HPA
    controller says so on ScalingActive, and status.scaling shows its words."""
    _apply(cluster, _scaled("hpa", namespace, replicas_wanted=0, engine="hpa", minReplicas=2))
    first = wait_for("Ready", lambda: ((o := _reconcile(cluster, admin, operator_kube, namespace, "hpa")).ready
                     and o) or None)
    hpa = admin.get(HPAS, namespace, "hpa")
    assert hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == f"hpa-{first.revision}"
    assert hpa["spec"]["metrics"][0]["external"]["metric"]["name"] == "modelyard_triton_inference_rate"
    assert _deployment(admin, namespace, "hpa", first.revision)["spec"]["replicas"] == 2

    def inactive() -> dict[str, Any] | None:
        _reconcile(cluster, admin, operator_kube, namespace, "hpa")
        body = admin.get(MODEL_DEPLOYMENTS, namespace, "hpa")
        conds = {c["type"]: c for c in (body or {}).get("status", {}).get("scaling", {}).get("conditions", [])}
        active = conds.get("ScalingActive")
        return active if active and active["status"] == "False" else None

    active = wait_for("the HPA controller to report its metric missing", inactive, timeout=120)
    assert active["reason"] == "FailedGetExternalMetric", active
    assert "modelyard_triton_inference_rate" in active["message"]

    # spec.scaling removed: the operator deletes the HPA it made.
    manifest = _scaled("hpa", namespace, replicas_wanted=0, engine="hpa", minReplicas=2)
    del manifest["spec"]["scaling"]
    manifest["spec"]["serving"]["replicas"] = 2
    _apply(cluster, manifest)
    wait_for("the HPA to be deleted", lambda: (_reconcile(cluster, admin, operator_kube, namespace, "hpa")
                                               and admin.get(HPAS, namespace, "hpa") is None) or None, timeout=60)


def test_keda_without_a_prometheus_address_is_a_condition_that_says_which_setting(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    _apply(cluster, _scaled("noprom", namespace, replicas_wanted=1))
    outcome = _reconcile(cluster, admin, operator_kube, namespace, "noprom", prometheus=False)
    assert not outcome.ready
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "noprom")
    cond = ready_condition(body or {})
    assert cond is not None and cond["reason"] == "PrometheusNotConfigured", cond
    assert "rollouts.prometheusUrl" in cond["message"]
    assert admin.get(SCALED_OBJECTS, namespace, "noprom") is None


def test_a_canary_runs_its_share_of_the_replicas_and_the_whole_count_before_it_is_promoted(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    """The serving revision is at 3 (the HPA's count); a canary at 25% starts at its share (1), and grows to the
    model's whole count before it takes all the traffic. The analysis and the clock are given (the rollout's
    timing is tested in tests/e2e); the counts, the HPA and the pods (kwok's) are the cluster's."""
    manifest = _scaled("share", namespace, replicas_wanted=3)
    manifest["spec"]["serving"]["gpus"] = 0  # the fake GPU nodes' few GPUs are shared with the other tests
    manifest["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}]}}
    manifest["spec"]["rollout"] = {"strategy": "canary", "canary": {
        "steps": [{"setWeight": 25}], "analysis": {"interval": "10s", "minRequests": 1}}}
    _apply(cluster, manifest)
    clock = [datetime.now(UTC)]

    def reconcile() -> Outcome:
        return _reconcile(cluster, admin, operator_kube, namespace, "share", clock=lambda: clock[0],
                          analyst=lambda *_: Measurement(at=clock[0].timestamp(), requests=100, checks=[]))

    def stable_at_3() -> Outcome | None:
        o = reconcile()
        return o if o.ready and _deployment(admin, namespace, "share", o.revision)["spec"]["replicas"] == 3 and (
            o.writes == 0) else None

    stable = wait_for("the serving revision at the HPA's 3 replicas, all ready", stable_at_3, timeout=180).revision
    manifest["spec"]["serving"]["maxBatchSize"] = 16  # a new revision
    _apply(cluster, manifest)

    def rollout() -> dict[str, Any]:
        reconcile()
        body = admin.get(MODEL_DEPLOYMENTS, namespace, "share") or {}
        return body.get("status", {}).get("rollout") or {}

    canary = rollout()["canary"]
    assert canary != stable
    # Its share of 25%: ceil(3 x 25%) = 1 replica, beside the stable revision's 3.
    assert _deployment(admin, namespace, "share", canary)["spec"]["replicas"] == 1
    assert wait_for("the canary at 25%", lambda: rollout().get("weight") == 25 or None, timeout=120)
    assert _deployment(admin, namespace, "share", stable)["spec"]["replicas"] == 3
    # The analysis passes: before 100% the canary grows to the model's count. The stable revision's 3 replicas
    # carry 75%, so the model needs 4 (its maximum); the canary keeps 25% while it grows.
    clock[0] += timedelta(seconds=11)
    waiting = rollout()
    assert (waiting["phase"], waiting["weight"]) == ("Progressing", 25), waiting
    assert "waiting for the canary's pods to be Ready before 100% (1/4 Ready)" in waiting["message"], waiting
    assert _deployment(admin, namespace, "share", canary)["spec"]["replicas"] == 4
    try:
        promoted = wait_for("the promotion once 4 canary pods are Ready", lambda: (
            r := rollout()).get("phase") == "Promoted" and r, timeout=120)
    except AssertionError as exc:
        pods = _deployment(admin, namespace, "share", canary)["status"]
        raise AssertionError(f"{exc}\n{rollout()}\n{pods}") from None
    assert promoted["weight"] == 100
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "share") or {}
    assert body["status"]["scaling"]["target"] == canary
    so = admin.get(SCALED_OBJECTS, namespace, "share")
    assert so is not None and so["spec"]["scaleTargetRef"]["name"] == f"share-{canary}"
