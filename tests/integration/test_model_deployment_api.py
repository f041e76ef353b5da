"""Integration: the CRD and the reconcile against a real kube-apiserver (with etcd, controllers and kwok nodes).

The reconcile is called directly here, as the operator's own user with the chart's RBAC; tests/e2e runs the
operator process itself.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest

from helpers import model_deployment, operator_writes, ready_condition, wait_for
from localcluster import LocalCluster
from modelyard.api.names import FIELD_MANAGER, LABEL_REVISION, revision_of
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.client import DEPLOYMENTS, HTTP_ROUTES, MODEL_DEPLOYMENTS, SERVICES, Kube
from modelyard.reconcile.model_deployment import Outcome, reconcile_model_deployment
from modelyard.status.conditions import utc_now

pytestmark = pytest.mark.integration


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def reconcile(admin: Kube, operator: Kube, namespace: str, name: str) -> Outcome:
    body = admin.get(MODEL_DEPLOYMENTS, namespace, name)
    assert body is not None
    return reconcile_model_deployment(operator, ModelDeployment.model_validate(body))


def reconcile_until_ready(admin: Kube, operator: Kube, namespace: str, name: str) -> Outcome:
    def ready() -> Outcome | None:
        outcome = reconcile(admin, operator, namespace, name)
        return outcome if outcome.ready else None

    return wait_for(f"{namespace}/{name} to be Ready", ready)


def test_crd_is_established_with_printer_columns(cluster: LocalCluster) -> None:
    out = cluster.kubectl("get", "crd", "modeldeployments.modelyard.dev", "-o", "json").stdout
    crd = json.loads(out)
    established = {c["type"]: c["status"] for c in crd["status"]["conditions"]}
    assert established["Established"] == "True"
    assert crd["spec"]["names"]["shortNames"] == ["mdep"]
    columns = [c["name"] for c in crd["spec"]["versions"][0]["additionalPrinterColumns"]]
    assert columns[:1] == ["Ready"] and {"Revision", "Replicas", "URL", "Age"} <= set(columns)
    # The OpenAPI document that kubectl explain reads is published shortly after the CRD is Established.
    explained = wait_for(
        "kubectl explain to know the CRD",
        lambda: cluster.kubectl("explain", "modeldeployment.spec.serving.gpuResourceName", check=False).stdout,
    )
    assert "Extended resource that counts GPUs" in explained


def test_defaults_are_applied_by_the_api_server(cluster: LocalCluster, admin: Kube, namespace: str) -> None:
    manifest = model_deployment("defaults", namespace)
    del manifest["spec"]["serving"]
    apply(cluster, manifest)
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "defaults")
    assert body is not None
    serving = body["spec"]["serving"]
    assert serving["gpus"] == 1 and serving["gpuResourceName"] == "nvidia.com/gpu"
    assert serving["dynamicBatching"] == {"enabled": True, "maxQueueDelayMicroseconds": 100}
    assert serving["image"].startswith("nvcr.io/nvidia/tritonserver:")
    assert "rollout" not in body["spec"], "a model without a rollout section is blue/green, with nothing defaulted"

    manifest["metadata"]["name"] = "canary-defaults"
    manifest["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": "public"}]}}
    manifest["spec"]["rollout"] = {"strategy": "canary"}
    apply(cluster, manifest)
    spec = (admin.get(MODEL_DEPLOYMENTS, namespace, "canary-defaults") or {})["spec"]
    assert spec["rollout"]["canary"]["steps"] == [{"setWeight": 10}, {"setWeight": 25}, {"setWeight": 50}]
    assert spec["rollout"]["canary"]["analysis"] == {"interval": "30s", "failureLimit": 2, "minRequests": 20,
                                                     "minSuccessRate": 99}
    assert spec["traffic"]["gateway"]["pathPrefix"] == "/"


def _break(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = manifest
    *parents, leaf = path.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return manifest


INVALID = [
    ("spec.model.uri", "ftp://host/model", "model.uri must start with s3://, pvc://, http:// or https://"),
    ("spec.model.uri", "pvc://Bad_Claim/x", "a pvc:// URI is pvc://<claim-name>/<path>"),
    ("spec.model.credentialsSecretRef", {"name": "creds"}, "model.credentialsSecretRef applies to s3://"),
    ("spec.model.format", "pickle", 'Unsupported value: "pickle"'),
    ("spec.model.uri", "https://models.example.com/m.onnx", "an http(s):// model is fetched by the conversion stage"),
    ("spec.conversion", {"precision": "int8"}, "conversion.store (pvc://<claim>/<path>) is required"),
    ("spec.conversion", {"store": "gs://bucket/x"}, "conversion.store is pvc://<claim-name>/<path> or s3://"),
    ("spec.conversion", {"store": "pvc://s/x", "precision": "int4"}, 'Unsupported value: "int4"'),
    ("spec.conversion", {"store": "pvc://s/x", "storeEndpoint": "http://minio:9000"},
     "conversion.storeEndpoint and conversion.storeCredentialsSecretRef go with an s3:// store"),
    ("spec.serving.maxBatchSize", 0, "serving.dynamicBatching needs serving.maxBatchSize > 0"),
    ("spec.serving.dynamicBatching", {"preferredBatchSizes": [4, 64]},
     "every serving.dynamicBatching.preferredBatchSizes entry must be at most serving.maxBatchSize"),
    ("spec.serving.resources", {"limits": {"nvidia.com/gpu": "1"}}, "ask for GPUs with serving.gpus"),
    ("spec.serving.gpus", 17, "should be less than or equal to 16"),
    ("spec.serving.affinity", {"nodeAffinity": {"requiredDuringScheduling": {"nodeSelectorTerms": []}}},
     'unknown field "spec.serving.affinity.nodeAffinity.requiredDuringScheduling"'),
    ("spec.serving.affinity", {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {"matchLabels": {"app": "x"}}}]}}, "topologyKey: Required value"),
    ("spec.serving.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "zone", "operator": "Near"}]}]}}},
     'Unsupported value: "Near"'),
    ("spec.rollout", {"strategy": "canary"}, "rollout.strategy canary needs traffic.gateway"),
    ("spec.rollout", {"strategy": "rolling"}, 'Unsupported value: "rolling"'),
    ("spec.rollout", {"canary": {"steps": [{"setWeight": 10, "pause": {}}]}},
     "a step is either setWeight or pause, not both"),
    ("spec.rollout", {"canary": {"steps": [{"pause": {"duration": "1m"}}]}},
     "canary.steps needs at least one setWeight step"),
    ("spec.rollout", {"canary": {"steps": [{"setWeight": 101}]}}, "should be less than or equal to 100"),
    ("spec.rollout", {"canary": {"analysis": {"interval": "2s"}}}, "analysis.interval must be at least 5s"),
    ("spec.rollout", {"canary": {"analysis": {"interval": "soon"}}}, "spec.rollout.canary.analysis.interval"),
    ("spec.rollout", {"canary": {"analysis": {"latency": {"quantile": 0.9}}}},
     "a latency check needs maxMs, maxRatioToStable or both"),
    ("spec.rollout", {"canary": {"analysis": {"custom": [{"name": "q", "query": "up"}]}}},
     "a custom check needs min, max or both"),
    ("spec.traffic", {"gateway": {"parentRefs": []}}, "spec.traffic.gateway.parentRefs"),
    ("spec.model.uri", "s3://bucket/my model", "model.uri may not contain spaces or control characters"),
    ("spec.model.uri", "s3://bucket/model\n", "model.uri may not contain spaces or control characters"),
    ("spec.model.uri", "s3://bucket/a\u0007b", "model.uri may not contain spaces or control characters"),
    ("spec.model.uri", "s3://bucket/../other", "model.uri may not contain '..' path segments"),
    ("spec.model.uri", "pvc://claim/models/../../etc", "model.uri may not contain '..' path segments"),
    ("spec.model.uri", "s3:///key-without-bucket", "an s3:// URI is s3://<bucket>/<key>"),
    ("spec.model.uri", "s3://Bucket_Upper/key", "an s3:// URI is s3://<bucket>/<key>"),
    ("spec.model.uri", "s3://ab/key", "an s3:// URI is s3://<bucket>/<key>"),
    ("spec.model.uri", "https://ho%zzst/m.onnx", "an http(s):// model.uri must be a URL"),
    ("spec.conversion", {"store": "pvc://store/a/../b"}, "conversion.store may not contain spaces"),
    ("spec.serving.image", "nvcr.io/nvidia/triton server:24.10", "serving.image must be an image reference"),
    ("spec.serving.image", "nvcr.io/nvidia/tritonserver:24.10\n", "serving.image must be an image reference"),
    ("spec.serving.image", "nvcr.io/NVIDIA/tritonserver:24.10", "serving.image must be an image reference"),
    ("spec.serving.image", "nvcr.io/nvidia/tritonserver:", "serving.image must be an image reference"),
    ("spec.serving.gpuResourceName", "cpu", "serving.gpuResourceName must be an extended resource"),
    ("spec.serving.gpuResourceName", "memory", "serving.gpuResourceName must be an extended resource"),
    ("spec.serving.gpuResourceName", "hugepages-2Mi", "serving.gpuResourceName must be an extended resource"),
    ("spec.serving.gpuResourceName", "kubernetes.io/gpu", "serving.gpuResourceName must be an extended resource"),
    ("spec.serving.resources", {"limits": {"cpu": "lots"}}, "spec.serving.resources.limits.cpu"),
    ("spec.serving.resources", {"requests": {"memory": "4 Gi"}}, "spec.serving.resources.requests.memory"),
    ("spec.conversion", {"store": "pvc://s/x", "resources": {"limits": {"memory": "a lot"}}},
     "spec.conversion.resources.limits.memory"),
    ("metadata.name", "m" * 41, "metadata.name must be at most 40 characters"),
    ("metadata.name", "9lives", "metadata.name must be a DNS label"),
    # spec.scaling (the manifest's serving.replicas is dropped for these, except in the first)
    ("spec.scaling+replicas", {"maxReplicas": 4, "metric": {"type": "queueTime", "target": 20}},
     "serving.replicas and scaling are mutually exclusive"),
    ("spec.scaling", {"minReplicas": 3, "maxReplicas": 2, "metric": {"type": "queueTime", "target": 20}},
     "scaling.minReplicas may not exceed scaling.maxReplicas"),
    ("spec.scaling", {"engine": "hpa", "minReplicas": 0, "maxReplicas": 2,
                      "metric": {"type": "queueTime", "target": 20}}, "scaling.minReplicas 0 needs engine keda"),
    ("spec.scaling", {"minReplicas": 0, "maxReplicas": 2, "metric": {"type": "queueTime", "target": 20}},
     "scaling.minReplicas 0 needs traffic.gateway"),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "custom", "target": 1}},
     "scaling.metric.query is required with type custom and applies only to it"),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "queueTime", "target": 1, "query": "up"}},
     "scaling.metric.query is required with type custom and applies only to it"),
    ("spec.scaling", {"engine": "hpa", "maxReplicas": 2, "metric": {"type": "custom", "target": 1, "query": "up"}},
     "scaling.metric.type custom needs engine keda"),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "queueTime", "target": 0}},
     "should be greater than 0"),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "queueTime", "target": 5, "window": "5s"}},
     "scaling.metric.window must be at least 10s"),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "cpu", "target": 5}}, 'Unsupported value: "cpu"'),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "queueTime", "target": 5, "targetType": "Value"}},
     "scaling.metric.targetType applies only to type custom"),
    ("spec.scaling", {"metric": {"type": "queueTime", "target": 5}}, "spec.scaling.maxReplicas: Required value"),
    ("spec.scaling", {"maxReplicas": 2, "metric": {"type": "queueTime", "target": 5},
                      "behavior": {"scaleUp": {"policies": [{"type": "Pods", "value": 0, "periodSeconds": 15}]}}},
     "should be greater than 0"),
]


VALID = [
    ("spec.model.uri", "s3://my.bucket-1/models/resnet50/"),
    ("spec.model.uri", "s3://bucket/a/..b/c..d"),  # '..' inside a name is not a path segment
    ("spec.serving.image", "localhost:5000/triton:1"),
    ("spec.serving.image", "registry.example.com:8443/team/model-server:v1.2.3"),
    ("spec.serving.image", "Registry.Example.com/team/triton@sha256:" + "0a" * 32),
    ("spec.serving.image", "tritonserver"),
    ("spec.serving.gpuResourceName", "nvidia.com/mig-1g.5gb"),
    ("spec.serving.gpuResourceName", "amd.com/gpu"),
    ("spec.serving.affinity", {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 50, "podAffinityTerm": {"labelSelector": {"matchLabels": {"app": "triton"}},
                                           "topologyKey": "kubernetes.io/hostname"}}]}}),
    ("spec.serving.resources", {"requests": {"cpu": "500m", "memory": "4Gi"}, "limits": {"cpu": 2, "memory": "1e9"}}),
    ("spec.scaling", {"maxReplicas": 4, "metric": {"type": "queueTime", "target": 20}}),
    ("spec.scaling", {"engine": "hpa", "minReplicas": 2, "maxReplicas": 4,
                      "metric": {"type": "inferenceRate", "target": 150.5},
                      "behavior": {"scaleDown": {
                          "stabilizationWindowSeconds": 60, "selectPolicy": "Max",
                          "policies": [{"type": "Percent", "value": 50, "periodSeconds": 30}]}}}),
    ("spec.scaling", {"maxReplicas": 4, "metric": {"type": "custom", "query": "sum(up)", "target": 3,
                                                   "targetType": "Value"}}),
    ("spec.scaling+traffic", {"minReplicas": 0, "maxReplicas": 4, "metric": {"type": "pendingRequests", "target": 4},
                              "idlePeriod": "2m", "pollingInterval": "5s"}),
]


def _scaling_case(manifest: dict[str, Any], path: str) -> str:
    """spec.scaling rows: drop serving.replicas (they exclude each other) unless the row is about that, and add a
    gateway where the row asks for one."""
    if not path.startswith("spec.scaling"):
        return path
    if not path.endswith("+replicas"):
        manifest["spec"]["serving"].pop("replicas")
    if path.endswith("+traffic"):
        manifest["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": "local", "namespace": "gateway-system"}]}}
    return "spec.scaling"


@pytest.mark.parametrize(("path", "value"), VALID, ids=[f"{p}={v}"[:60] for p, v in VALID])
def test_valid_manifests_pass_the_same_rules(cluster: LocalCluster, namespace: str, path: str, value: Any) -> None:
    manifest = model_deployment("valid", namespace)
    manifest = _break(manifest, _scaling_case(manifest, path), value)
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(("path", "value", "message"), INVALID, ids=[f"{p}={v}"[:60] for p, v, _ in INVALID])
def test_invalid_manifests_are_rejected_at_apply(
    cluster: LocalCluster, namespace: str, path: str, value: Any, message: str
) -> None:
    manifest = model_deployment("invalid", namespace)
    if path == "spec.model.uri" and str(value).startswith("pvc"):
        manifest["spec"]["model"]["uri"] = value
    elif path == "spec.model.credentialsSecretRef":
        manifest["spec"]["model"]["uri"] = "pvc://claim/model"
        manifest["spec"]["model"]["credentialsSecretRef"] = value
    else:
        _break(manifest, _scaling_case(manifest, path), value)
    proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0, f"the API server accepted an invalid manifest ({path}={value!r})"
    assert message in proc.stderr, proc.stderr


def test_children_have_owner_references_and_the_field_manager(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    apply(cluster, model_deployment("owned", namespace))
    outcome = reconcile_until_ready(admin, operator_kube, namespace, "owned")
    md = admin.get(MODEL_DEPLOYMENTS, namespace, "owned")
    assert md is not None
    deployment = admin.get(DEPLOYMENTS, namespace, f"owned-{outcome.revision}")
    service = admin.get(SERVICES, namespace, "owned")
    for child in (deployment, service):
        assert child is not None
        (ref,) = child["metadata"]["ownerReferences"]
        assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
            "ModelDeployment", "owned", md["metadata"]["uid"], True
        )
        managers = {(m["manager"], m["operation"]) for m in child["metadata"]["managedFields"]}
        assert (FIELD_MANAGER, "Apply") in managers
    # The Deployment belongs to one revision; the Service outlives revisions and selects the serving one.
    assert deployment is not None and deployment["metadata"]["labels"][LABEL_REVISION] == outcome.revision
    assert service is not None and service["spec"]["selector"][LABEL_REVISION] == outcome.revision


def test_ready_condition_status_and_events(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    apply(cluster, model_deployment("status", namespace, replicas=2))
    outcome = reconcile_until_ready(admin, operator_kube, namespace, "status")
    md = admin.get(MODEL_DEPLOYMENTS, namespace, "status")
    assert md is not None
    cond = ready_condition(md)
    assert cond is not None and cond["status"] == "True" and cond["reason"] == "Available"
    assert cond["observedGeneration"] == md["metadata"]["generation"] == md["status"]["observedGeneration"]
    assert md["status"]["revisions"]["stable"] == {
        "name": outcome.revision, "replicas": 2, "readyReplicas": 2, "trafficPercent": 100,
    }
    assert md["status"]["url"] == f"http://status.{namespace}.svc:8000"
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = [e["reason"] for e in events if e["involvedObject"]["name"] == "status"]
    assert "Available" in reasons, reasons
    # kubectl wait works on the condition
    cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", "mdep/status", "--timeout=5s")


def test_unchanged_resync_makes_zero_writes(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    apply(cluster, model_deployment("idle", namespace))
    reconcile_until_ready(admin, operator_kube, namespace, "idle")
    mark = len(cluster.audit_events())
    for _ in range(3):
        outcome = reconcile(admin, operator_kube, namespace, "idle")
        assert outcome.writes == 0, operator_writes(cluster, mark)
    assert operator_writes(cluster, mark) == []
    reads = [e for e in cluster.audit_events()[mark:] if e["user"]["username"] == "modelyard-operator"]
    assert reads, "the audit log shows no request from the operator at all: the check above proves nothing"


def test_drift_in_an_owned_field_is_corrected(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    apply(cluster, model_deployment("drift", namespace))
    outcome = reconcile_until_ready(admin, operator_kube, namespace, "drift")
    name = f"drift-{outcome.revision}"
    cluster.kubectl("scale", "-n", namespace, f"deployment/{name}", "--replicas=3")
    assert reconcile(admin, operator_kube, namespace, "drift").writes >= 1
    deployment = admin.get(DEPLOYMENTS, namespace, name)
    assert deployment is not None and deployment["spec"]["replicas"] == 1


def test_spec_update_rolls_out_a_new_revision_and_prunes_the_old(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    manifest = model_deployment("roll", namespace)
    apply(cluster, manifest)
    first = reconcile_until_ready(admin, operator_kube, namespace, "roll").revision

    # Scaling is not a new revision.
    manifest["spec"]["serving"]["replicas"] = 2
    apply(cluster, manifest)
    assert reconcile_until_ready(admin, operator_kube, namespace, "roll").revision == first

    manifest["spec"]["serving"]["image"] = "nvcr.io/nvidia/tritonserver:24.12-py3"
    apply(cluster, manifest)
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "roll")
    assert body is not None
    second = revision_of(ModelDeployment.model_validate(body).spec)
    assert second != first
    # First pass: the new revision's Deployment exists, the old one still serves.
    outcome = reconcile(admin, operator_kube, namespace, "roll")
    assert outcome.revision == second
    if not outcome.ready:
        assert outcome.serving == first
        assert admin.get(DEPLOYMENTS, namespace, f"roll-{first}") is not None
    switched = reconcile_until_ready(admin, operator_kube, namespace, "roll")
    service = admin.get(SERVICES, namespace, "roll")
    assert service is not None and service["spec"]["selector"][LABEL_REVISION] == second
    after = admin.get(MODEL_DEPLOYMENTS, namespace, "roll")
    assert after is not None and after["status"]["revisions"]["stable"]["name"] == second
    # The replaced revision drains (no longer selected, still running) for the drain period, then goes; the
    # operator asks to be woken when the drain ends.
    assert after["status"]["revisions"]["retired"]["name"] == first
    assert admin.get(DEPLOYMENTS, namespace, f"roll-{first}") is not None
    assert switched.requeue_after is not None and 0 < switched.requeue_after <= 30
    drained = ModelDeployment.model_validate(after)
    reconcile_model_deployment(operator_kube, drained, clock=lambda: utc_now() + timedelta(seconds=31))
    assert admin.get(DEPLOYMENTS, namespace, f"roll-{first}") is None
    gone = admin.get(MODEL_DEPLOYMENTS, namespace, "roll")
    assert gone is not None and "retired" not in gone["status"]["revisions"]


def test_operator_never_writes_the_spec(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    manifest = model_deployment("gitops", namespace)
    apply(cluster, manifest)
    before = admin.get(MODEL_DEPLOYMENTS, namespace, "gitops")
    reconcile_until_ready(admin, operator_kube, namespace, "gitops")
    after = admin.get(MODEL_DEPLOYMENTS, namespace, "gitops")
    assert before is not None and after is not None
    assert after["spec"] == before["spec"]
    assert after["metadata"]["generation"] == before["metadata"]["generation"]
    assert after["metadata"].get("annotations", {}) == before["metadata"].get("annotations", {})
    assert not after["metadata"].get("finalizers")
    managers = {m["manager"]: m.get("subresource", "") for m in after["metadata"]["managedFields"]}
    assert managers[FIELD_MANAGER] == "status"


def test_deleting_the_model_deployment_removes_its_children(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    apply(cluster, model_deployment("gone", namespace))
    outcome = reconcile_until_ready(admin, operator_kube, namespace, "gone")
    cluster.kubectl("delete", "-n", namespace, "mdep/gone", "--wait=true", "--timeout=60s")
    wait_for("the garbage collector to remove the children",
             lambda: admin.get(DEPLOYMENTS, namespace, f"gone-{outcome.revision}") is None
             and admin.get(SERVICES, namespace, "gone") is None)


def test_a_terminating_namespace_is_not_reported_as_a_rejected_apply(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    apply(cluster, model_deployment("doomed", namespace))
    outcome = reconcile_until_ready(admin, operator_kube, namespace, "doomed")
    # A finalizer holds the ModelDeployment (and so the namespace) in Terminating while the children go.
    cluster.kubectl("patch", "-n", namespace, "mdep/doomed", "--type=merge", "-p",
                    '{"metadata":{"finalizers":["modelyard.dev/test-hold"]}}')
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_for("the namespace controller to delete the Deployment",
             lambda: admin.get(DEPLOYMENTS, namespace, f"doomed-{outcome.revision}") is None)
    try:
        result = reconcile(admin, operator_kube, namespace, "doomed")
        assert result.writes == 0
        body = admin.get(MODEL_DEPLOYMENTS, namespace, "doomed")
        assert body is not None
        cond = ready_condition(body)
        assert cond is not None and cond["reason"] != "ApplyRejected", cond
    finally:
        cluster.kubectl("patch", "-n", namespace, "mdep/doomed", "--type=merge", "-p",
                        '{"metadata":{"finalizers":null}}')


def test_traffic_through_a_gateway_blue_green_and_its_removal(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    """Blue/green with spec.traffic: the route sends everything to the serving revision through its own Service,
    follows the switch, makes no write on an unchanged resync, and goes with spec.traffic."""
    manifest = model_deployment("routed", namespace)
    manifest["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": "public", "namespace": "gateway-system"}],
                                               "hostnames": ["routed.example.com"], "pathPrefix": "/v2"}}
    apply(cluster, manifest)
    first = reconcile_until_ready(admin, operator_kube, namespace, "routed")

    def backends() -> dict[str, int]:
        route = admin.get(HTTP_ROUTES, namespace, "routed") or {}
        return {r["name"]: r["weight"] for r in route["spec"]["rules"][0]["backendRefs"]}

    def revision_services() -> list[str]:
        return sorted(s["metadata"]["name"] for s in admin.list_by_labels(SERVICES, namespace, {
            "modelyard.dev/deployment": "routed"}) if LABEL_REVISION in s["metadata"]["labels"])

    route = admin.get(HTTP_ROUTES, namespace, "routed") or {}
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway",
                                            "name": "public", "namespace": "gateway-system"}]
    assert route["spec"]["hostnames"] == ["routed.example.com"]
    assert route["spec"]["rules"][0]["matches"] == [{"path": {"type": "PathPrefix", "value": "/v2"}}]
    assert backends() == {f"routed-{first.revision}": 100}
    assert revision_services() == [f"routed-{first.revision}"]
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "routed") or {}
    assert body["status"]["httpRoute"] == "routed"
    assert "Progressing" not in {c["type"] for c in body["status"]["conditions"]}, "no canary: no rollout condition"

    mark = len(cluster.audit_events())
    assert reconcile(admin, operator_kube, namespace, "routed").writes == 0, operator_writes(cluster, mark)

    manifest["spec"]["serving"]["maxBatchSize"] = 16  # a new revision; changing traffic alone would not be one
    apply(cluster, manifest)
    second = reconcile_until_ready(admin, operator_kube, namespace, "routed")
    assert second.revision != first.revision
    # The replaced revision stays behind the route at weight 0 while it drains, then goes with its Service.
    assert backends() == {f"routed-{second.revision}": 100, f"routed-{first.revision}": 0}
    assert revision_services() == sorted([f"routed-{first.revision}", f"routed-{second.revision}"])
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "routed") or {}
    reconcile_model_deployment(operator_kube, ModelDeployment.model_validate(body),
                               clock=lambda: utc_now() + timedelta(seconds=31))
    assert backends() == {f"routed-{second.revision}": 100}
    assert revision_services() == [f"routed-{second.revision}"]

    del manifest["spec"]["traffic"]
    apply(cluster, manifest)
    assert reconcile(admin, operator_kube, namespace, "routed").revision == second.revision
    assert admin.get(HTTP_ROUTES, namespace, "routed") is None
    assert revision_services() == []
    assert "httpRoute" not in (admin.get(MODEL_DEPLOYMENTS, namespace, "routed") or {})["status"]
    mark = len(cluster.audit_events())
    assert reconcile(admin, operator_kube, namespace, "routed").writes == 0, operator_writes(cluster, mark)


def test_a_child_the_api_server_refuses_is_apply_rejected_with_its_words(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    """A nodeSelector key the CRD lets through (any string) but a Deployment may not carry: the API server answers
    422, which no retry heals: Ready=False, ApplyRejected, quoting the server; no child is left half made."""
    apply(cluster, model_deployment("refused", namespace, nodeSelector={"bad key!": "x"}))
    outcome = reconcile(admin, operator_kube, namespace, "refused")
    assert not outcome.ready
    cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "refused") or {})
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "ApplyRejected"), cond
    assert "422" in cond["message"] and "bad key!" in cond["message"], cond
    assert admin.list_by_labels(DEPLOYMENTS, namespace, {"modelyard.dev/deployment": "refused"}) == []


def test_a_missing_or_incomplete_credentials_secret_is_reported_with_its_name_and_keys_never_its_values(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str
) -> None:
    manifest = model_deployment("creds", namespace)
    manifest["spec"]["model"]["credentialsSecretRef"] = {"name": "store-creds"}
    apply(cluster, manifest)
    assert not reconcile(admin, operator_kube, namespace, "creds").ready
    cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "creds") or {})
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "SecretNotFound"), cond
    assert f"Secret {namespace}/store-creds" in cond["message"] and "model.credentialsSecretRef" in cond["message"]
    assert admin.list_by_labels(DEPLOYMENTS, namespace, {"modelyard.dev/deployment": "creds"}) == []

    secret = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "store-creds", "namespace": namespace},
              "stringData": {"AWS_ACCESS_KEY_ID": "AKIA-not-a-secret-value"}}
    apply(cluster, secret)
    reconcile(admin, operator_kube, namespace, "creds")
    cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "creds") or {})
    assert cond is not None and cond["reason"] == "SecretIncomplete", cond
    assert "AWS_SECRET_ACCESS_KEY" in cond["message"] and "AKIA-not-a-secret-value" not in cond["message"], cond
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert "SecretNotFound" in events and "SecretIncomplete" in events and "AKIA-not-a-secret-value" not in events

    secret["stringData"]["AWS_SECRET_ACCESS_KEY"] = "also-not-a-secret"
    apply(cluster, secret)
    reconcile_until_ready(admin, operator_kube, namespace, "creds")


def _llm(namespace: str, **changes: Any) -> dict[str, Any]:
    """A valid LLM manifest (a huggingface checkpoint served by the vllm runtime) with `changes` at dotted paths;
    a None value removes the field."""
    manifest = model_deployment("llm", namespace)
    manifest["spec"]["model"] = {"uri": "pvc://models/llama", "format": "huggingface"}
    manifest["spec"]["conversion"] = {"store": "pvc://models/converted"}
    manifest["spec"]["serving"].update({"runtime": "vllm", "gpus": 4, "vllm": {"tensorParallelSize": 4}})
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        node = manifest
        for key in parents:
            node = node.setdefault(key, {})
        if value is None:
            node.pop(leaf, None)
        else:
            node[leaf] = value
    return manifest


LLM_INVALID = [
    ({"spec__serving__runtime": None}, "model.format huggingface is served by Triton's vLLM backend"),
    ({"spec__model__format": "onnx", "spec__serving__vllm": None},
     "serving.runtime vllm serves a Hugging Face checkpoint"),
    ({"spec__serving__runtime": "tensor"}, "serving.vllm holds the vLLM engine's settings"),
    ({"spec__serving__vllm": {"tensorParallelSize": 3}}, "serving.vllm.tensorParallelSize must divide serving.gpus"),
    ({"spec__serving__gpus": 0, "spec__serving__vllm": {"tensorParallelSize": 2}},
     "serving.vllm.tensorParallelSize must divide serving.gpus"),
    ({"spec__conversion": None}, "a huggingface checkpoint is a directory on pvc:// or under an s3:// prefix"),
    ({"spec__model__uri": "https://hub.example.com/llama"}, "a huggingface checkpoint is a directory on pvc://"),
    ({"spec__model__signature": {"inputs": [{"name": "x", "dataType": "FP32", "shape": [1]}],
                                 "outputs": [{"name": "y", "dataType": "FP32", "shape": [1]}]}},
     "model.signature is for tensor models"),
    ({"spec__conversion": {"store": "pvc://models/converted", "precision": "int8"}},
     "conversion.target, precision, pruning, modelClass, kerasCustomObjects and samples.uri are tensor-model"),
    ({"spec__conversion": {"store": "pvc://models/converted", "samples": {"uri": "/mnt/source/s.npz"}}},
     "conversion.target, precision, pruning, modelClass, kerasCustomObjects and samples.uri are tensor-model"),
    ({"spec__serving__vllm": {"dtype": "float8"}}, 'Unsupported value: "float8"'),
    ({"spec__serving__vllm": {"quantization": "bitsandbytes"}}, 'Unsupported value: "bitsandbytes"'),
    ({"spec__serving__vllm": {"gpuMemoryUtilization": 1.5}}, "should be less than or equal to 1"),
    ({"spec__serving__vllm": {"maxModelLength": 8}}, "should be greater than or equal to 16"),
]


@pytest.mark.parametrize(("changes", "message"), LLM_INVALID, ids=[str(c)[:60] for c, _ in LLM_INVALID])
def test_llm_manifests_that_cannot_work_are_rejected_at_apply(
        cluster: LocalCluster, namespace: str, changes: dict[str, Any], message: str) -> None:
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(_llm(namespace, **changes)),
                           check=False)
    assert proc.returncode != 0, f"the API server accepted an LLM manifest with {changes}"
    assert message in proc.stderr, proc.stderr


def test_prompts_on_a_tensor_model_are_rejected_and_an_llm_manifest_passes(
        cluster: LocalCluster, namespace: str) -> None:
    manifest = model_deployment("tensor", namespace)
    manifest["spec"]["conversion"] = {"store": "pvc://models/converted", "samples": {"prompts": ["hello"]}}
    proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(manifest), check=False)
    assert proc.returncode != 0 and "conversion.samples.prompts are for a huggingface checkpoint" in proc.stderr
    for changes in ({}, {"spec__serving__vllm": {"tensorParallelSize": 2}}, {"spec__serving__vllm": None},
                    {"spec__serving__gpus": 0, "spec__serving__vllm": {"dtype": "float32"}},
                    {"spec__conversion": {"store": "pvc://models/c", "samples": {"prompts": ["Hi", "Bye"]},
                                          "tolerance": {"maxPerplexityRatio": 1.1, "minTop1Agreement": 0.95}}},
                    {"spec__conversion": {"store": "s3://bucket/converted", "storeEndpoint": "http://minio:9000",
                                          "storeCredentialsSecretRef": {"name": "store"}}},
                    {"spec__model__uri": "s3://checkpoints/llama", "spec__conversion": {"store": "s3://bucket/c"}}):
        proc = cluster.kubectl("apply", "--dry-run=server", "-f", "-", input=json.dumps(_llm(namespace, **changes)),
                               check=False)
        assert proc.returncode == 0, (changes, proc.stderr)
