"""Scale benchmark: N ModelDeployments on one operator, against the floor Kubernetes itself sets, in one run.

On the local control plane with kwok nodes (no process kubelet, no gateway), for each N and each load condition
(quiet; one busy process per core beside everything, for the whole of that condition's runs):
- floor: one client creates N plain Deployments of the shape the operator renders (kube-controller-manager, the
  scheduler and kwok bring them to available); the time from the first create to all available;
- operator: a fresh operator process (watching the run's namespace) and one client creating N ModelDeployments;
  the time from the first create to all Ready (observedGeneration current), as a ratio to the floor;
- requests: the operator's API requests from the audit log (watches aside), per reconcile (the operator's
  modelyard_reconciles_total), while the models came up;
- an unchanged resync: the operator's reads and writes over a window with at least one resync in it;
- update latency: a spec change (replicas 1 -> 2) on models picked across the N, time until the status reports the
  new generation, while all N exist;
- the operator's RSS (peak, VmHWM) at the end.
Each target is printed with whether it is met. Times are ratios against the floor measured in the same run and
condition: these machines are noisy.

Targets (issue 11): time to Ready within 1.2x of the floor at N = 1,000; zero reads and zero writes during an
unchanged resync; update latency under 2 s at N = 1,000; RSS under 300 MiB.

Needs the local cluster's builds (make control-plane) and the venv.
Usage: .venv/bin/python bench/scale.py [--sizes 100,300,1000] [--loads quiet,busy] [--resync 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "hack"), str(ROOT / "tests")]  # as pytest orders them (pyproject.toml)

from localcluster import LocalCluster, free_port  # noqa: E402
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, Kube, load_api_client  # noqa: E402

WRITES = {"create", "update", "patch", "delete", "deletecollection"}
READS = {"get", "list"}
OPERATOR_USER = "modelyard-operator"


def manifest(name: str, namespace: str) -> dict[str, Any]:
    return {"apiVersion": "modelyard.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"uri": "s3://models/resnet", "format": "onnx"}, "serving": {"gpus": 0, "replicas": 1}}}


def floor_deployment(name: str, namespace: str) -> dict[str, Any]:
    """The Deployment the operator renders for manifest(name), without the owner (nothing else differs)."""
    from modelyard.api.names import revision_of
    from modelyard.api.v1alpha1 import ModelDeployment
    from modelyard.render.triton import render_triton_deployment

    body = manifest(name, namespace)
    body["metadata"]["uid"] = str(uuid.UUID(int=0))
    md = ModelDeployment.model_validate(body)
    out = render_triton_deployment(md, revision_of(md.spec), None)
    out["metadata"].pop("ownerReferences", None)
    return out


class Audit:
    """The API server's audit log, read from where the last read stopped."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0

    def mark(self) -> None:
        self.offset = self.path.stat().st_size if self.path.exists() else 0

    def operator_requests(self, namespace: str) -> tuple[int, int, list[str]]:
        """(reads, writes, a sample) the operator made in `namespace` since the mark (watches are not requests
        of a reconcile: they are the caches' standing connections)."""
        reads = writes = 0
        sample: list[str] = []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            for line in fh:
                try:
                    e = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if e.get("user", {}).get("username") != OPERATOR_USER:
                    continue
                uri = e.get("requestURI", "")
                if f"/namespaces/{namespace}/" not in uri and not uri.endswith(f"/namespaces/{namespace}"):
                    continue
                verb = e.get("verb")
                if verb in READS:
                    reads += 1
                elif verb in WRITES:
                    writes += 1
                else:
                    continue
                if len(sample) < 8:
                    sample.append(f"{verb} {uri}")
        return reads, writes, sample


@dataclass
class Result:
    n: int
    load: str
    floor_s: float = 0.0
    operator_s: float = 0.0
    reconciles: float = 0.0
    reads: int = 0
    writes: int = 0
    resync_reads: int = -1
    resync_writes: int = -1
    resync_reconciles: float = 0.0
    resync_sample: list[str] = field(default_factory=list)
    updates: list[float] = field(default_factory=list)
    rss_mib: float = 0.0

    @property
    def ratio(self) -> float:
        return self.operator_s / self.floor_s if self.floor_s else float("inf")


def wait_until(what: str, done: Callable[[], bool], timeout: float, interval: float = 1.0) -> float:
    start = time.monotonic()
    while not done():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"{what}: not after {timeout:.0f}s")
        time.sleep(interval)
    return time.monotonic() - start


def available_deployments(admin: Kube, namespace: str) -> int:
    return sum(1 for d in admin.list_in(DEPLOYMENTS, [namespace])
               if d.get("status", {}).get("availableReplicas", 0) >= d["spec"].get("replicas", 1))


def ready_models(admin: Kube, namespace: str) -> int:
    count = 0
    for md in admin.list_in(MODEL_DEPLOYMENTS, [namespace]):
        status = md.get("status", {})
        ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
        count += ready and status.get("observedGeneration") == md["metadata"].get("generation")
    return count


def delete_namespace(cluster: LocalCluster, namespace: str) -> None:
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")
    wait_until(f"namespace {namespace} to go", lambda: cluster.kubectl(
        "get", "namespace", namespace, check=False).returncode != 0, timeout=900, interval=2)


def measure_floor(cluster: LocalCluster, admin: Kube, n: int) -> float:
    namespace = f"floor-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    try:
        start = time.monotonic()
        for i in range(n):
            admin.create(DEPLOYMENTS, namespace, floor_deployment(f"m{i:04d}", namespace))
        wait_until("the floor's Deployments to be available", lambda: available_deployments(admin, namespace) >= n,
                   timeout=3600, interval=2)
        return time.monotonic() - start
    finally:
        delete_namespace(cluster, namespace)


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(f"{name} "):
                return float(line.split()[1])
    raise RuntimeError(f"the operator exports no {name}")


def rss_peak_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def merge_patch(admin: Kube, namespace: str, name: str, body: dict[str, Any]) -> None:
    admin.api.call_api(MODEL_DEPLOYMENTS.path(namespace, name), "PATCH", body=body,
                       header_params={"Content-Type": "application/merge-patch+json"},
                       auth_settings=["BearerToken"], _return_http_data_only=True)


def measure_operator(cluster: LocalCluster, admin: Kube, n: int, result: Result, resync: float, work: Path) -> None:
    namespace = f"scale-{uuid.uuid4().hex[:6]}"
    cluster.kubectl("create", "namespace", namespace)
    port = free_port()
    env = {**os.environ, "KUBECONFIG": str(cluster.operator_kubeconfig), "MODELYARD_RESYNC_SECONDS": str(resync),
           "MODELYARD_METRICS_PORT": str(port)}
    log = open(work / f"operator-{n}-{result.load}.log", "wb")  # noqa: SIM115 - for the operator's life
    audit = Audit(cluster.audit_log)
    audit.mark()
    operator = subprocess.Popen([sys.executable, "-m", "modelyard", "--liveness=", f"--namespace={namespace}"],
                                env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until("the operator's metrics", lambda: _answers(port), timeout=60, interval=0.5)
        start = time.monotonic()
        for i in range(n):
            admin.create(MODEL_DEPLOYMENTS, namespace, manifest(f"m{i:04d}", namespace))
        wait_until("the models to be Ready", lambda: ready_models(admin, namespace) >= n, timeout=3600,
                   interval=2)
        result.operator_s = time.monotonic() - start
        result.reconciles = metric(port, "modelyard_reconciles_total")
        result.reads, result.writes, _ = audit.operator_requests(namespace)

        time.sleep(min(resync, 10))  # the last status writes and their watch events settle
        audit.mark()
        before = metric(port, "modelyard_reconciles_total")
        time.sleep(resync * 1.5)  # at least one resync of all N
        result.resync_reconciles = metric(port, "modelyard_reconciles_total") - before
        result.resync_reads, result.resync_writes, result.resync_sample = audit.operator_requests(namespace)

        for i in range(5):
            name = f"m{(i * 7919) % n:04d}"
            merge_patch(admin, namespace, name, {"spec": {"serving": {"replicas": 2}}})
            generation = (admin.get(MODEL_DEPLOYMENTS, namespace, name) or {})["metadata"]["generation"]
            result.updates.append(wait_until(f"{name}'s update to be reported", lambda name=name, g=generation: (
                (admin.get(MODEL_DEPLOYMENTS, namespace, name) or {}).get("status", {}).get("observedGeneration")
                == g), timeout=600, interval=0.05))
            time.sleep(resync / 4)  # the next one lands elsewhere in the resync's cycle
        result.rss_mib = rss_peak_mib(operator.pid)
        if operator.poll() is not None:
            raise RuntimeError(f"the operator exited with {operator.returncode}")
    finally:
        operator.terminate()
        try:
            operator.wait(timeout=30)
        except subprocess.TimeoutExpired:
            operator.kill()
        log.close()
        delete_namespace(cluster, namespace)


def _answers(port: int) -> bool:
    try:
        metric(port, "modelyard_reconciles_total")
    except (OSError, RuntimeError):
        return False
    return True


@contextmanager
def cpu_load(busy: bool) -> Iterator[None]:
    """One busy process per core for as long as the block runs (nothing when not `busy`)."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)] \
        if busy else []
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def report(results: list[Result]) -> int:
    print()
    print(f"{'N':>5} {'load':>5} {'floor s':>8} {'operator s':>10} {'ratio':>6} {'reconciles/model':>16} "
          f"{'reads/rec':>9} {'writes/rec':>10} {'resync r/w':>10} {'update s (median, max)':>22} {'RSS MiB':>8}")
    for r in results:
        per = r.reconciles or 1
        updates = f"{statistics.median(r.updates):.2f}, {max(r.updates):.2f}" if r.updates else "-"
        print(f"{r.n:>5} {r.load:>5} {r.floor_s:>8.1f} {r.operator_s:>10.1f} {r.ratio:>6.2f} "
              f"{r.reconciles / r.n:>16.1f} {r.reads / per:>9.2f} {r.writes / per:>10.2f} "
              f"{r.resync_reads:>4}/{r.resync_writes:<5} {updates:>22} {r.rss_mib:>8.0f}")
    print()
    failed = 0
    for r in results:
        checks = [
            ("resync of unchanged models: zero reads and zero writes", r.resync_reads == 0 and r.resync_writes == 0,
             f"{r.resync_reads} reads, {r.resync_writes} writes over {r.resync_reconciles:.0f} reconciles"
             + (f" ({'; '.join(r.resync_sample)})" if r.resync_sample else "")),
            ("RSS under 300 MiB", r.rss_mib < 300, f"{r.rss_mib:.0f} MiB"),
        ]
        if r.n >= 1000:
            checks += [
                ("time to Ready within 1.2x of the floor", r.ratio <= 1.2, f"{r.ratio:.2f}x"),
                ("update latency under 2 s", bool(r.updates) and max(r.updates) < 2.0,
                 f"max {max(r.updates):.2f}s" if r.updates else "not measured"),
            ]
        for what, met, numbers in checks:
            failed += not met
            print(f"N={r.n:<5} {r.load:<5} {'MET    ' if met else 'NOT MET'} {what}: {numbers}")
    return 1 if failed else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="100,300,1000")
    parser.add_argument("--loads", default="quiet,busy")
    parser.add_argument("--resync", type=float, default=20.0, help="the operator's resync period, seconds")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    loads = args.loads.split(",")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="modelyard-scale-") as tmp:
        work = Path(tmp)
        # 110 pods a kwok node: room for the largest N, and the floor's and the operator's pods never coexist.
        nodes = max(sizes) // 100 + 2
        cluster = LocalCluster(work / "cluster", gpu_nodes=0, cpu_nodes=nodes, process_nodes=0, with_gateway=False,
                               with_prometheus=False, with_keda=False).start()
        try:
            cluster.install_modelyard()
            admin = Kube(load_api_client(str(cluster.kubeconfig)), field_manager="modelyard-bench")
            for load in loads:
                with cpu_load(load == "busy"):
                    for n in sizes:
                        result = Result(n, load)
                        t0 = time.monotonic()
                        result.floor_s = measure_floor(cluster, admin, n)
                        measure_operator(cluster, admin, n, result, args.resync, work)
                        results.append(result)
                        print(f"N={n} {load}: floor {result.floor_s:.1f}s, operator {result.operator_s:.1f}s "
                              f"({result.ratio:.2f}x); resync {result.resync_reads} reads "
                              f"{result.resync_writes} writes; updates {[round(u, 2) for u in result.updates]}; "
                              f"RSS {result.rss_mib:.0f} MiB; this size took {time.monotonic() - t0:.0f}s",
                              flush=True)
        finally:
            cluster.stop()
    return report(results)


if __name__ == "__main__":
    sys.exit(main())
