"""The e2e tier runs the operator itself (`python -m modelyard`) as user modelyard-operator, with the chart's RBAC."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from localcluster import LocalCluster, free_port


def _start(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "modelyard", "--liveness=", "--verbose"], env=env, stdout=out,
                                stderr=subprocess.STDOUT)


class OperatorProcess:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, resync_seconds: float,
                 env: dict[str, str]) -> None:
        self.proc, self.log, self.resync_seconds, self.env = proc, log, resync_seconds, env

    def kill(self) -> None:
        """kill -9: no shutdown handler runs, as when a node dies under the operator."""
        self.proc.kill()
        self.proc.wait(timeout=20)

    def start(self) -> None:
        assert self.proc.poll() is not None, "the operator is still running"
        self.proc = _start(self.env, self.log)

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    def metric(self, name: str) -> float:
        """The value of one unlabelled series of the operator's /metrics."""
        url = f"http://127.0.0.1:{self.env['MODELYARD_METRICS_PORT']}/metrics"
        with urllib.request.urlopen(url, timeout=10) as response:
            for line in response.read().decode().splitlines():
                if line.startswith(f"{name} "):
                    return float(line.split()[1])
        raise AssertionError(f"the operator exports no {name}")

    def work_state(self) -> str:
        """The work queue's gauges and every thread's stack (SIGUSR1: faulthandler writes them to the log): whether
        a model waits queued with no worker told, or a reconcile hangs, and where."""
        gauges: dict[str, float | str]
        try:
            gauges = {name: self.metric(name) for name in ("modelyard_queue_depth", "modelyard_reconciles_in_flight",
                                                           "modelyard_requeues_pending")}
        except (OSError, AssertionError) as exc:
            gauges = {"unreadable": str(exc)}
        if self.proc.poll() is not None:
            return f"{gauges} (the operator exited with {self.proc.returncode})"
        if "unreadable" in gauges:  # still starting: SIGUSR1 before main() registers the dump would end the process
            return f"{gauges} (no thread dump: the operator serves no metrics yet)"
        before = self.log.stat().st_size
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and self.log.stat().st_size == before:
            time.sleep(0.1)
        time.sleep(0.3)  # the dump is written in one go, but not in one write
        with open(self.log, "rb") as f:
            f.seek(before)
            stacks = f.read().decode(errors="replace")
        # The dump comes first, whole: the log lines written after it would push its first threads (the
        # informers') out of a tail, as they did when two workers' deep stacks made the dump long.
        return f"{gauges}\nthreads:\n{stacks[:60000]}"

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
    log.write_bytes(b"")
    op = OperatorProcess(_start(env, log), log, resync, env)
    try:
        yield op
        op.assert_running()
        errors = [line for line in log.read_text().splitlines() if "Traceback" in line]
        assert not errors, f"the operator logged tracebacks:\n{op.log_tail()}"
    finally:
        op.proc.terminate()
        try:
            op.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            op.proc.kill()
