"""E2E faults: kube-apiserver and etcd killed (-9) and restarted under a running operator, with spec changes made
right after; every model converges, the operator logs no traceback. Its own cluster (kwok nodes only), so that
restarting its control plane disturbs no other test. Convergence times are printed, not asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import model_deployment, wait_for
from localcluster import LocalCluster, free_port, operator_rbac
from modelyard.kube.client import MODEL_DEPLOYMENTS, Kube, load_api_client

pytestmark = [pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]
MODELS = 10
NAMESPACE = "faults"


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalCluster, subprocess.Popen[bytes], Path]]:
    cluster = LocalCluster(tmp_path_factory.mktemp("faults"), process_nodes=0, with_gateway=False,
                           with_prometheus=False).start()
    proc = None
    try:
        cluster.kubectl("apply", "-f", str(ROOT / "crds" / "modelyard.dev_modeldeployments.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/modeldeployments.modelyard.dev")
        cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                              "items": operator_rbac()}))
        cluster.kubectl("create", "namespace", NAMESPACE)
        env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig), "MODELYARD_RESYNC_SECONDS": "60",
               "MODELYARD_METRICS_PORT": str(free_port())}
        log = cluster.workdir / "logs" / "operator.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "modelyard", "--liveness=", "--verbose"], env=env,
                                    stdout=out, stderr=subprocess.STDOUT)
        yield cluster, proc, log
        assert proc.poll() is None, log.read_text()[-3000:]
        assert "Traceback" not in log.read_text(), log.read_text()[-5000:]
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=20)
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
    faulty: tuple[LocalCluster, subprocess.Popen[bytes], Path], component: str
) -> None:
    cluster, proc, log = faulty
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
    assert proc.poll() is None, log.read_text()[-3000:]
