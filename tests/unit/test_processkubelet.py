"""The process kubelet's pure parts: pod spec -> process plan (golden files), container states -> pod status."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from modelyard import yamlio
from modelyard.cli import render_manifest
from processkubelet.images import ROOT, local_key, repository_of, table
from processkubelet.plan import (
    LOCAL_REPOSITORY,
    LocalRuntime,
    PlanError,
    PodContext,
    expand,
    host_path,
    model_repository_arg,
    plan_container,
    with_local_repository,
)
from processkubelet.podstatus import ContainerView, phase, pod_status
from processkubelet.supervisor import Backoff

from .test_render_golden import _check

RUNTIME = LocalRuntime(base_path="/venv/bin:/usr/bin", triton_backends="/state/triton-backends",
                       image_paths=("/repo", "/venv", "/state/triton-backends"),
                       triton_env={"LD_LIBRARY_PATH": "/wheel/libs", "PATH": "/venv/bin:/usr/bin"})


def _pod(template: dict[str, Any], name: str = "pod-0") -> dict[str, Any]:
    meta = {"name": name, "namespace": "team", "uid": "0000-pod", "labels": template["metadata"]["labels"]}
    return {"metadata": meta,
            "spec": {**template["spec"], "nodeName": "proc-node-0"}}


Sources = dict[tuple[str, str], dict[str, str] | None]


def _context(volumes: dict[str, str], sources: Sources | None = None) -> PodContext:
    return PodContext(pod_ip="198.18.0.7", host_ip="198.18.0.1", pod_dir="/state/pods/team_pod-0_0000", volumes=volumes,
                      env_sources=sources or {})


def _golden(name: str, plan: Any) -> None:
    text = yamlio.dump(dataclasses.asdict(plan))
    # Machine paths out: the golden file says what is run, not where this checkout lives.
    triton = table()["nvcr.io/nvidia/tritonserver"].commands["tritonserver"]
    for real, placeholder in ((triton, "<tritonserver>"), (sys.executable, "<python>"), (str(ROOT), "<repo>")):
        text = text.replace(real, placeholder)
    _check(f"processkubelet/{name}", text)


def _conversion_children() -> list[dict[str, Any]]:
    doc = yaml.safe_load((ROOT / "examples" / "conversion" / "resnet-int8.yaml").read_text())
    return render_manifest(doc)


def test_the_converter_job_runs_the_converter_entrypoint_with_its_volumes_and_termination_log() -> None:
    job = _conversion_children()[0]
    pod = _pod(job["spec"]["template"])
    volumes = {"store": "/srv/pv/model-store", "source": "/srv/pv/model-store", "tmp": "/state/pods/x/volumes/tmp"}
    plan = plan_container(pod, pod["spec"]["containers"][0], _context(volumes), table(), RUNTIME)
    _golden("converter-job.yaml", plan)
    assert plan.argv[:2] == (sys.executable, str(ROOT / "runtime" / "converter" / "entrypoint.py"))
    assert plan.read_only_root and plan.termination_policy == "FallbackToLogsOnError"
    assert plan.env["HOME"] == "/tmp"


def test_the_triton_deployment_runs_the_wheels_tritonserver_on_the_pod_ip() -> None:
    deployment = _conversion_children()[1]
    pod = _pod(deployment["spec"]["template"])
    volumes = {"model-repository": "/srv/pv/model-store", "dshm": "/dev/shm/k/dshm", "tmp": "/state/v/tmp"}
    plan = plan_container(pod, pod["spec"]["containers"][0], _context(volumes), table(), RUNTIME)
    _golden("triton-deployment.yaml", plan)
    assert "--http-address=198.18.0.7" in plan.argv and "--metrics-address=198.18.0.7" in plan.argv
    assert {(p.kind, p.host, p.port, p.path) for p in plan.probes} == {
        ("startup", "198.18.0.7", 8000, "/v2/health/ready"), ("readiness", "198.18.0.7", 8000, "/v2/health/ready"),
        ("liveness", "198.18.0.7", 8000, "/v2/health/live")}
    repository = model_repository_arg(plan)
    assert repository == "/models/converted/<key>"
    assert host_path(plan, repository) == "/srv/pv/model-store/converted/<key>"
    shadowed = with_local_repository(plan, "/state/shadow")
    assert f"--model-repository={LOCAL_REPOSITORY}" in shadowed.argv
    assert shadowed.mounts[-1].source == "/state/shadow" and shadowed.mounts[-1].read_only


def test_an_image_without_a_local_program_fails_like_a_pull_and_names_the_table() -> None:
    nginx = {"name": "c", "image": "docker.io/library/nginx:1"}
    pod = _pod({"metadata": {"labels": {}}, "spec": {"containers": [nginx]}})
    with pytest.raises(PlanError) as err:
        plan_container(pod, pod["spec"]["containers"][0], _context({}), table(), RUNTIME)
    assert err.value.reason == "ErrImagePull"
    assert "docker.io/library/nginx:1" in err.value.message and "hack/processkubelet/images.py" in err.value.message


def test_environment_order_expansion_and_missing_sources() -> None:
    container = {"name": "c", "image": "modelyard.local/testbox", "envFrom": [
        {"secretRef": {"name": "creds"}, "prefix": "STORE_"}, {"configMapRef": {"name": "absent", "optional": True}}],
        "env": [{"name": "A", "value": "x"}, {"name": "B", "value": "$(A)-$(STORE_KEY)-$$(A)-$(UNDEFINED)"},
                {"name": "NS", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                {"name": "K", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "KEY"}}}]}
    pod = _pod({"metadata": {"labels": {}}, "spec": {"containers": [container]}})
    ctx = _context({}, {("secret", "creds"): {"KEY": "s3cr3t"}, ("configmap", "absent"): None})
    env = plan_container(pod, container, ctx, table(), RUNTIME).env
    assert (env["STORE_KEY"], env["B"]) == ("s3cr3t", "x-s3cr3t-$(A)-$(UNDEFINED)")
    assert (env["NS"], env["K"]) == ("team", "s3cr3t")
    with pytest.raises(PlanError, match='secret "creds" not found') as err:
        plan_container(pod, container, _context({}, {("secret", "creds"): None}), table(), RUNTIME)
    assert err.value.reason == "CreateContainerConfigError"
    assert expand("$(A)$$", {"A": "1"}) == "1$"


@pytest.mark.parametrize(("image", "repository"), [
    ("nvcr.io/nvidia/tritonserver:24.10-py3", "nvcr.io/nvidia/tritonserver"),
    ("registry:5000/team/img", "registry:5000/team/img"),
    ("ghcr.io/modelyard/converter@sha256:abc", "ghcr.io/modelyard/converter"),
    ("ghcr.io/modelyard/converter:0.1.0@sha256:abc", "ghcr.io/modelyard/converter"),
])
def test_image_repository(image: str, repository: str) -> None:
    assert repository_of(image) == repository


@pytest.mark.parametrize(("image", "key", "kind"), [
    ("nvcr.io/nvidia/tritonserver:24.10-py3", "nvcr.io/nvidia/tritonserver", "triton"),
    ("nvcr.io/nvidia/tritonserver:25.10-vllm-python-py3", "nvcr.io/nvidia/tritonserver#vllm", "triton-vllm"),
    ("nvcr.io/nvidia/tritonserver:25.10-vllm-python-py3@sha256:abc", "nvcr.io/nvidia/tritonserver#vllm",
     "triton-vllm"),
])
def test_tritons_vllm_image_is_its_own_local_program(image: str, key: str, kind: str) -> None:
    assert local_key(image) == key and table()[key].kind == kind


def test_a_vllm_pod_without_the_local_engine_says_how_to_install_it() -> None:
    pod = {"metadata": {"name": "p", "namespace": "ns"}, "spec": {"containers": []}}
    container = {"name": "triton", "image": "nvcr.io/nvidia/tritonserver:25.10-vllm-python-py3",
                 "command": ["tritonserver"]}
    runtime = LocalRuntime(base_path="/usr/bin", vllm_missing="run `bash hack/vllm-cpu/build.sh`")
    with pytest.raises(PlanError, match=r"hack/vllm-cpu/build\.sh") as err:
        plan_container(pod, container, _context({}, {}), table(), runtime)
    assert err.value.reason == "RunContainerError"


def _c(state: dict[str, Any], ready: bool = False, restarts: int = 0) -> ContainerView:
    return ContainerView("c", "img", state, {}, ready, ready, restarts)


RUNNING = {"running": {"startedAt": "t"}}
WAITING = {"waiting": {"reason": "ContainerCreating"}}


def _done(code: int) -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed"}}


@pytest.mark.parametrize(("states", "policy", "want"), [
    ([WAITING], "Always", "Pending"),
    ([RUNNING], "Always", "Running"),
    ([_done(0)], "Never", "Succeeded"),
    ([_done(1)], "Never", "Failed"),
    ([_done(0)], "OnFailure", "Succeeded"),
    ([_done(1)], "OnFailure", "Running"),  # it will be restarted
    ([_done(1)], "Always", "Running"),
    ([_done(0), RUNNING], "Never", "Running"),
    ([_done(0), _done(2)], "Never", "Failed"),
])
def test_phase(states: list[dict[str, Any]], policy: str, want: str) -> None:
    assert phase([_c(s) for s in states], policy) == want


@pytest.mark.parametrize(("init", "policy", "want"), [
    ([WAITING], "Always", "Pending"),
    ([RUNNING], "Always", "Pending"),
    ([_done(0), RUNNING], "Always", "Pending"),  # one after the other
    ([_done(1)], "Always", "Pending"),  # it runs again, with back-off
    ([_done(1)], "Never", "Failed"),
    ([_done(0), _done(0)], "Always", "Running"),  # initialised: the containers' phase
])
def test_phase_with_init_containers(init: list[dict[str, Any]], policy: str, want: str) -> None:
    assert phase([_c(RUNNING)], policy, [_c(s) for s in init]) == want


def test_init_containers_are_reported_and_hold_initialized_until_they_complete() -> None:
    pod = {"metadata": {"uid": "u"}, "spec": {"restartPolicy": "Always"}, "status": {}}
    waiting = {"waiting": {"reason": "PodInitializing"}}
    status = pod_status(pod, [_c(waiting)], "198.18.0.2", "198.18.0.1", "t0", "t1", init=[_c(RUNNING)])
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Initialized"]["status"], conditions["Initialized"]["reason"]) == (
        "False", "ContainersNotInitialized")
    assert status["phase"] == "Pending" and status["initContainerStatuses"][0]["state"] == RUNNING
    done = pod_status(pod, [_c(RUNNING, ready=True)], "198.18.0.2", "198.18.0.1", "t0", "t2", init=[_c(_done(0))])
    assert {c["type"]: c["status"] for c in done["conditions"]}["Initialized"] == "True"
    assert done["phase"] == "Running" and "initContainerStatuses" not in pod_status(
        pod, [_c(RUNNING)], "198.18.0.2", "198.18.0.1", "t0", "t2")


def test_ready_follows_the_containers_and_transition_times_are_kept() -> None:
    pod = {"metadata": {"uid": "u"}, "spec": {"restartPolicy": "Always"}, "status": {}}
    first = pod_status(pod, [_c(RUNNING, ready=False)], "198.18.0.2", "198.18.0.1", "t0", "t1")
    ready = {c["type"]: c for c in first["conditions"]}["Ready"]
    assert (ready["status"], ready["reason"], ready["lastTransitionTime"]) == ("False", "ContainersNotReady", "t1")
    later = pod_status({**pod, "status": first}, [_c(RUNNING, ready=False)], "198.18.0.2", "198.18.0.1", "t0", "t2")
    assert {c["type"]: c for c in later["conditions"]}["Ready"]["lastTransitionTime"] == "t1"
    now_ready = pod_status({**pod, "status": later}, [_c(RUNNING, ready=True)], "198.18.0.2", "198.18.0.1", "t0", "t3")
    ready = {c["type"]: c for c in now_ready["conditions"]}["Ready"]
    assert (ready["status"], ready["lastTransitionTime"]) == ("True", "t3")
    assert now_ready["podIP"] == "198.18.0.2" and now_ready["containerStatuses"][0]["ready"] is True


@pytest.mark.parametrize(("restarts", "delay"), [(0, 0), (1, 10), (2, 20), (3, 40), (5, 160), (6, 300), (20, 300)])
def test_crash_loop_back_off(restarts: int, delay: float) -> None:
    assert Backoff().delay(restarts) == delay


def test_the_golden_plans_name_no_machine_path() -> None:
    for path in (Path(__file__).parent / "golden" / "processkubelet").glob("*.yaml"):
        assert "/work/" not in path.read_text() and "/root/" not in path.read_text(), path
