"""Two operator replicas with leader election on one Lease: one reconciles, the other waits; when the leader dies
(kill -9) or stops (SIGTERM: it releases the Lease) the other takes over. The failover times are printed, never
asserted. Real operator processes with the chart's RBAC (the Lease Role in the operator's namespace); kwok pods."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from helpers import model_deployment, wait_for
from localcluster import OPERATOR_NAMESPACE, LocalCluster, free_port
from modelyard.kube.client import Kube
from modelyard.kube.leader import LEASES

pytestmark = pytest.mark.integration


@dataclass
class Replica:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def identity(self) -> str:
        marker = "leader election: candidate "
        return self.text().split(marker, 1)[1].split()[0] if marker in self.text() else ""


def start(cluster: LocalCluster, namespace: str, name: str) -> Replica:
    log = cluster.workdir / "logs" / f"operator-{namespace}-{name}.log"
    env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig), "MODELYARD_RESYNC_SECONDS": "5",
           "MODELYARD_METRICS_PORT": str(free_port()), "MODELYARD_LEADER_ELECTION": "true",
           "MODELYARD_LEADER_ELECTION_NAMESPACE": OPERATOR_NAMESPACE,
           "MODELYARD_LEADER_ELECTION_ID": f"modelyard-{namespace}"}
    with open(log, "ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "modelyard", "--liveness=", "--verbose",
                                 f"--namespace={namespace}"], env=env, stdout=out, stderr=subprocess.STDOUT)
    replica = Replica(name, proc, log)
    wait_for(f"replica {name} to campaign", lambda: replica.identity() or None, timeout=60)
    return replica


def ready(cluster: LocalCluster, namespace: str, name: str) -> bool:
    return cluster.kubectl("get", "mdep", name, "-n", namespace, "-o",
                           'jsonpath={.status.conditions[?(@.type=="Ready")].status}', check=False).stdout == "True"


def test_one_replica_leads_and_another_takes_over_when_it_dies_or_stops(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    lease_name = f"modelyard-{namespace}"
    replicas = [start(cluster, namespace, "a"), start(cluster, namespace, "b")]
    try:
        def holder() -> str:
            lease = admin.get(LEASES, OPERATOR_NAMESPACE, lease_name) or {}
            return str((lease.get("spec") or {}).get("holderIdentity") or "")

        first = wait_for("a leader", lambda: holder() or None, timeout=60)
        leader = next(r for r in replicas if r.identity() == first)
        follower = next(r for r in replicas if r is not leader)

        cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("one", namespace)))
        wait_for("the model to be Ready", lambda: ready(cluster, namespace, "one"), timeout=90)
        assert f"reconciled {namespace}/one" in leader.text()
        assert f"reconciled {namespace}/" not in follower.text(), "the follower reconciled"

        # kill -9: nobody releases the Lease; the follower takes it once the holder has been silent for the
        # lease's duration (15 s), then reconciles at once.
        leader.proc.kill()
        leader.proc.wait(timeout=20)
        killed = time.time()
        cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("two", namespace)))
        wait_for("the follower to take the Lease", lambda: holder() == follower.identity() or None, timeout=60)
        took = time.time()
        wait_for("the new leader to serve the model applied meanwhile", lambda: ready(cluster, namespace, "two"),
                 timeout=90)
        served = time.time()

        # SIGTERM: the leader finishes what runs and releases the Lease; a waiting replica takes it at its next try.
        standby = start(cluster, namespace, "c")
        replicas.append(standby)
        follower.proc.send_signal(signal.SIGTERM)
        stopped = time.time()
        follower.proc.wait(timeout=40)
        wait_for("the standby to take the released Lease", lambda: holder() == standby.identity() or None,
                 timeout=60)
        handed = time.time()
        assert "released the Lease" in follower.text(), follower.text()[-3000:]
        cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("three", namespace)))
        wait_for("the third leader to serve", lambda: ready(cluster, namespace, "three"), timeout=90)
        lease = admin.get(LEASES, OPERATOR_NAMESPACE, lease_name) or {}
        assert lease["spec"]["leaseTransitions"] >= 2, lease["spec"]
        print(f"\nleader failover: kill -9 -> Lease taken {took - killed:.1f}s, model applied meanwhile Ready "
              f"{served - killed:.1f}s after the kill; SIGTERM -> Lease handed over {handed - stopped:.1f}s")
    finally:
        for r in replicas:
            if r.proc.poll() is None:
                r.proc.terminate()
                try:
                    r.proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    r.proc.kill()
    for r in replicas:
        assert "Traceback" not in r.text(), r.text()[-3000:]
