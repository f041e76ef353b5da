"""Shared by the conversion tests: a node whose kubelet the test plays, the store PVC, and the kubelet's part
for a converter pod (kwok runs no containers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from convert_models import CNN, CNN_SIGNATURE, NaNModel, save_torchscript
from helpers import model_deployment, wait_for
from localcluster import LocalCluster
from modelyard.convert.main import main as converter_main
from modelyard.kube.client import PODS, Kube

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
