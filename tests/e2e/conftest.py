"""The e2e tier runs the operator itself (`python -m modelyard`) as user modelyard-operator, with the chart's RBAC."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import LocalCluster, free_port


class OperatorProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, resync_seconds: float) -> None:
        self.proc, self.log, self.resync_seconds = proc, log, resync_seconds

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def assert_running(self) -> None:
        assert self.proc.poll() is None, f"the operator exited with {self.proc.returncode}:\n{self.log_tail()}"


@pytest.fixture(scope="package")
def operator_process(cluster: LocalCluster) -> Iterator[OperatorProcess]:
    log = cluster.workdir / "logs" / "operator.log"
    resync = 2.0
    env = {
        **os.environ,
        "KUBECONFIG": str(cluster.operator_kubeconfig),
        "MODELYARD_RESYNC_SECONDS": str(resync),
        "MODELYARD_METRICS_PORT": str(free_port()),
        # Canary analysis reads the local Prometheus (it scrapes Traefik); a promoted canary's predecessor drains 5 s.
        "MODELYARD_PROMETHEUS_URL": cluster.prometheus_url,
        "MODELYARD_DRAIN_SECONDS": "5",
    }
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "modelyard", "--liveness=", "--verbose"], env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )
    op = OperatorProcess(proc, log, resync)
    try:
        yield op
        op.assert_running()
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line]
        assert not errors, f"the operator logged tracebacks:\n{op.log_tail()}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
