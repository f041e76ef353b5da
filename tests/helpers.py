"""Shared test helpers: manifests, waiting, audit-log write counting."""

from __future__ import annotations

import copy
import http.server
import json
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
def serving_directory(directory: Path) -> Iterator[str]:
    """A plain HTTP server for `directory` on loopback while the block runs; yields its base URL."""
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
