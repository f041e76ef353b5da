"""The process kubelet: registers a node, keeps its lease, and runs the pods bound to it as local processes.

A watch on pods with spec.nodeName=<node> feeds one worker thread per pod. The worker resolves what the pod needs
from the API (PVC -> PV hostPath, Secrets, ConfigMaps), plans each container (plan.py, pure), runs and probes it
(supervisor.py) and writes the pod's status (podstatus.py, pure). Deletion is graceful: SIGTERM, the grace period,
SIGKILL, then the pod object is removed, as a kubelet does.
"""

from __future__ import annotations

import base64
import json
import logging
import shutil
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines

from processkubelet.images import LocalImage
from processkubelet.network import PodNetwork, node_ip, pod_ips
from processkubelet.plan import (
    LocalRuntime,
    PlanError,
    PodContext,
    ProcessPlan,
    host_path,
    model_repository_arg,
    plan_container,
    with_local_repository,
)
from processkubelet.podstatus import ContainerView, completed, pod_status
from processkubelet.supervisor import Backoff, ContainerRunner, rfc3339

log = logging.getLogger("processkubelet")
Obj = dict[str, Any]

NODE_LABEL = "modelyard.dev/kubelet"
NODE_TAINT = {"key": NODE_LABEL, "value": "process", "effect": "NoSchedule"}
"""Only pods that tolerate it land on a process node, so kwok's fake pods never become real processes."""
ON_PROCESS_NODE: dict[str, Any] = {
    "nodeSelector": {NODE_LABEL: "process"},
    "tolerations": [{"key": NODE_LABEL, "operator": "Exists", "effect": "NoSchedule"}],
}
"""What a pod spec (or a ModelDeployment's serving/conversion section) adds to run on a process node."""
LEASE_SECONDS = 40
SHM_ROOT = Path("/dev/shm/modelyard-process-kubelet")


class Api:
    """The few raw calls the kubelet makes, with plain dicts (the generated client guesses patch types wrongly)."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def call(self, method: str, path: str, body: Any = None, query: list[tuple[str, str]] | None = None,
             content_type: str = "application/json", stream: bool = False) -> Any:
        return self.api.call_api(
            path, method, query_params=query or [], body=body,
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            response_type=None if stream else "object", auth_settings=["BearerToken"],
            _return_http_data_only=True, _preload_content=not stream,
            _request_timeout=None if stream else 30,
        )

    def get(self, path: str) -> Obj | None:
        try:
            result: Obj = self.call("GET", path)
            return result
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch(self, path: str, body: Obj, kind: str = "merge") -> None:
        self.call("PATCH", path, body, content_type=f"application/{kind}-patch+json")


def _decode(data: Mapping[str, str] | None, binary: bool) -> dict[str, str]:
    if binary:
        return {k: base64.b64decode(v).decode(errors="replace") for k, v in (data or {}).items()}
    return dict(data or {})


@dataclass
class Node:
    name: str
    index: int
    gpus: int = 2

    @property
    def ip(self) -> str:
        return node_ip(self.index)

    def manifest(self) -> Obj:
        # A 2-core machine runs a handful of Tritons at once: the pod count bounds it (kwok is for scale).
        capacity = {"cpu": "8", "memory": "32Gi", "pods": "16", "ephemeral-storage": "100Gi"}
        labels = {"kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  NODE_LABEL: "process"}
        if self.gpus:
            # Simulated for scheduling only: the processes run on the CPU.
            capacity["nvidia.com/gpu"] = str(self.gpus)
            labels["modelyard.dev/accelerator"] = "nvidia"
            labels["nvidia.com/gpu.present"] = "true"
        return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": labels},
                "spec": {"taints": [NODE_TAINT]}, "status": {"capacity": capacity, "allocatable": capacity}}

    def status(self) -> Obj:
        now = rfc3339(time.time())
        ok = {"status": "False", "lastHeartbeatTime": now}
        return {"status": {
            **{k: v for k, v in self.manifest()["status"].items()},
            "conditions": [
                {"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "process kubelet is posting "
                 "ready status", "lastHeartbeatTime": now},
                {"type": "MemoryPressure", "reason": "KubeletHasSufficientMemory", **ok},
                {"type": "DiskPressure", "reason": "KubeletHasNoDiskPressure", **ok},
                {"type": "PIDPressure", "reason": "KubeletHasSufficientPID", **ok},
            ],
            "addresses": [{"type": "InternalIP", "address": self.ip}, {"type": "Hostname", "address": self.name}],
            "nodeInfo": {"kubeletVersion": "v1.34.4-process", "containerRuntimeVersion": "process://0.1",
                         "operatingSystem": "linux", "architecture": "amd64", "osImage": "process kubelet",
                         "kernelVersion": "", "kubeProxyVersion": "", "machineID": "", "systemUUID": "",
                         "bootID": ""},
        }}


class IpPool:
    def __init__(self, node_index: int) -> None:
        self.free = pod_ips(node_index)
        self.lock = threading.Lock()

    def take(self) -> str:
        with self.lock:
            return self.free.pop(0)

    def give(self, ip: str) -> None:
        with self.lock:
            self.free.append(ip)


@dataclass
class Kubelet:
    api: Api
    node: Node
    state: Path
    images: Mapping[str, LocalImage]
    runtime: LocalRuntime
    backoff: Backoff = field(default_factory=Backoff)
    workers: dict[str, PodWorker] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.ips = IpPool(self.node.index)
        self.network = PodNetwork(self.node.index)
        self.lock = threading.Lock()

    # --- the node -------------------------------------------------------------------------------------------------
    def register(self) -> None:
        manifest = self.node.manifest()
        try:
            self.api.call("POST", "/api/v1/nodes", {k: v for k, v in manifest.items() if k != "status"})
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            self.api.patch(f"/api/v1/nodes/{self.node.name}", {"metadata": {"labels": manifest["metadata"]["labels"]},
                                                               "spec": manifest["spec"]})
        self.api.patch(f"/api/v1/nodes/{self.node.name}/status", self.node.status())
        self._renew_lease()

    def _renew_lease(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.node.name}"
        now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
        spec = {"holderIdentity": self.node.name, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": now}
        if self.api.get(path) is None:
            node = self.api.get(f"/api/v1/nodes/{self.node.name}") or {}
            owner = [{"apiVersion": "v1", "kind": "Node", "name": self.node.name,
                      "uid": node.get("metadata", {}).get("uid", "")}]
            self.api.call("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                "metadata": {"name": self.node.name, "ownerReferences": owner}, "spec": spec})
        else:
            self.api.patch(path, {"spec": spec})

    def heartbeat_forever(self) -> None:
        beat = 0
        while not self.stopping.wait(10):
            try:
                self._renew_lease()
                beat += 1
                if beat % 3 == 0:
                    self.api.patch(f"/api/v1/nodes/{self.node.name}/status", self.node.status())
            except Exception:  # the next beat tries again
                log.exception("heartbeat failed")

    # --- pods -----------------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Register, then watch this node's pods until stopped."""
        self.register()
        threading.Thread(target=self.heartbeat_forever, name="heartbeat", daemon=True).start()
        selector = f"spec.nodeName={self.node.name}"
        while not self.stopping.is_set():
            try:
                listing = self.api.call("GET", "/api/v1/pods", query=[("fieldSelector", selector)])
                seen = {p["metadata"]["uid"] for p in listing.get("items", [])}
                for pod in listing.get("items", []):
                    self.dispatch(pod)
                with self.lock:
                    gone = [w for uid, w in self.workers.items() if uid not in seen]
                for worker in gone:
                    worker.update(None)
                self._watch(selector, listing["metadata"]["resourceVersion"])
            except Exception as exc:  # relist after any watch failure (410 Gone, a restarted API server)
                if not self.stopping.is_set():
                    log.warning("pod watch ended (%s); listing again", exc)
                    time.sleep(1)

    def _watch(self, selector: str, version: str) -> None:
        resp = self.api.call("GET", "/api/v1/pods", stream=True, query=[
            ("fieldSelector", selector), ("watch", "true"), ("resourceVersion", version),
            ("allowWatchBookmarks", "true"), ("timeoutSeconds", "120")])
        try:
            for line in iter_resp_lines(resp):
                if self.stopping.is_set():
                    return
                event = json.loads(line)
                if event["type"] == "ERROR":
                    raise RuntimeError(event["object"].get("message", "watch error"))
                if event["type"] == "BOOKMARK":
                    continue
                pod = event["object"]
                if event["type"] == "DELETED":
                    with self.lock:
                        worker = self.workers.get(pod["metadata"]["uid"])
                    if worker:
                        worker.update(None)
                else:
                    self.dispatch(pod)
        finally:
            resp.release_conn()

    def dispatch(self, pod: Obj) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
            if worker is None:
                if pod["status"].get("phase") in ("Succeeded", "Failed") and not pod["metadata"].get(
                        "deletionTimestamp"):
                    return  # finished before this kubelet started: nothing to run
                worker = self.workers[uid] = PodWorker(self, pod)
                worker.start()
                return
        worker.update(pod)

    def forget(self, uid: str) -> None:
        with self.lock:
            self.workers.pop(uid, None)

    def stop(self) -> None:
        self.stopping.set()
        with self.lock:
            workers = list(self.workers.values())
        for worker in workers:
            worker.shutdown()
        for worker in workers:
            worker.join(timeout=40)


class PodWorker(threading.Thread):
    def __init__(self, kubelet: Kubelet, pod: Obj) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.kubelet = kubelet
        self.latest: Obj | None = pod
        self.wake = threading.Event()
        self.lock = threading.Lock()
        self.uid: str = meta["uid"]
        self.key = f"{meta['namespace']}/{meta['name']}"
        self.dir = kubelet.state / "pods" / f"{meta['namespace']}_{meta['name']}_{self.uid[:8]}"
        self.runners: dict[str, ContainerRunner] = {}
        self.inits: list[ContainerRunner] = []
        """The init containers, in order: each runs to completion before the next; the containers after all."""
        self.plans: list[ProcessPlan] = []
        """The containers' plans, made with the init containers' and run once those completed (the shadow of a
        model repository an init container fills is made then)."""
        self.prepared = False
        self.images: dict[str, str] = {}
        self.grace = 30.0
        self.policy = "Always"
        self.waiting: dict[str, Obj] = {}
        self.sent: Obj | None = None
        self.halt = False
        self.netns = ""

    def update(self, pod: Obj | None) -> None:
        with self.lock:
            self.latest = pod
        self.wake.set()

    def shutdown(self) -> None:
        self.halt = True
        self.wake.set()

    # --- the loop -------------------------------------------------------------------------------------------------
    def run(self) -> None:
        ip = self.kubelet.ips.take()
        try:
            self.netns = self.kubelet.network.setup(ip)
            self._loop(ip)
        except Exception:
            log.exception("pod %s: worker failed", self.key)
            for runner in self._all():
                runner.stop(0)
        finally:
            self.kubelet.network.teardown(ip)
            self.kubelet.ips.give(ip)
            self.kubelet.forget(self.uid)
            shutil.rmtree(SHM_ROOT / self.uid, ignore_errors=True)
            shutil.rmtree(self.dir / "rootfs", ignore_errors=True)
            shutil.rmtree(self.dir / "volumes", ignore_errors=True)

    def _loop(self, ip: str) -> None:
        started = rfc3339(time.time())
        retry_at, failures = 0.0, 0
        while True:
            with self.lock:
                pod = self.latest
            if pod is None or self.halt:  # gone from the API (force-deleted) or the kubelet stops
                for runner in self._all():
                    runner.stop(0)
                return
            if pod["metadata"].get("deletionTimestamp"):
                self._terminate(pod, ip, started)
                return
            now = time.time()
            if not self.prepared and now >= retry_at:
                try:
                    self._prepare(pod, ip)
                    self.waiting = {}
                except PlanError as exc:
                    failures += 1
                    reason = exc.reason
                    if reason == "ErrImagePull" and failures > 1:
                        reason = "ImagePullBackOff"
                    self.waiting = {c["name"]: {"waiting": {"reason": reason, "message": exc.message}}
                                    for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]}
                    retry_at = now + min(self.kubelet.backoff.cap, self.kubelet.backoff.base * failures)
                    log.info("pod %s: %s: %s", self.key, exc.reason, exc.message)
            for init in self.inits:
                if not completed(self._view(init.plan.container, init)):
                    init.tick(now)
                    break
            else:
                if self.prepared and not self.runners:
                    self.runners = {p.container: self._runner(p, self._localize(p)) for p in self.plans}
            for runner in self.runners.values():
                runner.tick(now)
            self._report(pod, ip, started)
            self.wake.wait(0.25)
            self.wake.clear()

    def _all(self) -> list[ContainerRunner]:
        return [*self.inits, *self.runners.values()]

    def _view(self, name: str, r: ContainerRunner) -> ContainerView:
        return ContainerView(name, r.image, r.state, r.last_state, r.ready, r.started, r.restart_count)

    def _views(self, pod: Obj, init: bool = False) -> list[ContainerView]:
        views = []
        runners = {r.plan.container: r for r in self.inits} if init else self.runners
        # The containers wait for the init containers as a kubelet reports it.
        creating = "PodInitializing" if self.prepared and not init else "ContainerCreating"
        for c in pod["spec"].get("initContainers" if init else "containers", []):
            r = runners.get(c["name"])
            if r is None:
                state = self.waiting.get(c["name"], {"waiting": {"reason": creating}})
                views.append(ContainerView(c["name"], c.get("image", ""), state, {}, False, False, 0))
            else:
                views.append(self._view(c["name"], r))
        return views

    def _report(self, pod: Obj, ip: str, started: str) -> None:
        # Transition times come from what was last sent: the watch may not have brought it back yet.
        basis = {**pod, "status": self.sent} if self.sent else pod
        status = pod_status(basis, self._views(pod), ip, self.kubelet.node.ip, started, rfc3339(time.time()),
                            init=self._views(pod, init=True))
        if status == self.sent:
            return
        meta = pod["metadata"]
        try:
            self.kubelet.api.patch(f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}/status",
                                   {"metadata": {"uid": self.uid}, "status": status}, kind="strategic-merge")
            self.sent = status
        except client.ApiException as exc:
            if exc.status == 404:
                self.update(None)
            else:
                log.warning("pod %s: status update failed: %s %s", self.key, exc.status, exc.reason)

    def _terminate(self, pod: Obj, ip: str, started: str) -> None:
        meta = pod["metadata"]
        grace = float(meta.get("deletionGracePeriodSeconds", pod["spec"].get("terminationGracePeriodSeconds", 30)))
        for runner in self._all():
            runner.kill(grace)
        threads = [threading.Thread(target=r.stop, args=(grace,)) for r in self._all()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._report(pod, ip, started)
        try:
            self.kubelet.api.call("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                  {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}})
        except client.ApiException as exc:
            if exc.status not in (404, 409):
                raise
        log.info("pod %s: stopped and removed", self.key)

    # --- what a pod needs -----------------------------------------------------------------------------------------
    def _volumes(self, pod: Obj) -> dict[str, str]:
        api, ns = self.kubelet.api, pod["metadata"]["namespace"]
        out = {}
        for vol in pod["spec"].get("volumes", []):
            name = vol["name"]
            if "emptyDir" in vol:
                memory = vol["emptyDir"].get("medium") == "Memory"
                path = (SHM_ROOT / self.uid / name) if memory else (self.dir / "volumes" / name)
                path.mkdir(parents=True, exist_ok=True)
                out[name] = str(path)
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                pvc = api.get(f"/api/v1/namespaces/{ns}/persistentvolumeclaims/{claim}")
                if pvc is None or pvc.get("status", {}).get("phase") != "Bound":
                    raise PlanError("ContainerCreating", f'volume {name}: PersistentVolumeClaim "{claim}" '
                                    f"{'not found' if pvc is None else 'is not bound'}")
                pv = api.get(f"/api/v1/persistentvolumes/{pvc['spec']['volumeName']}") or {}
                source = pv.get("spec", {}).get("hostPath") or pv.get("spec", {}).get("local")
                if not source:
                    raise PlanError("ContainerCreating", f"volume {name}: PersistentVolume "
                                    f"{pvc['spec']['volumeName']} is neither hostPath nor local")
                out[name] = source["path"]
            elif "hostPath" in vol:
                out[name] = vol["hostPath"]["path"]
            elif "secret" in vol or "configMap" in vol:
                kind = "secret" if "secret" in vol else "configMap"
                ref = vol[kind]
                obj_name = ref.get("secretName") or ref.get("name")
                plural = "secrets" if kind == "secret" else "configmaps"
                obj = api.get(f"/api/v1/namespaces/{ns}/{plural}/{obj_name}")
                if obj is None and not ref.get("optional"):
                    raise PlanError("ContainerCreating", f'volume {name}: {kind.lower()} "{obj_name}" not found')
                data = _decode((obj or {}).get("data"), kind == "secret")
                path = self.dir / "volumes" / name
                path.mkdir(parents=True, exist_ok=True)
                items = ref.get("items") or [{"key": k, "path": k} for k in data]
                for item in items:
                    if item["key"] in data:
                        (path / item["path"]).parent.mkdir(parents=True, exist_ok=True)
                        (path / item["path"]).write_text(data[item["key"]])
                out[name] = str(path)
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise PlanError("CreateContainerConfigError", f"volume {name}: {kinds} volumes are not supported "
                                "by the process kubelet")
        return out

    def _env_sources(self, pod: Obj) -> dict[tuple[str, str], Mapping[str, str] | None]:
        api, ns = self.kubelet.api, pod["metadata"]["namespace"]
        wanted: set[tuple[str, str]] = set()
        for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]:
            for item in c.get("envFrom", []):
                if "secretRef" in item:
                    wanted.add(("secret", item["secretRef"]["name"]))
                if "configMapRef" in item:
                    wanted.add(("configmap", item["configMapRef"]["name"]))
            for var in c.get("env", []):
                src = var.get("valueFrom", {})
                if "secretKeyRef" in src:
                    wanted.add(("secret", src["secretKeyRef"]["name"]))
                if "configMapKeyRef" in src:
                    wanted.add(("configmap", src["configMapKeyRef"]["name"]))
        out: dict[tuple[str, str], Mapping[str, str] | None] = {}
        for kind, name in sorted(wanted):
            plural = "secrets" if kind == "secret" else "configmaps"
            obj = api.get(f"/api/v1/namespaces/{ns}/{plural}/{name}")
            out[(kind, name)] = None if obj is None else _decode(obj.get("data"), kind == "secret")
        return out

    def _prepare(self, pod: Obj, ip: str) -> None:
        """Plan every container (a plan error fails them all, before anything runs) and make the init containers'
        runners; the containers' runners are made once the init containers completed."""
        ctx = PodContext(pod_ip=ip, host_ip=self.kubelet.node.ip, pod_dir=str(self.dir),
                         volumes=self._volumes(pod), env_sources=self._env_sources(pod), netns=self.netns)
        inits = [plan_container(pod, c, ctx, self.kubelet.images, self.kubelet.runtime)
                 for c in pod["spec"].get("initContainers", [])]
        self.plans = [plan_container(pod, c, ctx, self.kubelet.images, self.kubelet.runtime)
                      for c in pod["spec"]["containers"]]
        self.images = {c["name"]: c.get("image", "")
                       for c in [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]}
        self.grace = float(pod["spec"].get("terminationGracePeriodSeconds", 30))
        self.policy = pod["spec"].get("restartPolicy", "Always")
        # An init container that fails runs again (with back-off) unless the pod's policy is Never.
        self.inits = [self._runner(p, p, "Never" if self.policy == "Never" else "OnFailure") for p in inits]
        self.prepared = True

    def _runner(self, plan: ProcessPlan, run: ProcessPlan, policy: str | None = None) -> ContainerRunner:
        return ContainerRunner(run, self.images[plan.container], policy or self.policy, self.grace,
                               self.kubelet.backoff)

    def _localize(self, plan: ProcessPlan) -> ProcessPlan:
        """Triton: serve a python-backend shadow of a local model repository (the wheel's Triton has no other)."""
        if plan.image_kind != "triton":
            return plan
        repository = model_repository_arg(plan)
        local = host_path(plan, repository) if repository else None
        if not local or not Path(local).is_dir():
            return plan
        from modelyard.convert.shadow import ShadowUnsupported, python_shadow

        shadow = self.dir / "shadow" / plan.container
        try:
            # Links through the path the container sees (/models/...): host paths may be hidden by its volumes.
            python_shadow(Path(local), shadow, link_root=repository)
        except (ShadowUnsupported, OSError, ValueError) as exc:  # Triton itself will refuse it, and say why
            Path(plan.log_file).parent.mkdir(parents=True, exist_ok=True)
            with open(plan.log_file, "a") as fh:
                fh.write(f"==> process kubelet: serving {repository} as it is: {exc}\n")
            return plan
        return with_local_repository(plan, str(shadow))
