"""E2E: the operator process against the local cluster, with kwok GPU and CPU nodes."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from helpers import model_deployment, ready_condition, wait_for
from localcluster import LocalCluster
from modelyard.api.names import LABEL_REVISION
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, PODS, SERVICES, Kube

from .conftest import OperatorProcess

pytestmark = pytest.mark.e2e


def apply(cluster: LocalCluster, manifest: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def wait_ready(cluster: LocalCluster, namespace: str, name: str) -> None:
    proc = cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"mdep/{name}", "--timeout=120s",
                           check=False)
    assert proc.returncode == 0, proc.stderr + cluster.kubectl("get", "-n", namespace, "mdep", name, "-o",
                                                              "yaml").stdout


def pods_of(admin: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return admin.list_by_labels(PODS, namespace, {"modelyard.dev/deployment": name})


def test_gpu_model_lands_on_gpu_nodes_and_becomes_ready(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    apply(cluster, model_deployment("gpu", namespace, replicas=2))
    wait_ready(cluster, namespace, "gpu")
    nodes = {p["spec"]["nodeName"] for p in pods_of(admin, namespace, "gpu")}
    assert nodes and all(n.startswith("gpu-node-") for n in nodes), nodes
    pod = pods_of(admin, namespace, "gpu")[0]
    assert pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    table = cluster.kubectl("get", "mdep", "-n", namespace, "-o", "wide").stdout
    assert "True" in table and "Available" in table and f"http://gpu.{namespace}.svc:8000" in table, table
    operator_process.assert_running()


def test_cpu_model_stays_off_tainted_gpu_nodes(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    apply(cluster, model_deployment("cpu", namespace, gpus=0, tolerations=[]))
    wait_ready(cluster, namespace, "cpu")
    nodes = {p["spec"]["nodeName"] for p in pods_of(admin, namespace, "cpu")}
    assert nodes == {"cpu-node-0"}, nodes


def test_more_gpus_than_any_node_has_is_unschedulable_with_the_scheduler_message(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    apply(cluster, model_deployment("huge", namespace, gpus=8))

    def unschedulable() -> dict[str, Any] | None:
        body = admin.get(MODEL_DEPLOYMENTS, namespace, "huge") or {}
        cond = ready_condition(body)
        return cond if cond and cond["reason"] == "Unschedulable" else None

    cond = wait_for("Ready=False reason Unschedulable", unschedulable)
    assert cond["status"] == "False"
    assert "Insufficient nvidia.com/gpu" in cond["message"], cond["message"]
    assert "nodes are available" in cond["message"], cond["message"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    warnings = [e for e in events if e["involvedObject"]["name"] == "huge" and e["reason"] == "Unschedulable"]
    assert warnings and warnings[0]["type"] == "Warning"


def test_a_revision_that_cannot_run_leaves_the_serving_revision_alone(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    manifest = model_deployment("canary", namespace)
    apply(cluster, manifest)
    wait_ready(cluster, namespace, "canary")
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "canary")
    assert body is not None
    good = body["status"]["revisions"]["stable"]["name"]

    manifest["spec"]["serving"]["gpus"] = 8  # no node has 8 GPUs
    apply(cluster, manifest)

    def stuck() -> dict[str, Any] | None:
        b = admin.get(MODEL_DEPLOYMENTS, namespace, "canary") or {}
        cond = ready_condition(b)
        return b if cond and cond["reason"] == "Unschedulable" else None

    body = wait_for("the new revision to be reported Unschedulable", stuck)
    latest = body["status"]["revisions"]["latest"]["name"]
    assert latest != good
    assert body["status"]["revisions"]["stable"]["name"] == good
    assert f"revision {good} keeps serving" in ready_condition(body)["message"]  # type: ignore[index]
    service = admin.get(SERVICES, namespace, "canary")
    assert service is not None and service["spec"]["selector"][LABEL_REVISION] == good
    assert admin.get(DEPLOYMENTS, namespace, f"canary-{good}") is not None

    # Fixing the spec rolls out, and only then is the stuck revision pruned.
    manifest["spec"]["serving"]["gpus"] = 2
    apply(cluster, manifest)
    wait_ready(cluster, namespace, "canary")
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "canary")
    assert body is not None
    fixed = body["status"]["revisions"]["stable"]["name"]
    assert fixed not in (good, latest)
    wait_for("old revisions to be pruned", lambda: {
        d["metadata"]["labels"][LABEL_REVISION]
        for d in admin.list_by_labels(DEPLOYMENTS, namespace, {"modelyard.dev/deployment": "canary"})
    } == {fixed})


def test_resync_of_an_unchanged_model_makes_no_request_at_all(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    """Reads come from the watch-fed caches: a resync of an unchanged model neither writes nor reads."""
    apply(cluster, model_deployment("quiet", namespace))
    wait_ready(cluster, namespace, "quiet")
    time.sleep(operator_process.resync_seconds * 2)  # let the last status write and its events settle
    mark = len(cluster.audit_events())
    reconciles = operator_process.metric("modelyard_reconciles_total")
    time.sleep(operator_process.resync_seconds * 4)
    ran = operator_process.metric("modelyard_reconciles_total") - reconciles
    assert ran >= 2, "the operator did not resync during the window: the zero below would prove nothing"
    requests = [f"{e['verb']} {e['requestURI']}" for e in cluster.audit_events()[mark:]
                if e["user"]["username"] == "modelyard-operator"]
    # Other tests' namespaces may still be terminating (their pods going away are real changes): look at ours.
    assert [r for r in requests if f"/namespaces/{namespace}/" in r] == [], requests
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "quiet")
    assert body is not None and not body["metadata"].get("finalizers")
    assert not any(k.startswith("kopf.") for k in body["metadata"].get("annotations", {}))


def test_the_examples_apply_into_any_namespace_and_become_ready(
    cluster: LocalCluster, operator_process: OperatorProcess, namespace: str
) -> None:
    """`kubectl apply -n <ns> -f examples/`: no example pins a namespace, and each one is served (on kwok)."""
    from pathlib import Path

    examples = Path(__file__).resolve().parents[2] / "examples"
    cluster.kubectl("apply", "-n", namespace, "-f", str(examples))
    names = json.loads(cluster.kubectl("get", "mdep", "-n", namespace, "-o", "json").stdout)["items"]
    assert len(names) >= 2, names
    for item in names:
        wait_ready(cluster, namespace, item["metadata"]["name"])
