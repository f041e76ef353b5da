"""E2E faults: kube-apiserver and etcd killed (-9) and restarted under a running operator, with spec changes made
right after; every model converges, the operator logs no traceback. Its own cluster (kwok nodes only), so that
restarting its control plane disturbs no other test. Convergence times are printed, not asserted."""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import model_deployment, wait_for
from localcluster import LocalCluster, free_port
from modelyard.api.names import LABEL_DEPLOYMENT, LABEL_REVISION
from modelyard.kube.client import DEPLOYMENTS, JOBS, MODEL_DEPLOYMENTS, SERVICES, Kube, load_api_client

from .conftest import OperatorProcess, _start

pytestmark = [pytest.mark.e2e]

MODELS = 10
NAMESPACE = "faults"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, OperatorProcess]]:
    cluster = LocalCluster(tmp_path_factory.mktemp("faults"), process_nodes=0, with_gateway=False,
                           with_prometheus=False, with_keda=False).start()
    op = None
    try:
        cluster.install_modelyard()
        cluster.kubectl("create", "namespace", NAMESPACE)
        # A replaced revision drains 3 s (no longer selected) before it is removed.
        env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig), "MODELYARD_RESYNC_SECONDS": "60",
               "MODELYARD_METRICS_PORT": str(free_port()), "MODELYARD_DRAIN_SECONDS": "3"}
        log = cluster.workdir / "logs" / "operator.log"
        op = OperatorProcess(_start(env, log), log, 60, env)
        yield cluster, op
        op.assert_running()
        assert "Traceback" not in log.read_text(), log.read_text()[-5000:]
    finally:
        if op is not None and op.proc.poll() is None:
            op.proc.terminate()
            op.proc.wait(timeout=20)
        cluster.stop()


def _apply_all(cluster: LocalCluster, batch: int) -> None:
    items = [model_deployment(f"m{i}", NAMESPACE, gpus=0, tolerations=[], maxBatchSize=batch) for i in range(MODELS)]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))


def _converged(admin: Kube, batch: int) -> bool:
    """Every model Ready on the revision the current spec asks for (its Deployment has maxBatchSize `batch`)."""
    for i in range(MODELS):
        body = admin.get(MODEL_DEPLOYMENTS, NAMESPACE, f"m{i}") or {}
        status = body.get("status", {})
        ready = next((c for c in status.get("conditions", []) if c["type"] == "Ready"), {})
        if (ready.get("status") != "True" or status.get("observedGeneration") != body["metadata"]["generation"]
                or body["spec"]["serving"]["maxBatchSize"] != batch):
            return False
    return True


@pytest.mark.parametrize("component", ["kube-apiserver", "etcd"])
def test_models_converge_after_a_control_plane_restart(
    faulty: tuple[LocalCluster, OperatorProcess], component: str
) -> None:
    cluster, op = faulty
    admin = Kube(load_api_client(str(cluster.kubeconfig)), field_manager="modelyard-tests")
    batch = 8 if component == "kube-apiserver" else 16
    _apply_all(cluster, batch)
    wait_for("every model to be Ready before the fault", lambda: _converged(admin, batch), timeout=120, interval=1)

    # The floor: the same spec change with nothing restarted.
    started = time.monotonic()
    _apply_all(cluster, batch + 1)
    wait_for("every model to converge (no fault)", lambda: _converged(admin, batch + 1), timeout=120, interval=0.2)
    floor = time.monotonic() - started

    back = cluster.restart(component, down_seconds=5)
    _apply_all(cluster, batch + 2)
    wait_for(f"every model to converge after the {component} restart", lambda: _converged(admin, batch + 2),
             timeout=180, interval=0.2)
    after = time.monotonic() - back
    print(f"\n{component} killed, down 5 s, restarted: {MODELS} models converged {after:.1f} s after it answered "
          f"again (the same change without a restart: {floor:.1f} s)")
    op.assert_running()


def test_the_operator_killed_at_random_points_of_rollouts_converges_without_orphans_or_unavailable_service(
    faulty: tuple[LocalCluster, OperatorProcess],
) -> None:
    """Blue/green rollouts of every model, the operator killed -9 three times at random moments and restarted;
    meanwhile a sampler checks that no model's Service ever selects a revision without an available Deployment."""
    cluster, op = faulty
    admin = Kube(load_api_client(str(cluster.kubeconfig)), field_manager="modelyard-tests")
    batch = 32
    _apply_all(cluster, batch)
    wait_for("every model to be Ready", lambda: _converged(admin, batch), timeout=120, interval=1)

    violations: list[str] = []
    stop = threading.Event()

    managed = {"app.kubernetes.io/managed-by": "modelyard"}

    def selections() -> dict[str, tuple[str, str]]:
        """Each model's Service: (the revision it selects, its resourceVersion)."""
        return {svc["metadata"]["name"]: (svc["spec"]["selector"].get(LABEL_REVISION),
                                          svc["metadata"]["resourceVersion"])
                for svc in admin.list_by_labels(SERVICES, NAMESPACE, managed)}

    def sample() -> None:
        # Two lists are never one snapshot: a Service read after the Deployments may already follow a switch the
        # Deployment list predates. So a Service counts only when it read the same (revision, resourceVersion)
        # before and after the Deployments: it selected that revision all the while the Deployments were read.
        while not stop.is_set():
            before = selections()
            available = {(d["metadata"]["labels"].get(LABEL_DEPLOYMENT), d["metadata"]["labels"].get(LABEL_REVISION))
                         for d in admin.list_by_labels(DEPLOYMENTS, NAMESPACE, managed)
                         if int(d.get("status", {}).get("availableReplicas", 0)) > 0}
            after = selections()
            for name, (selected, version) in before.items():
                if after.get(name) == (selected, version) and (name, selected) not in available:
                    violations.append(f"{name} selects {selected} (Service version {version}), which has no "
                                      "available Deployment of that model")
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    rng = random.Random(7)
    try:
        started = time.monotonic()
        _apply_all(cluster, batch + 1)
        kills = []
        for _ in range(3):
            delay = rng.uniform(0.2, 2.5)
            time.sleep(delay)
            op.kill()
            kills.append(round(delay, 2))
            op.start()
        wait_for("every model to converge after the kills", lambda: _converged(admin, batch + 1), timeout=180,
                 interval=0.2)
        took = time.monotonic() - started
    finally:
        stop.set()
        sampler.join(timeout=10)
    print(f"\noperator killed -9 after {kills} s (each restarted at once): {MODELS} models converged in {took:.1f} s")
    assert not violations, violations[:10]
    for i in range(MODELS):  # no orphan revision, once the replaced ones have drained (3 s, then a wake-up)
        def one(i: int = i) -> list[str] | None:
            names = [d["metadata"]["name"] for d in admin.list_by_labels(DEPLOYMENTS, NAMESPACE,
                                                                        {"modelyard.dev/deployment": f"m{i}"})]
            return names if len(names) == 1 else None
        wait_for(f"m{i} to keep one revision", one, timeout=30)
    assert admin.list_by_labels(JOBS, NAMESPACE, {"app.kubernetes.io/managed-by": "modelyard"}) == []
    op.assert_running()


def test_sigusr1_writes_every_threads_stack_to_the_log_and_the_operator_carries_on(
    faulty: tuple[LocalCluster, OperatorProcess],
) -> None:
    """What an operator that stopped reconciling is asked for (the ModelyardQueueStalled alert points here)."""
    cluster, op = faulty
    admin = Kube(load_api_client(str(cluster.kubeconfig)), field_manager="modelyard-tests")

    def serving() -> bool | None:
        try:
            return op.metric("modelyard_queue_depth") >= 0
        except OSError:
            return None

    wait_for("the operator to serve its metrics (it has started)", serving, timeout=60, interval=0.5)
    state = op.work_state()
    assert "modelyard_queue_depth" in state and "most recent call first" in state, state
    assert "handlers/workqueue.py" in state, f"the reconcile workers' stacks: {state}"
    assert "kube/cache.py" in state, f"the informers' stacks: {state}"
    op.assert_running()
    _apply_all(cluster, 3)
    wait_for("every model to converge after the dump", lambda: _converged(admin, 3), timeout=120, interval=0.5)
