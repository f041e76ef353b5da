"""The autoscaling scenario shared by the e2e tests and bench/autoscale.py: model `scaled` served from PVC `models`
through the local Gateway, a python-backend echo model that takes 100 ms a request with one instance (10 requests/s
a replica), autoscaled by KEDA on Triton's queue time; and a recorder of the serving revision's replicas."""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from canary.repositories import write_repository
from helpers import bound_claim, model_deployment, wait_for
from localcluster import GATEWAY_NAME, GATEWAY_NAMESPACE, LocalCluster
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, SERVICES, Kube
from processkubelet.kubelet import ON_PROCESS_NODE

NAME = "scaled"
SERVICE_MS = 100
"""Each request takes this long in the model, one at a time: a replica serves 1000 / SERVICE_MS requests a second."""
TARGET_MS = 50
"""The queue-time target."""
IDLE_SECONDS = 20
"""idlePeriod: idle this long at minReplicas 0, the model goes to zero."""


def provision_models(cluster: LocalCluster, namespace: str, root: Path) -> None:
    """PVC `models` (a hostPath PV on `root`) with two revisions of the slow echo model."""
    bound_claim(cluster, namespace, "models", root, "ReadOnlyMany")
    write_repository(root, "v1", delay_ms=SERVICE_MS)
    write_repository(root, "v2", delay_ms=SERVICE_MS)


def manifest(namespace: str, identity: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    m = model_deployment(NAME, namespace, gpus=0, **ON_PROCESS_NODE)
    m["spec"]["serving"].pop("replicas")
    m["spec"]["model"] = {"uri": f"pvc://models/{identity}", "format": "onnx"}
    m["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                        "hostnames": [f"{NAME}.{namespace}.local"]}}
    m["spec"]["scaling"] = {
        "minReplicas": min_replicas, "maxReplicas": max_replicas,
        "metric": {"type": "queueTime", "target": TARGET_MS, "window": "10s"},
        "idlePeriod": f"{IDLE_SECONDS}s", "pollingInterval": "2s",
        "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                     "scaleDown": {"stabilizationWindowSeconds": 10,
                                   "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]}},
    }
    return m


@dataclass
class Sample:
    at: float
    serving: str
    replicas: int
    ready: int
    desired: int | None


@dataclass
class Recorder:
    """Samples the serving revision (the one the model's Service selects) twice a second."""

    admin: Kube
    namespace: str
    samples: list[Sample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> Recorder:
        threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):  # a sample lost to a passing API error is a gap, not a failure
                self.samples.append(self.sample())
            time.sleep(0.5)

    def sample(self) -> Sample:
        svc = self.admin.get(SERVICES, self.namespace, NAME) or {}
        rev = svc.get("spec", {}).get("selector", {}).get("modelyard.dev/revision", "")
        dep = self.admin.get(DEPLOYMENTS, self.namespace, f"{NAME}-{rev}") or {}
        md = self.admin.get(MODEL_DEPLOYMENTS, self.namespace, NAME) or {}
        return Sample(time.time(), rev, int(dep.get("spec", {}).get("replicas", -1)),
                      int(dep.get("status", {}).get("readyReplicas", 0)),
                      (md.get("status", {}).get("scaling") or {}).get("desiredReplicas"))

    def stop(self) -> None:
        self._stop.set()

    def first(self, what: str, since: float, test: Any, timeout: float = 240) -> float:
        """When a sample first passed `test` after `since` (waits for it)."""
        def probe() -> float | None:
            return next((s.at for s in list(self.samples) if s.at >= since and test(s)), None)
        return wait_for(what, probe, timeout=timeout, interval=0.5)


def status(admin: Kube, namespace: str) -> dict[str, Any]:
    return (admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}).get("status", {})


def per_pod_requests(cluster: LocalCluster, namespace: str, window: str = "15s") -> dict[str, float]:
    """Requests each Triton pod of the model answered in the window, from its own counter (Prometheus)."""
    rows = cluster.prometheus_query(
        f'sum by (pod) (increase(nv_inference_request_success{{namespace="{namespace}",modeldeployment="{NAME}"}}'
        f"[{window}]))")
    return {r["metric"]["pod"]: float(r["value"][1]) for r in rows}
