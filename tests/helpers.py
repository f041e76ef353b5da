"""Shared test helpers: manifests, waiting, audit-log write counting."""

from __future__ import annotations

import contextlib
import copy
import http.server
import json
import os
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from localcluster import WRITE_VERBS, LocalCluster

T = TypeVar("T")

ARGOCD_HEALTH_LUA = Path(__file__).resolve().parents[1] / "charts" / "modelyard" / "files" / "argocd-health.lua"

Verdict = tuple[tuple[str, str], tuple[str, str]]


def gitops_verdicts(check: Path, body: dict[str, Any]) -> Verdict:
    """(kstatus status, message), (Argo CD health status, message) of one object as the API server returns it,
    computed by hack/gitops's gitops-check: Flux's kstatus library, and the chart's health.lua run as Argo CD runs
    it."""
    out = []
    for args in (["kstatus"], ["argocd-health", str(ARGOCD_HEALTH_LUA)]):
        proc = subprocess.run([str(check), *args], input=json.dumps(body), capture_output=True, text=True,
                              check=False)
        assert proc.returncode == 0, proc.stderr
        line = json.loads(proc.stdout)
        out.append((line["status"], line["message"]))
    return out[0], out[1]


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90, interval: float = 0.5) -> T:
    """Poll `probe` until it returns something truthy; fail with `what` and the last value otherwise."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last seen: {last!r}")


def model_deployment(name: str, namespace: str, **serving: Any) -> dict[str, Any]:
    """A valid ModelDeployment manifest; keyword arguments override spec.serving fields."""
    base: dict[str, Any] = {
        "apiVersion": "modelyard.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "model": {"uri": "s3://models/resnet", "format": "onnx"},
            "serving": {
                "gpus": 1,
                "replicas": 1,
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
            },
        },
    }
    out = copy.deepcopy(base)
    out["spec"]["serving"].update(serving)
    return out


def operator_writes(cluster: LocalCluster, since: int, user: str = "modelyard-operator") -> list[str]:
    """Write requests `user` made after audit event number `since`, as 'VERB /path' lines."""
    events = cluster.audit_events()[since:]
    return [
        f"{e['verb']} {e['requestURI']}"
        for e in events
        if e.get("user", {}).get("username") == user and e.get("verb") in WRITE_VERBS
    ]


def ready_condition(body: dict[str, Any]) -> dict[str, Any] | None:
    conditions: list[dict[str, Any]] = body.get("status", {}).get("conditions", [])
    return next((c for c in conditions if c.get("type") == "Ready"), None)


def bound_claim(cluster: LocalCluster, namespace: str, claim: str, path: Path, access_mode: str) -> None:
    """PVC `claim` in `namespace`, bound to a hostPath PV on `path` (a directory the test fills)."""
    pv_name = f"{claim}-{namespace}"
    pv = {"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": pv_name},
          "spec": {"capacity": {"storage": "1Gi"}, "accessModes": [access_mode], "storageClassName": "",
                   "hostPath": {"path": str(path)}, "claimRef": {"namespace": namespace, "name": claim}}}
    pvc = {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": claim, "namespace": namespace},
           "spec": {"accessModes": [access_mode], "storageClassName": "", "volumeName": pv_name,
                    "resources": {"requests": {"storage": "1Gi"}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [pv, pvc]}))
    wait_for(f"PVC {claim} to bind", lambda: cluster.kubectl(
        "get", "pvc", "-n", namespace, claim, "-o", "jsonpath={.status.phase}").stdout == "Bound")


@contextmanager
def serving(handler: Callable[..., http.server.BaseHTTPRequestHandler]) -> Iterator[str]:
    """An HTTP server with `handler` on loopback while the block runs; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


def serving_directory(directory: Path) -> contextlib.AbstractContextManager[str]:
    """A plain HTTP server for `directory` on loopback while the block runs; yields its base URL."""
    return serving(partial(http.server.SimpleHTTPRequestHandler, directory=str(directory)))


@contextmanager
def operator_watching(kubeconfig: Path, namespace: str, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The operator process (python -m modelyard) as the user of `kubeconfig`, watching one namespace and resyncing
    every second, while the block runs; its output goes to `log`."""
    import sys

    from localcluster import free_port

    env = {**os.environ, "KUBECONFIG": str(kubeconfig), "MODELYARD_RESYNC_SECONDS": "1",
           "MODELYARD_METRICS_PORT": str(free_port())}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "modelyard", "--liveness=", f"--namespace={namespace}"],
                                env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@contextmanager
def moto_s3(log_dir: Path, listen: str = "127.0.0.1") -> Iterator[str]:
    """A real S3-compatible server process (moto's server mode) on loopback (or on `listen`, e.g. 0.0.0.0 for the
    process kubelet's pods, which reach the host at its node IP) while the block runs, with the AWS_* variables of
    this process pointing at it; yields its loopback endpoint. Not a mock: boto3 talks HTTP to it."""
    import shutil
    import sys
    import urllib.request

    from localcluster import free_port

    exe = shutil.which("moto_server", path=str(Path(sys.executable).parent))
    assert exe, "moto_server is missing: the test extra installs moto[server]"
    port = free_port()
    log = log_dir / "moto.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([exe, "-H", listen, "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1)
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        env = {"AWS_ACCESS_KEY_ID": "modelyard", "AWS_SECRET_ACCESS_KEY": MOTO_SECRET,
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}
        old = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            yield endpoint
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=10)


MOTO_SECRET = "s3cr3t-never-in-logs"
"""The secret key moto_s3 hands to this process (a test greps its outputs for it)."""
