"""Integration: the conversion stage against the real API server, with the test playing the kubelet for the
converter pod (kwok runs no containers): it runs the converter with the pod's own arguments and writes the pod's
status and termination message, exactly as a kubelet would.
"""

from __future__ import annotations

import json
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from convert_models import CNN, CNN_SIGNATURE, NaNModel, save_torchscript
from helpers import model_deployment, ready_condition, wait_for
from localcluster import LocalCluster
from modelyard.api.names import LABEL_REVISION
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.convert.main import main as converter_main
from modelyard.kube.client import DEPLOYMENTS, JOBS, MODEL_DEPLOYMENTS, PODS, SERVICES, Kube
from modelyard.reconcile.model_deployment import Outcome, reconcile_model_deployment

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")

CONVERTER_NODE = "converter-node"
CONVERTER_TAINT = {"key": "modelyard.dev/converter", "value": "true", "effect": "NoSchedule"}


def condition(body: dict[str, Any], type_: str) -> dict[str, Any]:
    found = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == type_), None)
    assert found is not None, f"no {type_} condition in {body.get('status')}"
    return found


@pytest.fixture(scope="module")
def converter_node(cluster: LocalCluster) -> str:
    """A node no kwok manages, so that the test alone plays its kubelet. Tainted: only converter pods go there."""
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    capacity = {"cpu": "8", "memory": "32Gi", "pods": "20"}
    node = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": CONVERTER_NODE, "labels": {"modelyard.dev/role": "converter"}},
        "spec": {"taints": [CONVERTER_TAINT]},
        "status": {"capacity": capacity, "allocatable": capacity, "conditions": [
            {"type": "Ready", "status": "True", "reason": "TestKubelet", "lastHeartbeatTime": now,
             "lastTransitionTime": now}]},
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(node))
    return CONVERTER_NODE


@pytest.fixture
def store(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Path:
    """PVC `model-store` (bound to a PV) and the directory that plays its contents."""
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"store-{namespace}"},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"], "storageClassName": "",
                   "hostPath": {"path": str(tmp_path)},
                   "claimRef": {"namespace": namespace, "name": "model-store"}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
           "metadata": {"name": "model-store", "namespace": namespace},
           "spec": {"accessModes": ["ReadWriteMany"], "storageClassName": "", "volumeName": f"store-{namespace}",
                    "resources": {"requests": {"storage": "1Gi"}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}))
    wait_for("the PVC to bind", lambda: cluster.kubectl(
        "get", "pvc", "-n", namespace, "model-store", "-o", "jsonpath={.status.phase}").stdout == "Bound")
    (tmp_path / "sources").mkdir()
    save_torchscript(CNN, tmp_path / "sources" / "cnn.pt")
    save_torchscript(NaNModel, tmp_path / "sources" / "nan.pt")
    return tmp_path


def converting(name: str, namespace: str, source: str) -> dict[str, Any]:
    manifest = model_deployment(name, namespace, gpus=0, tolerations=[], maxBatchSize=8)
    manifest["spec"]["model"] = {"uri": f"pvc://model-store/sources/{source}", "format": "torchscript",
                                 "signature": CNN_SIGNATURE}
    manifest["spec"]["conversion"] = {
        "precision": "fp16", "store": "pvc://model-store/converted",
        "nodeSelector": {"modelyard.dev/role": "converter"},
        "tolerations": [{"key": "modelyard.dev/converter", "operator": "Exists", "effect": "NoSchedule"}],
    }
    return manifest


def reconcile(admin: Kube, operator: Kube, namespace: str, name: str) -> Outcome:
    body = admin.get(MODEL_DEPLOYMENTS, namespace, name)
    assert body is not None
    return reconcile_model_deployment(operator, ModelDeployment.model_validate(body), converter_image="converter:test")


def play_kubelet(cluster: LocalCluster, admin: Kube, namespace: str, job_name: str, store: Path) -> int:
    """Run the converter pod of `job_name` as its kubelet would, on the directory behind the PVC."""
    pod = wait_for(f"the pod of {job_name} to be bound to the converter node", lambda: next(
        (p for p in admin.list_by_labels(PODS, namespace, {"batch.kubernetes.io/job-name": job_name})
         if p["spec"].get("nodeName") == CONVERTER_NODE), None))
    container = pod["spec"]["containers"][0]
    term = store.parent / f"{pod['metadata']['name']}.termination-log"
    args = [str(store) + a[len("/mnt/store"):] if a.startswith("/mnt/store") else a for a in container["args"]]
    args = [str(store) if a == "/mnt/source" else str(term) if a == "/dev/termination-log" else a for a in args]
    code = converter_main(args)
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {"status": {
        "phase": "Succeeded" if code == 0 else "Failed",
        "conditions": [{"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now}],
        "containerStatuses": [{
            "name": "converter", "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                     "message": term.read_text(), "startedAt": now, "finishedAt": now}},
        }],
    }}
    cluster.kubectl("patch", "pod", "-n", namespace, pod["metadata"]["name"], "--subresource=status",
                    "--type=merge", "-p", json.dumps(status))
    return code


def test_converted_validated_then_ready_and_a_bad_model_leaves_the_serving_revision(
    cluster: LocalCluster, admin: Kube, operator_kube: Kube, namespace: str, store: Path, converter_node: str
) -> None:
    manifest = converting("conv", namespace, "cnn.pt")
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    # 1. A Job, and nothing to serve yet.
    first = reconcile(admin, operator_kube, namespace, "conv").revision
    job = admin.get(JOBS, namespace, f"conv-{first}-convert")
    assert job is not None and job["spec"]["template"]["spec"]["nodeSelector"] == {"modelyard.dev/role": "converter"}
    assert admin.get(DEPLOYMENTS, namespace, f"conv-{first}") is None
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "conv")
    assert body is not None
    assert (condition(body, "Converted")["status"], condition(body, "Converted")["reason"]) == ("Unknown", "Converting")
    assert ready_condition(body)["reason"] == "Converting"  # type: ignore[index]

    # 2. The converter runs (the test is its kubelet): Converted, Validated, then Triton pods, then Ready.
    assert play_kubelet(cluster, admin, namespace, f"conv-{first}-convert", store) == 0

    def ready() -> Outcome | None:
        outcome = reconcile(admin, operator_kube, namespace, "conv")
        return outcome if outcome.ready else None

    wait_for("the converted revision to be Ready", ready)
    body = admin.get(MODEL_DEPLOYMENTS, namespace, "conv")
    assert body is not None
    converted, validated = condition(body, "Converted"), condition(body, "Validated")
    assert (converted["status"], converted["reason"]) == ("True", "Converted")
    assert "conv/1/model.onnx sha256:" in converted["message"]
    assert (validated["status"], validated["reason"]) == ("True", "Validated")
    assert "32 samples: max abs error" in validated["message"] and "top-1 agreement 1.0000" in validated["message"]
    repository = body["status"]["revisions"]["latest"]["modelRepository"]
    key = repository.rsplit("/", 1)[-1]
    assert repository == f"pvc://model-store/converted/{key}"
    assert (store / "converted" / key / "conv" / "config.pbtxt").is_file()
    deployment = admin.get(DEPLOYMENTS, namespace, f"conv-{first}")
    assert deployment is not None
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert f"--model-repository=/models/converted/{key}" in args

    # 3. A model that outputs NaN: Validated=False with the reason, and the first revision keeps serving.
    manifest["spec"]["model"]["uri"] = "pvc://model-store/sources/nan.pt"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    second = reconcile(admin, operator_kube, namespace, "conv").revision
    assert second != first
    assert play_kubelet(cluster, admin, namespace, f"conv-{second}-convert", store) == 1

    def rejected() -> dict[str, Any] | None:
        reconcile(admin, operator_kube, namespace, "conv")
        b = admin.get(MODEL_DEPLOYMENTS, namespace, "conv") or {}
        return b if condition(b, "Validated")["status"] == "False" else None

    body = wait_for("Validated=False", rejected)
    validated = condition(body, "Validated")
    assert validated["reason"] == "ValidationFailed" and "NaN/Inf" in validated["message"]
    ready_cond = ready_condition(body)
    assert ready_cond is not None and ready_cond["status"] == "False" and ready_cond["reason"] == "ValidationFailed"
    assert f"revision {first} keeps serving" in ready_cond["message"]
    assert body["status"]["revisions"]["stable"]["name"] == first
    assert body["status"]["revisions"]["stable"]["modelRepository"] == repository
    service = admin.get(SERVICES, namespace, "conv")
    assert service is not None and service["spec"]["selector"][LABEL_REVISION] == first
    assert admin.get(DEPLOYMENTS, namespace, f"conv-{first}") is not None
    assert admin.get(DEPLOYMENTS, namespace, f"conv-{second}") is None
    # Nothing changes on a resync while the bad revision stays rejected.
    assert reconcile(admin, operator_kube, namespace, "conv").writes == 0
