"""What the benchmarks on the local cluster share: a cluster with the CRD and the operator's RBAC, the operator
process (reading the cluster's Prometheus), a namespace and an admin client. Imported by bench/*.py, which put
hack/ and tests/ on sys.path first."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from localcluster import LocalCluster, free_port
from modelyard.kube.client import Kube, load_api_client


@dataclass(frozen=True)
class Bench:
    cluster: LocalCluster
    admin: Kube
    namespace: str
    work: Path


@contextmanager
def local_operator(work: Path, resync_seconds: float = 10) -> Iterator[Bench]:
    cluster = LocalCluster(work / "cluster").start()
    operator = None
    try:
        cluster.install_modelyard()
        env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig),
               "MODELYARD_RESYNC_SECONDS": str(resync_seconds), "MODELYARD_METRICS_PORT": str(free_port()),
               "MODELYARD_PROMETHEUS_URL": cluster.prometheus_url, "MODELYARD_DRAIN_SECONDS": "5"}
        log = open(work / "operator.log", "wb")  # noqa: SIM115 - open for the operator's whole life
        operator = subprocess.Popen([sys.executable, "-m", "modelyard", "--liveness="], env=env, stdout=log,
                                    stderr=subprocess.STDOUT)
        namespace = f"bench-{uuid.uuid4().hex[:6]}"
        cluster.kubectl("create", "namespace", namespace)
        (work / "models").mkdir()
        yield Bench(cluster, Kube(load_api_client(str(cluster.kubeconfig)), field_manager="modelyard-bench"),
                    namespace, work)
    finally:
        if operator is not None:
            operator.terminate()
            operator.wait(timeout=30)
        cluster.stop()
