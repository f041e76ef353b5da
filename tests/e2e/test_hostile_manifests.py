"""E2E: well over a hundred malformed or hostile ModelDeployments against the real API server, with the operator
running. Each one is rejected at `kubectl apply`, or gets a Ready condition from the operator; none is left
silent, the operator logs no traceback, and a spec the operator refused leaves no Deployment behind."""

from __future__ import annotations

import copy
import json
import time
from collections import Counter
from typing import Any

import pytest

from helpers import model_deployment
from localcluster import LocalCluster
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, Kube

from .conftest import OperatorProcess

pytestmark = [pytest.mark.e2e]

LONG = "x" * 3000
HOSTILE: list[tuple[str, Any]] = [
    # model.uri
    *[("spec.model.uri", v) for v in [
        "", " ", "s3://", "s3://b", "s3://bucket name/key", "s3://bucket/key with space", "s3://bucket/\tkey",
        "s3://bucket/key\n", "s3://bucket/\u0000", "s3://bucket/../../etc/passwd", "s3://bucket/a/./../b",
        "s3:///no-bucket", "s3://UPPER/key", "s3://-bucket/key", "s3://bucket-/key", "s3://b" * 100,
        "pvc://", "pvc://claim/../x", "pvc://Claim/x", "pvc://claim name/x", "pvc://claim/\u202emodel",
        "http://host/model.onnx", "https://", "https://h%zz/x", "ftp://host/x", "file:///etc/passwd",
        "gs://bucket/x", "s3://bucket/" + LONG, "javascript:alert(1)", "s3://bücket/key", "s3://bucket/ключ",
        "pvc://claim/😀", "S3://bucket/key",
    ]],
    # model.format and signature
    ("spec.model.format", "pickle"), ("spec.model.format", "ONNX"), ("spec.model.format", ""),
    ("spec.model.format", 3),
    ("spec.model.signature", {"inputs": [], "outputs": []}),
    ("spec.model.signature", {"inputs": [{"name": "x", "dataType": "FP32", "shape": [-2]}],
                              "outputs": [{"name": "y", "dataType": "FP32", "shape": [1]}]}),
    ("spec.model.signature", {"inputs": [{"name": "x", "dataType": "FLOAT", "shape": [1]}],
                              "outputs": [{"name": "y", "dataType": "FP32", "shape": [1]}]}),
    ("spec.model.signature", {"inputs": [{"name": "x", "dataType": "FP32", "shape": [1]},
                                         {"name": "x", "dataType": "FP32", "shape": [1]}],
                              "outputs": [{"name": "y", "dataType": "FP32", "shape": [1]}]}),
    ("spec.model.signature", {"inputs": [{"name": "", "dataType": "FP32", "shape": [1]}],
                              "outputs": [{"name": "y", "dataType": "FP32", "shape": [1]}]}),
    ("spec.model.signature", {"inputs": [{"name": "x" * 200, "dataType": "FP32", "shape": [1]}],
                              "outputs": [{"name": "y", "dataType": "FP32", "shape": [1]}]}),
    ("spec.model.credentialsSecretRef", {"name": "Not_A_Name"}),
    ("spec.model.credentialsSecretRef", {"name": "absent-secret"}),
    ("spec.model.credentialsSecretRef", {}),
    ("spec.model", None), ("spec.model", "s3://bucket/key"), ("spec.model.extra", "field"),
    # serving.image
    *[("spec.serving.image", v) for v in [
        "", " ", "nvcr.io/nvidia/triton server:1", "nvcr.io/nvidia/tritonserver:1\n", "NVCR.IO/NVIDIA/X:1",
        "nvcr.io/nvidia/Triton:1", "nvcr.io/nvidia/tritonserver:", "nvcr.io/nvidia/tritonserver@sha256:zz",
        "nvcr.io//tritonserver", "tritonserver:" + "t" * 200, "../../bin/sh", "nvcr.io/nvidia/tritonserver:1;rm -rf /",
        "nvcr.io/nvidia/tritonserver:$(whoami)", "ïmage:1", LONG,
    ]],
    # serving numbers and names
    *[("spec.serving.gpus", v) for v in [-1, 17, 1.5, "1", None, 10**12]],
    *[("spec.serving.replicas", v) for v in [0, -3, 1001, "two", 2.5]],
    *[("spec.serving.maxBatchSize", v) for v in [-1, 4097, "8"]],
    *[("spec.serving.instanceCount", v) for v in [0, 65, "1"]],
    *[("spec.serving.gpuResourceName", v) for v in [
        "cpu", "memory", "pods", "ephemeral-storage", "hugepages-1Gi", "kubernetes.io/gpu", "gpu", "nvidia.com/",
        "nvidia.com/gpu x", "", "NVIDIA.com/GPU",
    ]],
    ("spec.serving.dynamicBatching", {"preferredBatchSizes": [0]}),
    ("spec.serving.dynamicBatching", {"preferredBatchSizes": [9]}),
    ("spec.serving.dynamicBatching", {"maxQueueDelayMicroseconds": -1}),
    ("spec.serving.dynamicBatching", {"enabled": "yes"}),
    # resources
    *[("spec.serving.resources", v) for v in [
        {"limits": {"cpu": "lots"}}, {"limits": {"memory": "4 Gi"}}, {"requests": {"cpu": "-1"}},
        {"requests": {"cpu": "1.2.3"}}, {"limits": {"nvidia.com/gpu": 1}}, {"limits": {"cpu": []}},
        {"limits": {"cpu": {"a": 1}}}, {"limits": {"bad key!": "1"}}, {"requests": {"memory": "1e400"}},
        {"limits": "2 cpus"},
    ]],
    # placement
    ("spec.serving.nodeSelector", {"bad key!": "x"}), ("spec.serving.nodeSelector", {"k": "v" * 100}),
    ("spec.serving.nodeSelector", {"k": 1}), ("spec.serving.nodeSelector", ["k=v"]),
    ("spec.serving.tolerations", [{"operator": "Sometimes"}]),
    ("spec.serving.tolerations", [{"key": "k", "effect": "NoWay"}]),
    ("spec.serving.tolerations", {"key": "k"}),
    ("spec.serving.tolerations", [{"key": "bad key!", "operator": "Exists"}]),
    ("spec.serving.affinity", {"nodeAffinity": {"requiredDuringScheduling": {}}}),
    ("spec.serving.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "k", "operator": "Near"}]}]}}}),
    ("spec.serving.affinity", {"podAntiAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": [
        {"labelSelector": {}}]}}),
    ("spec.serving.affinity", {"nodeAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [
        {"weight": 0, "preference": {}}]}}),
    ("spec.serving.affinity", "anywhere"),
    ("spec.serving.affinity", {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
        "nodeSelectorTerms": [{"matchExpressions": [{"key": "bad key!", "operator": "In", "values": ["a"]}]}]}}}),
    # conversion
    *[("spec.conversion", v) for v in [
        {}, {"store": "s3://bucket/x", "precision": "int4"}, {"store": "pvc://s/../x"}, {"store": "gs://b/x"},
        {"store": "pvc://s/x", "target": "coreml"}, {"store": "pvc://s/x", "opset": 99},
        {"store": "pvc://s/x", "timeoutSeconds": 1}, {"store": "pvc://s/x", "storeEndpoint": "http://minio:9000"},
        {"store": "s3://bucket/x", "storeEndpoint": "ftp://minio"}, {"store": "pvc://s/x", "modelClass": "os.system"},
        {"store": "pvc://s/x", "modelClass": "__import__('os'):x"}, {"store": "s3://bucket/x",
                                                                      "storeCredentialsSecretRef": {"name": "nope"}},
        {"store": "pvc://s/x", "resources": {"limits": {"memory": "a lot"}}},
        # untrusted input (docs/security.md)
        {"store": "pvc://s/x", "modelClass": "os:system"}, {"store": "pvc://s/x", "modelClass": "builtins:exec",
                                                            "modelClassArgs": {"source": "import os"}},
        {"store": "pvc://s/x", "kerasCustomObjects": ["subprocess:Popen"]},
        {"store": "pvc://s/x", "samples": {"intRange": [10, 5]}}, {"store": "pvc://s/x", "samples": {"seed": -1}},
        {"store": "pvc://s/x", "samples": {"intRanges": {"ids": [5, 5]}}},
        {"store": "pvc://s/x", "samples": {"uri": "/mnt/source/../../proc/self/environ"}},
        {"store": "pvc://s/x", "samples": {"uri": "relative.npz"}},
        {"store": "pvc://s/x", "samples": {"calibrationUri": "pvc://claim/a\nb"}},
        {"store": "pvc://s/x", "maxSourceSize": "lots"}, {"store": "pvc://s/x", "maxSamplesSize": "-1Gi"},
    ]],
    ("spec.model", {"uri": "https://user:password@host/m.onnx", "format": "onnx"}),
    ("spec.model", {"uri": "https://host/m.onnx", "format": "onnx", "credentialsSecretRef": {"name": "s"}}),
    # rollout and traffic
    *[("spec.rollout", v) for v in [
        {"strategy": "canary"}, {"strategy": "rolling"}, {"canary": {"steps": []}},
        {"canary": {"steps": [{"setWeight": 0}]}}, {"canary": {"steps": [{"setWeight": 10, "pause": {}}]}},
        {"canary": {"steps": [{}]}}, {"canary": {"steps": [{"pause": {"duration": "forever"}}]}},
        {"canary": {"analysis": {"interval": "1s"}}}, {"canary": {"analysis": {"failureLimit": 0}}},
        {"canary": {"analysis": {"minSuccessRate": 101}}}, {"canary": {"analysis": {"latency": {}}}},
        {"canary": {"analysis": {"custom": [{"name": "Bad Name", "query": "up", "max": 1}]}}},
        {"paused": "maybe"},
    ]],
    *[("spec.traffic", v) for v in [
        {}, {"gateway": {}}, {"gateway": {"parentRefs": []}}, {"gateway": {"parentRefs": [{"name": ""}]}},
        {"gateway": {"parentRefs": [{"name": "gw"}], "pathPrefix": "no-slash"}},
        {"gateway": {"parentRefs": [{"name": "gw"}], "hostnames": ["*" * 300]}},
        {"gateway": {"parentRefs": [{"name": "gw"}], "hostnames": ["Example.COM"]}},
        {"gateway": {"parentRefs": [{"name": "gw"}], "pathPrefix": "/v2/../admin"}},
        {"gateway": {"parentRefs": [{"name": "gw", "namespace": "Bad_NS"}]}},
    ]],
    # the object itself
    ("spec", "a string"), ("spec", None), ("spec.unknownField", 1), ("status", {"url": "http://fake"}),
    ("metadata.name", "x" * 41), ("metadata.name", "UPPER"), ("metadata.name", "9lives"), ("metadata.name", "a.b"),
    ("metadata.name", "ünïcode"),
]


def _set(manifest: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    node = manifest
    *parents, leaf = path.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[leaf] = value
    return manifest


def test_every_hostile_manifest_is_rejected_or_answered(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    assert len(HOSTILE) >= 150, len(HOSTILE)
    log_start = operator_process.log.stat().st_size
    accepted: dict[str, tuple[str, Any]] = {}
    rejected = 0
    for i, (path, value) in enumerate(HOSTILE):
        manifest = _set(copy.deepcopy(model_deployment(f"h-{i}", namespace)), path, value)
        proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest), check=False)
        if proc.returncode != 0:
            rejected += 1
            continue
        name = manifest["metadata"]["name"]
        accepted[name] = (path, value)

    def answer(name: str) -> dict[str, Any] | None:
        body = admin.get(MODEL_DEPLOYMENTS, namespace, name) or {}
        ready = next((c for c in body.get("status", {}).get("conditions", []) if c["type"] == "Ready"), None)
        current = ready and body["status"].get("observedGeneration") == body["metadata"]["generation"]
        return ready if current else None

    deadline = time.monotonic() + 60
    answers: dict[str, dict[str, Any] | None] = {}
    while time.monotonic() < deadline:
        answers = {name: answer(name) for name in accepted}
        if all(answers.values()):
            break
        time.sleep(2)
    silent = {name: accepted[name] for name, a in answers.items() if a is None}
    by_reason = Counter(f"{a['status']}/{a['reason']}" for a in answers.values() if a)
    print(f"\nhostile manifests: {len(HOSTILE)}; rejected at apply: {rejected}; answered by a condition: "
          f"{len(accepted) - len(silent)} ({dict(by_reason)}); silent: {len(silent)}")
    assert not silent, f"accepted and never answered: {silent}"
    served = {name: accepted[name] for name, a in answers.items() if a and a["status"] == "True"}
    print(f"accepted and Ready (valid after all): {served}")

    refused = {"InvalidSpec", "ApplyRejected", "SourceUnsupported", "SecretNotFound", "SecretIncomplete",
               "NameConflict", "ReconcileFailed"}
    for name, a in answers.items():
        if a and a["reason"] in refused:
            leftovers = admin.list_by_labels(DEPLOYMENTS, namespace, {"modelyard.dev/deployment": name})
            assert not leftovers, f"{name} {accepted[name]} was refused ({a['reason']}) but left {leftovers}"
    assert by_reason.get("False/ReconcileFailed", 0) == 0, "the operator failed on a spec it should handle"
    tail = operator_process.log.read_bytes()[log_start:].decode(errors="replace")
    assert "Traceback" not in tail, tail[-4000:]
