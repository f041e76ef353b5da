"""The canary scenario shared by the e2e tests and bench/rollout.py: model `echo` served from PVC `models` through
the local Gateway, rolled out as a canary, each revision an echo repository with its own behaviour."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from canary.repositories import write_repository
from helpers import bound_claim, model_deployment
from localcluster import GATEWAY_NAME, GATEWAY_NAMESPACE, LocalCluster
from processkubelet.kubelet import ON_PROCESS_NODE

NAME = "echo"
INTERVAL = 10
"""Seconds: the analysis interval of the scenario."""
STEPS: list[dict[str, Any]] = [{"setWeight": 20}, {"setWeight": 50}]


def provision_models(cluster: LocalCluster, namespace: str, root: Path) -> None:
    """PVC `models` (a hostPath PV on `root`) holding one echo repository per behaviour."""
    bound_claim(cluster, namespace, "models", root, "ReadOnlyMany")
    write_repository(root, "v1")
    write_repository(root, "v2")
    write_repository(root, "failing", fail_percent=40)
    # Slow, not stuck: four instances serve 600 ms requests faster than a 20% share of the load arrives.
    write_repository(root, "slow", delay_ms=600, instances=4)
    write_repository(root, "crashing", crash_after=3)


def manifest(namespace: str, identity: str, min_requests: int = 10,
             steps: list[dict[str, Any]] | None = None, failure_limit: int = 1) -> dict[str, Any]:
    """The echo model serving repository `identity`, rolled out as a canary through the local Gateway."""
    m = model_deployment(NAME, namespace, gpus=0, **ON_PROCESS_NODE)
    m["spec"]["model"] = {"uri": f"pvc://models/{identity}", "format": "onnx"}
    m["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                        "hostnames": [f"{NAME}.{namespace}.local"]}}
    m["spec"]["rollout"] = {"strategy": "canary", "canary": {"steps": steps or STEPS, "analysis": {
        "interval": f"{INTERVAL}s", "failureLimit": failure_limit, "minRequests": min_requests,
        "minSuccessRate": 99, "latency": {"maxMs": 500}}}}
    return m
