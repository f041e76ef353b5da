"""E2E: autoscaling on Triton's own queue time, with real load. The operator process, real Triton servers (a
python-backend model that takes 100 ms a request, one instance: 10 requests/s a replica), Traefik, Prometheus
scraping Triton and Traefik, KEDA (operator and metrics adapter) and the HPA controller of kube-controller-manager.
Every pod here is a real Triton process on the process node; kwok plays no part.

Times are recorded and printed, never asserted: what is asserted is what happened and in which order.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from canary.load import Load
from canary.repositories import write_repository
from helpers import bound_claim, model_deployment, wait_for
from localcluster import GATEWAY_NAME, GATEWAY_NAMESPACE, LocalCluster
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, SCALED_OBJECTS, SERVICES, Kube
from processkubelet.kubelet import ON_PROCESS_NODE

from .conftest import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

NAME = "scaled"
HPA_SYNC = 5.0
"""The local cluster's --horizontal-pod-autoscaler-sync-period, in seconds."""


@pytest.fixture
def models(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Path:
    bound_claim(cluster, namespace, "models", tmp_path, "ReadOnlyMany")
    write_repository(tmp_path, "v1", delay_ms=100)
    write_repository(tmp_path, "v2", delay_ms=100)
    return tmp_path


def manifest(namespace: str, identity: str, min_replicas: int, max_replicas: int) -> dict[str, Any]:
    m = model_deployment(NAME, namespace, gpus=0, **ON_PROCESS_NODE)
    m["spec"]["serving"].pop("replicas")
    m["spec"]["model"] = {"uri": f"pvc://models/{identity}", "format": "onnx"}
    m["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                        "hostnames": [f"{NAME}.{namespace}.local"]}}
    m["spec"]["scaling"] = {
        "minReplicas": min_replicas, "maxReplicas": max_replicas,
        "metric": {"type": "queueTime", "target": 50, "window": "10s"},
        "idlePeriod": "20s", "pollingInterval": "2s",
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


@pytest.fixture
def recorder(admin: Kube, namespace: str) -> Iterator[Recorder]:
    rec = Recorder(admin, namespace).start()
    yield rec
    rec.stop()


def status(admin: Kube, namespace: str) -> dict[str, Any]:
    return (admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}).get("status", {})


def ready_reason(admin: Kube, namespace: str) -> tuple[str, str]:
    cond = next((c for c in status(admin, namespace).get("conditions", []) if c["type"] == "Ready"), {})
    return cond.get("status", ""), cond.get("reason", "")


def diagnose(cluster: LocalCluster, admin: Kube, namespace: str, op: OperatorProcess) -> str:
    return (f"status: {json.dumps(status(admin, namespace), indent=1)}\noperator:\n{op.log_tail(2500)}\n"
            f"keda:\n{cluster.log_tail('keda-operator', 2500)}\n{cluster.container_logs(namespace, 1500)}")


def per_pod_requests(cluster: LocalCluster, namespace: str, window: str = "15s") -> dict[str, float]:
    rows = cluster.prometheus_query(
        f'sum by (pod) (increase(nv_inference_request_success{{namespace="{namespace}",modeldeployment="{NAME}"}}'
        f"[{window}]))")
    return {r["metric"]["pod"]: float(r["value"][1]) for r in rows}


def deploy(cluster: LocalCluster, admin: Kube, op: OperatorProcess, namespace: str, min_replicas: int,
           max_replicas: int, rate: float) -> Load:
    """Revision v1 answering through the gateway; returns a load generator for it (not started)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v1", min_replicas, max_replicas)))
    load = Load(cluster.gateway_url, f"{NAME}.{namespace}.local", rate=rate, workers=16)
    try:
        wait_for("the model to answer through the gateway", lambda: load.ask().status == 200 or None,
                 timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, op)}") from None
    return load


def test_queue_time_scales_out_under_load_back_in_then_to_zero_and_a_request_wakes_it(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, models: Path,
    recorder: Recorder,
) -> None:
    load = deploy(cluster, admin, operator_process, namespace, min_replicas=1, max_replicas=3, rate=20)
    assert recorder.sample().replicas == 1

    t0 = time.time()
    load.start()
    try:
        t_desired = recorder.first("the autoscaler to ask for 3 replicas", t0, lambda s: s.replicas == 3)
        t_ready = recorder.first("3 ready replicas", t0, lambda s: s.ready == 3)
        time.sleep(8)
        served = per_pod_requests(cluster, namespace)
        assert len([p for p, n in served.items() if n > 0]) == 3, f"every replica takes requests: {served}"
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, operator_process)}") from None
    finally:
        answers = load.stop()
    t_stop = time.time()
    t_in = recorder.first("scale-in after the load stops", t_stop, lambda s: s.replicas == 1)
    # minReplicas 0 now (not a new revision): idle for idlePeriod, the model goes to zero.
    t_min0 = time.time()
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v1", min_replicas=0, max_replicas=3)))
    t_zero = recorder.first("scale to zero when idle", t_min0, lambda s: s.replicas == 0 and s.ready == 0)
    wait_for("Ready=True ScaledToZero", lambda: ready_reason(admin, namespace) == ("True", "ScaledToZero") or None,
             timeout=30)

    # A request arrives at zero: the gateway answers 503 until a pod is up, and counts it; KEDA wakes the model.
    first_request = time.time()
    statuses = []

    def answered() -> bool | None:
        statuses.append(load.ask().status)
        return statuses[-1] == 200 or None

    try:
        wait_for("a request to succeed after zero", answered, timeout=180, interval=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc} (statuses {statuses[-5:]})\n"
                             f"{diagnose(cluster, admin, namespace, operator_process)}") from None
    first_success = time.time()
    cold = wait_for("the operator to report the cold start", lambda: status(admin, namespace).get(
        "scaling", {}).get("lastColdStartSeconds"), timeout=60)
    ok = sum(1 for a in answers if a.status == 200)
    print(f"\nautoscaling on queue time (target 50 ms, HPA sync {HPA_SYNC:g}s), load 20 req/s from t=0:\n"
          f"  3 replicas asked for  t={t_desired - t0:6.1f}s ({(t_desired - t0) / HPA_SYNC:.1f} sync periods)\n"
          f"  3 replicas ready      t={t_ready - t0:6.1f}s\n"
          f"  load stopped          t={t_stop - t0:6.1f}s ({ok}/{len(answers)} requests answered 200)\n"
          f"  back to 1 replica     t={t_in - t0:6.1f}s\n"
          f"  minReplicas 0 applied t={t_min0 - t0:6.1f}s\n"
          f"  scaled to zero        t={t_zero - t0:6.1f}s (idlePeriod 20s)\n"
          f"  first request at zero -> first success: {first_success - first_request:.1f}s "
          f"({len(statuses) - 1} requests before it, statuses {sorted(set(statuses))})\n"
          f"  the operator's cold start (left zero -> first pod ready): {cold}s")
    assert t0 < t_desired <= t_ready < t_stop < t_in < t_min0 < t_zero < first_request < first_success
    assert set(statuses[:-1]) <= {502, 503}, f"before the first pod, the gateway says it has none: {statuses}"
    names = [e["reason"] for e in json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
             ["items"] if e["involvedObject"]["name"] == NAME]
    assert "ScaledFromZero" in names, names


def test_a_rollout_under_load_keeps_the_serving_count_and_the_autoscaler_ends_on_the_new_revision(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, models: Path,
    recorder: Recorder,
) -> None:
    load = deploy(cluster, admin, operator_process, namespace, min_replicas=1, max_replicas=2, rate=15)
    load.start()
    try:
        t_two = recorder.first("2 ready replicas under load", time.time(), lambda s: s.ready == 2)
        old = recorder.sample().serving
        t_roll = time.time()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v2", min_replicas=1,
                                                                       max_replicas=2)))
        t_new = recorder.first("the new revision to serve", t_roll, lambda s: s.serving not in ("", old))
        new = recorder.sample().serving
        wait_for("the old revision to go", lambda: admin.get(DEPLOYMENTS, namespace, f"{NAME}-{old}") is None or None,
                 timeout=120)
        so = admin.get(SCALED_OBJECTS, namespace, NAME) or {}
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, operator_process)}") from None
    finally:
        answers = load.stop()
    during = [s for s in recorder.samples if s.at >= t_roll and s.serving]
    lowest = min(s.ready for s in during)
    failed = [a for a in answers if a.at >= t_roll and a.status != 200]
    print(f"\nrollout under load (15 req/s): 2 ready at t={t_two - t_roll:.1f}s before the change; the new revision "
          f"served {t_new - t_roll:.1f}s after it; lowest ready count of the serving revision meanwhile: {lowest}; "
          f"{len(failed)} failed requests of {len([a for a in answers if a.at >= t_roll])} after the change")
    assert lowest >= 2, [(round(s.at - t_roll, 1), s.serving, s.ready) for s in during if s.ready < 2]
    assert so["spec"]["scaleTargetRef"]["name"] == f"{NAME}-{new}"
    assert so["spec"]["minReplicaCount"] == 1
    assert status(admin, namespace)["scaling"]["target"] == new
