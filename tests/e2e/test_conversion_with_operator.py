"""E2E: the operator process converts, validates and serves a model with the converter and Triton running as real
processes on the process kubelet's node; inferences go to the pod IP that the Service's EndpointSlice names."""

from __future__ import annotations

import json
import os
import signal
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from conversion_support import ON_PROCESS_NODE, condition, converting, store
from helpers import model_deployment, ready_condition, wait_for
from localcluster import LocalCluster
from modelyard.kube.client import MODEL_DEPLOYMENTS, PODS, Kube

from .conftest import OperatorProcess

pytestmark = [pytest.mark.e2e, pytest.mark.triton, pytest.mark.filterwarnings("ignore")]
__all__ = ["store"]  # fixtures
warnings.filterwarnings("ignore")


def serving_endpoint(cluster: LocalCluster, namespace: str, service: str) -> str:
    """The ready address behind the Service, as the real endpointslice controller published it."""
    def address() -> str | None:
        slices = json.loads(cluster.kubectl("get", "endpointslices", "-n", namespace, "-l",
                                            f"kubernetes.io/service-name={service}", "-o", "json").stdout)["items"]
        ready = [a for s in slices for e in s.get("endpoints") or [] if e["conditions"].get("ready")
                 for a in e["addresses"]]
        return ready[0] if ready else None

    return wait_for(f"a ready endpoint of Service {service}", address)


def triton_pid(pod_ip: str) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[0].endswith(b"tritonserver") and f"--http-address={pod_ip}".encode() in cmdline:
                return int(entry.name)
    raise AssertionError(f"no tritonserver process serves {pod_ip}")


def wait_ready(cluster: LocalCluster, admin: Kube, namespace: str, name: str, timeout: int = 300) -> dict[str, Any]:
    proc = cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"mdep/{name}", f"--timeout={timeout}s",
                           check=False)
    body = admin.get(MODEL_DEPLOYMENTS, namespace, name) or {}
    assert proc.returncode == 0, (f"{proc.stderr}\n{json.dumps(body.get('status'), indent=1)}\n"
                                  f"{cluster.container_logs(namespace)}")
    return body


def test_operator_converts_validates_and_serves_real_inferences(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, store: Path,
) -> None:
    manifest = converting("conv", namespace, "cnn.pt")
    # Triton on the process node too, asking for a (simulated) GPU as a real GPU model would.
    manifest["spec"]["serving"].update({"gpus": 1, **ON_PROCESS_NODE})
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    body = wait_ready(cluster, admin, namespace, "conv")
    assert condition(body, "Converted")["status"] == "True"
    assert condition(body, "Validated")["status"] == "True"
    assert "max abs error" in condition(body, "Validated")["message"]
    events = json.loads(cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)["items"]
    reasons = {e["reason"] for e in events if e["involvedObject"]["name"] == "conv"}
    assert {"Converting", "Converted", "Validated", "Available"} <= reasons, reasons

    ip = serving_endpoint(cluster, namespace, "conv")
    x = np.random.default_rng(11).standard_normal((4, 3, 32, 32)).astype(np.float32)
    with torch.inference_mode():
        want = torch.jit.load(str(store / "sources" / "cnn.pt")).eval()(torch.from_numpy(x)).numpy()
    http = httpclient.InferenceServerClient(f"{ip}:8000")
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got_http = http.infer("conv", [inp]).as_numpy("logits")
    grpc = grpcclient.InferenceServerClient(f"{ip}:8001")
    ginp = grpcclient.InferInput("image", list(x.shape), "FP32")
    ginp.set_data_from_numpy(x)
    got_grpc = grpc.infer("conv", [ginp]).as_numpy("logits")
    # fp16: the tolerance the converter validated with (conversion.tolerance defaults), and the same top-1.
    for got in (got_http, got_grpc):
        np.testing.assert_allclose(got, want, atol=1e-2, rtol=1e-2)
        assert (got.argmax(1) == want.argmax(1)).all()

    # Prometheus found the pod through the documented scrape config and counts those two requests.
    pod = next(p for p in admin.list_by_labels(PODS, namespace, {"modelyard.dev/deployment": "conv",
                                                                  "app.kubernetes.io/component": "inference-server"}))
    selector = f'namespace="{namespace}",pod="{pod["metadata"]["name"]}",modeldeployment="conv",model="conv"'

    def counted() -> list[dict[str, Any]] | None:
        result = cluster.prometheus_query(f"nv_inference_request_success{{{selector}}}")
        return result if result and float(result[0]["value"][1]) >= 2 else None

    success = wait_for("Prometheus to scrape the two inferences", counted, timeout=60, interval=1)
    assert success[0]["metric"]["revision"] == pod["metadata"]["labels"]["modelyard.dev/revision"]
    assert float(success[0]["value"][1]) == 2
    queue = cluster.prometheus_query(f"nv_inference_queue_duration_us{{{selector}}}")
    assert queue and float(queue[0]["value"][1]) > 0, queue

    # Kill Triton: the pod is not Ready, the ModelDeployment says why, and the restart brings it back.
    os.kill(triton_pid(pod["status"]["podIP"]), signal.SIGKILL)

    def down() -> dict[str, Any] | None:
        cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "conv") or {})
        return cond if cond and cond["status"] == "False" else None

    cond = wait_for("Ready=False after the kill", down, timeout=60, interval=0.2)
    assert cond["reason"] in ("ContainerTerminated", "ContainerRestarted"), cond
    assert "container triton" in cond["message"] and "exited with code 137" in cond["message"], cond
    body = wait_ready(cluster, admin, namespace, "conv", timeout=120)
    restarted = admin.get(PODS, namespace, pod["metadata"]["name"]) or {}
    assert restarted["status"]["containerStatuses"][0]["restartCount"] == 1
    assert httpclient.InferenceServerClient(f"{serving_endpoint(cluster, namespace, 'conv')}:8000").is_model_ready(
        "conv")
    operator_process.assert_running()


def test_an_image_without_a_local_program_reaches_the_ready_condition(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str
) -> None:
    manifest = model_deployment("nginx", namespace, gpus=0, image="docker.io/library/nginx:1.27", **ON_PROCESS_NODE)
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def pull_failure() -> dict[str, Any] | None:
        cond = ready_condition(admin.get(MODEL_DEPLOYMENTS, namespace, "nginx") or {})
        return cond if cond and cond["reason"] in ("ErrImagePull", "ImagePullBackOff") else None

    cond = wait_for("Ready=False with an image pull reason", pull_failure, timeout=90)
    assert cond["status"] == "False"
    assert "docker.io/library/nginx:1.27" in cond["message"] and "hack/processkubelet/images.py" in cond["message"]
