"""The process kubelet through the real API server: pods on its node run, probe, report, and go away gracefully."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

import pytest

from helpers import wait_for
from localcluster import LocalCluster
from modelyard.kube.client import PODS, Kube
from processkubelet.kubelet import ON_PROCESS_NODE

pytestmark = pytest.mark.integration

def pod(name: str, namespace: str, container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace,
                                                          "labels": {"app": name}},
            "spec": {**ON_PROCESS_NODE, "containers": [{"name": "main", **container}], **spec}}


def status_of(admin: Kube, namespace: str, name: str) -> dict[str, Any]:
    body = admin.get(PODS, namespace, name) or {}
    status: dict[str, Any] = body.get("status", {})
    return status


def container_state(admin: Kube, namespace: str, name: str) -> dict[str, Any]:
    statuses = status_of(admin, namespace, name).get("containerStatuses") or [{}]
    state: dict[str, Any] = statuses[0].get("state", {})
    return state


def test_a_served_pod_is_ready_on_a_loopback_ip_behind_its_service_and_deleted_gracefully(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    manifest = pod("web", namespace, {
        "image": "modelyard.local/testbox:1", "args": ["serve", "$(POD_IP)", "8080"],
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "ports": [{"name": "http", "containerPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}},
        terminationGracePeriodSeconds=5)
    service = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web", "namespace": namespace},
               "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": "http"}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                          "items": [manifest, service]}))
    try:
        status = wait_for("the pod to be Ready", lambda: (s := status_of(admin, namespace, "web")) and any(
            c["type"] == "Ready" and c["status"] == "True" for c in s.get("conditions", [])) and s, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{cluster.container_logs(namespace)}\n"
                             f"{cluster.log_tail('process-kubelet-0')}") from None
    ip = status["podIP"]
    assert ip.startswith("198.18.") and status["phase"] == "Running"
    with urllib.request.urlopen(f"http://{ip}:8080/live", timeout=5) as resp:
        assert resp.status == 200
    # The real endpointslice controller points the Service at the process's socket.
    slices = wait_for("an EndpointSlice with the pod IP", lambda: [
        s for s in json.loads(cluster.kubectl("get", "endpointslices", "-n", namespace, "-l",
                                              "kubernetes.io/service-name=web", "-o", "json").stdout)["items"]
        if any(ip in e["addresses"] and e["conditions"].get("ready") for e in s.get("endpoints") or [])])
    assert slices[0]["ports"][0]["port"] == 8080

    cluster.kubectl("delete", "pod", "-n", namespace, "web", "--wait=false")
    wait_for("the kubelet to stop the process and remove the pod", lambda: admin.get(PODS, namespace, "web") is None,
             timeout=30)
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{ip}:8080/live", timeout=2)


def test_a_job_pod_reports_its_exit_code_and_termination_message(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod(
        "once", namespace, {"image": "modelyard.local/testbox:1", "args": ["exit", "3", '{"ok":false}']},
        restartPolicy="Never")))
    state = wait_for("the container to terminate", lambda: container_state(admin, namespace, "once").get("terminated"))
    assert (state["exitCode"], state["reason"], state["message"]) == (3, "Error", '{"ok":false}')
    assert status_of(admin, namespace, "once")["phase"] == "Failed"


def test_init_containers_run_in_order_to_completion_before_the_containers(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    box = "modelyard.local/testbox:1"
    shared = [{"name": "shared", "mountPath": "/shared"}]
    # The second init container needs the first's file; the container is Ready only once the second's is there.
    ok = pod("inits", namespace, {
        "image": box, "args": ["serve", "$(POD_IP)", "8080", "--ready-file", "/shared/second"], "volumeMounts": shared,
        "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}},
        initContainers=[
            {"name": "first", "image": box, "args": ["put", "/shared/first", "1"], "volumeMounts": shared},
            {"name": "second", "image": "modelyard.local/testbox:1", "command": ["python", "-c",
             "import shutil; shutil.copy('/shared/first', '/shared/second')"], "volumeMounts": shared}],
        volumes=[{"name": "shared", "emptyDir": {}}])
    refused = pod("refused", namespace, {"image": box, "args": ["sleep"]}, initContainers=[
        {"name": "weights", "image": box, "args": ["exit", "1", '{"ok":false,"reason":"WeightsUnverified"}']}])
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": [ok, refused]}))
    status = wait_for("the pod after its init containers to be Ready", lambda: (s := status_of(
        admin, namespace, "inits")) and any(c["type"] == "Ready" and c["status"] == "True"
                                            for c in s.get("conditions", [])) and s, timeout=60)
    inits = {c["name"]: c["state"] for c in status["initContainerStatuses"]}
    assert inits["first"]["terminated"]["exitCode"] == 0 == inits["second"]["terminated"]["exitCode"]
    assert inits["first"]["terminated"]["finishedAt"] <= inits["second"]["terminated"]["startedAt"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Initialized"] == "True"

    # A failing init container runs again with back-off; the container never starts; the pod stays Pending.
    status = wait_for("the failed init container to be reported", lambda: (s := status_of(
        admin, namespace, "refused")) and any(
        (c.get("lastState") or c.get("state", {})).get("terminated", {}).get("exitCode") == 1
        for c in s.get("initContainerStatuses", [])) and s, timeout=60)
    (weights,) = status["initContainerStatuses"]
    ended = weights.get("lastState", {}).get("terminated") or weights["state"]["terminated"]
    assert ended["message"] == '{"ok":false,"reason":"WeightsUnverified"}'
    assert status["phase"] == "Pending"
    assert status["containerStatuses"][0]["state"] == {"waiting": {"reason": "PodInitializing"}}
    assert {c["type"]: c["status"] for c in status["conditions"]}["Initialized"] == "False"


def test_an_unmapped_image_and_a_missing_secret_are_reported_as_a_kubelet_would(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    items = [pod("nginx", namespace, {"image": "docker.io/library/nginx:1.27"}),
             pod("nosecret", namespace, {"image": "modelyard.local/testbox:1", "args": ["sleep"],
                                         "envFrom": [{"secretRef": {"name": "absent"}}]})]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    waiting = wait_for("ErrImagePull", lambda: container_state(admin, namespace, "nginx").get("waiting", {}).get(
        "reason") in ("ErrImagePull", "ImagePullBackOff") and container_state(admin, namespace, "nginx")["waiting"])
    assert "docker.io/library/nginx:1.27" in waiting["message"]
    assert "hack/processkubelet/images.py" in waiting["message"]
    waiting = wait_for("CreateContainerConfigError", lambda: container_state(admin, namespace, "nosecret").get(
        "waiting", {}).get("reason") == "CreateContainerConfigError" and container_state(
        admin, namespace, "nosecret")["waiting"])
    assert waiting["message"] == 'secret "absent" not found'
    # The Secret appears: the kubelet's next try starts the container.
    cluster.kubectl("create", "secret", "generic", "absent", "-n", namespace, "--from-literal=K=v")
    wait_for("the container to run", lambda: "running" in container_state(admin, namespace, "nosecret"), timeout=60)
