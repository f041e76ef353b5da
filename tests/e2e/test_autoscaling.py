"""E2E: autoscaling on Triton's own queue time, with real load. The operator process, real Triton servers (a
python-backend model that takes 100 ms a request, one instance: 10 requests/s a replica), Traefik, Prometheus
scraping Triton and Traefik, KEDA (operator and metrics adapter) and the HPA controller of kube-controller-manager.
Every pod here is a real Triton process on the process node; kwok plays no part.

Times are recorded and printed, never asserted: what is asserted is what happened and in which order.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from autoscale.scenario import NAME, Recorder, manifest, per_pod_requests, provision_models, status
from canary.load import Load
from helpers import wait_for
from localcluster import LocalCluster
from modelyard.api.v1alpha1.scaling import ScalingMetric
from modelyard.kube.client import DEPLOYMENTS, PODS, SCALED_OBJECTS, Kube
from modelyard.render.scaling import scaling_query

from .conftest import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.triton]

HPA_SYNC = 5.0
"""The local cluster's --horizontal-pod-autoscaler-sync-period, in seconds."""


@pytest.fixture
def models(cluster: LocalCluster, namespace: str, tmp_path: Path) -> Path:
    provision_models(cluster, namespace, tmp_path)
    return tmp_path


@pytest.fixture
def recorder(admin: Kube, namespace: str) -> Iterator[Recorder]:
    rec = Recorder(admin, namespace).start()
    yield rec
    rec.stop()


def ready_reason(admin: Kube, namespace: str) -> tuple[str, str]:
    cond = next((c for c in status(admin, namespace).get("conditions", []) if c["type"] == "Ready"), {})
    return cond.get("status", ""), cond.get("reason", "")


def pod_states(admin: Kube, namespace: str) -> str:
    """Each pod of the namespace: phase, node, Ready, and its containers' states (why a pod is not Ready)."""
    lines = []
    for pod in admin.list_by_labels(PODS, namespace, {}):
        st = pod.get("status", {})
        ready = next((c for c in st.get("conditions", []) if c["type"] == "Ready"), {})
        sched = next((c for c in st.get("conditions", []) if c["type"] == "PodScheduled"), {})
        containers = [(c["name"], c.get("ready"), c.get("restartCount"), c.get("state")) for c in
                      st.get("containerStatuses", [])]
        lines.append(f"{pod['metadata']['name']} {st.get('phase')} node={pod['spec'].get('nodeName')} "
                     f"ready={ready.get('status')} scheduled={sched.get('status')} {sched.get('message', '')} "
                     f"deleting={bool(pod['metadata'].get('deletionTimestamp'))} {containers}")
    return "\n".join(lines)


def diagnose(cluster: LocalCluster, admin: Kube, namespace: str, op: OperatorProcess) -> str:
    return (f"status: {json.dumps(status(admin, namespace), indent=1)}\npods:\n{pod_states(admin, namespace)}\n"
            f"operator:\n{op.log_tail(2500)}\noperator's work: {op.work_state()}\n"
            f"keda:\n{cluster.log_tail('keda-operator', 2500)}\n{cluster.container_logs(namespace, 1500)}")


def builtin_metrics(cluster: LocalCluster, namespace: str, revision: str) -> dict[str, float | None]:
    """Each built-in metric's query, exactly as the ScaledObject carries it, on Prometheus now (None: no data)."""
    out: dict[str, float | None] = {}
    for kind in ("queueTime", "pendingRequests", "inferenceRate", "gpuUtilization"):
        query = scaling_query(ScalingMetric(type=kind, target=1, window="10s"), namespace, NAME, revision).query
        rows = cluster.prometheus_query(query)
        out[kind] = round(float(rows[0]["value"][1]), 2) if rows else None
    return out


def scaled_object_once_gone(admin: Kube, namespace: str, old: str) -> dict[str, Any]:
    """The model's ScaledObject, once the revision that served before the rollout is gone."""
    wait_for("the old revision to go", lambda: admin.get(DEPLOYMENTS, namespace, f"{NAME}-{old}") is None or None,
             timeout=120)
    return admin.get(SCALED_OBJECTS, namespace, NAME) or {}


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
        measured = builtin_metrics(cluster, namespace, recorder.sample().serving)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, operator_process)}") from None
    finally:
        answers = load.stop()
    t_stop = time.time()
    try:
        t_in = recorder.first("scale-in after the load stops", t_stop, lambda s: s.replicas == 1)
        # minReplicas 0 now (not a new revision): idle for idlePeriod, the model goes to zero.
        t_min0 = time.time()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest(namespace, "v1", min_replicas=0,
                                                                       max_replicas=3)))
        t_zero = recorder.first("scale to zero when idle", t_min0, lambda s: s.replicas == 0 and s.ready == 0)
        wait_for("Ready=True ScaledToZero",
                 lambda: ready_reason(admin, namespace) == ("True", "ScaledToZero") or None, timeout=30)
    except AssertionError as exc:
        scaled = admin.get(SCALED_OBJECTS, namespace, NAME) or {}
        raise AssertionError(f"{exc}\nlast samples: {recorder.samples[-3:]}\nScaledObject spec: "
                             f"{json.dumps(scaled.get('spec'))}\nstatus: {json.dumps(scaled.get('status'))}\n"
                             f"{diagnose(cluster, admin, namespace, operator_process)}") from None

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
    print(f"\nthe built-in metrics' PromQL on the live Triton series at 3 replicas under 20 req/s: {measured}")
    assert measured["inferenceRate"] is not None and 10 <= measured["inferenceRate"] <= 30, measured
    assert measured["queueTime"] is not None and measured["queueTime"] >= 0, measured
    assert measured["pendingRequests"] is not None and measured["pendingRequests"] >= 0, measured
    assert measured["gpuUtilization"] is None, "no GPU here: no nv_gpu_utilization series, no data (not 0)"
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
        so = scaled_object_once_gone(admin, namespace, old)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{diagnose(cluster, admin, namespace, operator_process)}") from None
    finally:
        answers = load.stop()
    during = [s for s in recorder.samples if s.at >= t_roll and s.serving]
    lowest = min(s.ready for s in during)
    failed = [a for a in answers if a.at >= t_roll and a.status != 200]
    print(f"\nrollout under load (15 req/s): 2 ready at t={t_two - t_roll:.1f}s before the change; the new revision "
          f"served {t_new - t_roll:.1f}s after it; lowest ready count of the serving revision meanwhile: {lowest}; "
          f"{len(failed)} failed requests of {len([a for a in answers if a.at >= t_roll])} after the change "
          f"{sorted({(a.status, a.detail[:60]) for a in failed})}")
    assert lowest >= 2, [(round(s.at - t_roll, 1), s.serving, s.ready) for s in during if s.ready < 2]
    # Blue/green behind the gateway loses nothing: the new revision's backend is known (weight 0) before the switch,
    # and the old one drains at weight 0 before it goes.
    assert not failed, sorted({(a.status, a.detail[:80]) for a in failed})
    assert so["spec"]["scaleTargetRef"]["name"] == f"{NAME}-{new}"
    assert so["spec"]["minReplicaCount"] == 1
    assert status(admin, namespace)["scaling"]["target"] == new


def test_a_canary_under_load_runs_its_share_then_the_whole_count_and_loses_nothing(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, models: Path,
    recorder: Recorder,
) -> None:
    """Autoscaled and rolled out as a canary at 50%: the canary runs its share of the model's replicas at 50%, the
    whole count before it takes 100%, and the two revisions together never drop below what served before."""
    load = deploy(cluster, admin, operator_process, namespace, min_replicas=1, max_replicas=2, rate=15)
    load.start()
    timeline: list[tuple[float, int, int, int, int, str]] = []  # t, weight, stable ready, canary wanted/ready, phase

    def observe(t_roll: float) -> dict[str, object]:
        s = status(admin, namespace)
        r = s.get("rollout") or {}
        canary = admin.get(DEPLOYMENTS, namespace, f"{NAME}-{r.get('canary')}") if r.get("canary") else None
        stable = admin.get(DEPLOYMENTS, namespace, f"{NAME}-{r.get('stable')}") if r.get("stable") else None
        timeline.append((round(time.time() - t_roll, 1), int(r.get("weight", 0)),
                         int(((stable or {}).get("status") or {}).get("readyReplicas", 0)),
                         int(((canary or {}).get("spec") or {}).get("replicas", 0)),
                         int(((canary or {}).get("status") or {}).get("readyReplicas", 0)), r.get("phase", "")))
        return r

    try:
        recorder.first("2 ready replicas under load", time.time(), lambda s: s.ready == 2)
        old = recorder.sample().serving
        t_roll = time.time()
        m = manifest(namespace, "v2", min_replicas=1, max_replicas=2)
        m["spec"]["rollout"] = {"strategy": "canary", "canary": {"steps": [{"setWeight": 50}], "analysis": {
            "interval": "10s", "minRequests": 10, "minSuccessRate": 99, "latency": {"maxMs": 5000}}}}
        cluster.kubectl("apply", "-f", "-", input=json.dumps(m))
        wait_for("the canary to be promoted", lambda: observe(t_roll).get("phase") == "Promoted" or None,
                 timeout=240, interval=0.5)
        new = status(admin, namespace)["rollout"]["canary"]
        so = scaled_object_once_gone(admin, namespace, old)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{timeline}\n{diagnose(cluster, admin, namespace, operator_process)}") from None
    finally:
        answers = load.stop()
    failed = [a for a in answers if a.at >= t_roll and a.status != 200]
    at_half = [row for row in timeline if row[1] == 50]
    print(f"\ncanary under load (15 req/s, max 2): (t, weight, stable ready, canary wanted, canary ready, phase) "
          f"at each change: {[row for i, row in enumerate(timeline) if i == 0 or row[1:] != timeline[i - 1][1:]]}; "
          f"{len(failed)} failed requests of {len([a for a in answers if a.at >= t_roll])}")
    assert at_half, timeline
    # At 50% the canary runs its share: one replica of the model's two (the stable revision's count carries the
    # other half), not the whole count.
    assert min(row[3] for row in at_half) == 1, at_half
    # Before it took all the traffic it ran the whole count, all Ready.
    last_before = [row for row in timeline if row[1] < 100 and row[5] != "Promoted"][-1]
    assert last_before[3] == 2, timeline
    assert not any(row[2] + row[4] < 2 for row in timeline if row[5] not in ("", "Promoted")), (
        "the two revisions together fell below the 2 replicas that served before", timeline)
    assert not failed, sorted({(a.status, a.detail[:80]) for a in failed})
    assert so["spec"]["scaleTargetRef"]["name"] == f"{NAME}-{new}"
    assert status(admin, namespace)["scaling"]["target"] == new
