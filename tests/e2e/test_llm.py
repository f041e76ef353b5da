"""E2E: a tiny Llama-style checkpoint on a PVC, as a ModelDeployment with format huggingface and the vllm runtime:
the operator stages and checks it, the gate's numbers reach Validated, a real Triton on the process kubelet serves
it with vLLM's CPU engine, and generate_stream through the Gateway delivers the first piece before the last, the
same greedy text the engine gives in-process. Hostile checkpoints (pickled weights, auto_map, no tokenizer, an
unknown architecture, a lying safetensors header, a link out) are refused before any pod, each with its reason;
staged weights changed afterwards are refused in the pod before Triton starts, from a claim or an S3 store."""

from __future__ import annotations

import copy
import json
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import boto3
import pytest
import yaml

from conversion_support import condition
from helpers import MOTO_SECRET, bound_claim, moto_s3, wait_for
from hostile_checkpoints import auto_map, lying_header, no_tokenizer, pickled, symlink_out, unknown_architecture
from llm_support import PROMPTS, generate, in_process, running
from localcluster import GATEWAY_NAME, GATEWAY_NAMESPACE, LocalCluster
from modelyard.kube.client import MODEL_DEPLOYMENTS, PODS, Kube
from samplemodels import tiny_llama

from .conftest import OperatorProcess
from .test_conversion_with_operator import serving_endpoint, wait_ready

pytestmark = [pytest.mark.e2e, pytest.mark.triton, pytest.mark.vllm, pytest.mark.filterwarnings("ignore")]

ROOT = Path(__file__).resolve().parents[2]
NAME = "tiny-llama"


def llm_manifest(namespace: str, name: str = NAME, source: str = "tiny-llama") -> dict[str, Any]:
    """examples/local/tiny-llama.yaml in `namespace`, behind the local Gateway."""
    manifest: dict[str, Any] = copy.deepcopy(yaml.safe_load((ROOT / "examples/local/tiny-llama.yaml").read_text()))
    manifest["metadata"] = {"name": name, "namespace": namespace}
    manifest["spec"]["model"]["uri"] = f"pvc://model-store/sources/{source}"
    manifest["spec"]["traffic"] = {"gateway": {"parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
                                               "hostnames": [f"{name}.{namespace}.local"]}}
    return manifest


def through_gateway(cluster: LocalCluster, namespace: str) -> None:
    """Wait until the model answers through the Gateway (Traefik follows the route and endpoints within seconds)."""
    def answers() -> bool | None:
        try:
            return bool(generate(cluster.gateway_url, NAME, PROMPTS[0], host=f"{NAME}.{namespace}.local",
                                 max_tokens=1)[0]) or None
        except OSError:
            return None

    wait_for("the model to answer through the gateway", answers, timeout=120, interval=1)


def test_a_tiny_llama_is_staged_gated_served_and_streamed_through_the_gateway(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, tmp_path: Path,
) -> None:
    bound_claim(cluster, namespace, "model-store", tmp_path, "ReadWriteMany")
    checkpoint = Path(tiny_llama(str(tmp_path / "sources" / "tiny-llama")))
    hostile: dict[str, str] = {}
    for spoil in (pickled, auto_map, no_tokenizer, unknown_architecture, lying_header, symlink_out):
        name = spoil.__name__.replace("_", "-")
        shutil.copytree(checkpoint, tmp_path / "sources" / name)
        hostile[name] = spoil(tmp_path / "sources" / name)
    for manifest in (llm_manifest(namespace), *(llm_manifest(namespace, name, name) for name in hostile)):
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    # The hostile ones: refused by the conversion Job, each with its reason, and no Triton pod ever.
    for name, reason in hostile.items():
        def refused(name: str = name) -> dict[str, Any] | None:
            body = admin.get(MODEL_DEPLOYMENTS, namespace, name) or {}
            conds = {c["type"]: c for c in body.get("status", {}).get("conditions", [])}
            return conds["Converted"] if conds.get("Converted", {}).get("status") == "False" else None

        converted = wait_for(f"{name} to be refused", refused, timeout=300, interval=1)
        assert converted["reason"] == reason, converted
        assert not list(admin.list_by_labels(PODS, namespace, {"modelyard.dev/deployment": name,
                                                               "app.kubernetes.io/component": "inference-server"}))

    body = wait_ready(cluster, admin, namespace, NAME, timeout=900)
    assert condition(body, "Converted")["status"] == "True"
    validated = condition(body, "Validated")
    assert validated["status"] == "True" and "3 prompts: the tokenizer gives each back" in validated["message"]
    assert "served in float32" in validated["message"], validated

    want = in_process(checkpoint, PROMPTS)["texts"]
    through_gateway(cluster, namespace)
    host = f"{NAME}.{namespace}.local"
    for prompt, text in zip(PROMPTS, want, strict=True):
        assert generate(cluster.gateway_url, NAME, prompt, host=host)[0] == [prompt + text]
    pieces, _ = generate(cluster.gateway_url, NAME, PROMPTS[0], stream=True, host=host)
    assert len(pieces) >= 3 and "".join(pieces) == want[0], pieces

    # The first piece comes through Traefik while the engine is still generating the rest: nothing buffers the
    # stream. Causal, not timed: when it is in, the pod's engine reports the request still running.
    ip = serving_endpoint(cluster, namespace, NAME)
    seen: list[float] = []
    pieces, _ = generate(cluster.gateway_url, NAME, PROMPTS[1], stream=True, host=host, max_tokens=256,
                         ignore_eos=True, on_first=lambda: seen.append(running(f"http://{ip}:8002/metrics", NAME)))
    assert seen == [1.0] and len(pieces) > 100, (seen, len(pieces))

    # Before Triton started, the pod's init container verified the repository and the staged weights.
    (pod,) = serving_pods(admin, namespace, NAME)
    (weights,) = pod["status"]["initContainerStatuses"]
    verified = json.loads(weights["state"]["terminated"]["message"])
    assert verified["ok"] is True and verified["weights"].startswith("weights/"), verified
    # A staged file changed on the claim: the next pod refuses it before Triton starts, and the model says why.
    planted = tmp_path / "converted" / verified["weights"] / "model.safetensors"
    planted.write_bytes(planted.read_bytes()[:-4] + b"\0\0\0\0")
    refused_in_pod(admin, namespace, NAME, pod["metadata"]["name"])


def serving_pods(admin: Kube, namespace: str, name: str) -> list[dict[str, Any]]:
    return list(admin.list_by_labels(PODS, namespace, {"modelyard.dev/deployment": name,
                                                       "app.kubernetes.io/component": "inference-server"}))


def refused_in_pod(admin: Kube, namespace: str, name: str, old_pod: str) -> dict[str, Any]:
    """Delete the serving pod; its replacement's init container refuses the weights: a condition with reason
    WeightsUnverified naming the file, and the Triton container never started."""
    admin.delete(PODS, namespace, old_pod)

    def unverified() -> dict[str, Any] | None:
        body = admin.get(MODEL_DEPLOYMENTS, namespace, name) or {}
        return next((c for c in body.get("status", {}).get("conditions", [])
                     if c.get("reason") == "WeightsUnverified"), None)

    cond = wait_for("the new pod to refuse the weights", unverified, timeout=180, interval=1)
    assert "model.safetensors has sha256" in cond["message"] and "Triton does not start" in cond["message"], cond
    for pod in serving_pods(admin, namespace, name):
        if pod["metadata"]["name"] != old_pod:
            assert "running" not in pod["status"]["containerStatuses"][0]["state"], pod["status"]
    return cond


class Streams:
    """`count` concurrent long greedy generations through the Gateway, until stopped."""

    def __init__(self, cluster: LocalCluster, host: str, count: int, max_tokens: int) -> None:
        self.cluster, self.host, self.max_tokens = cluster, host, max_tokens
        self.stopped = threading.Event()
        self.errors: list[str] = []
        self.done = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(count)]

    def __enter__(self) -> Streams:
        for t in self.threads:
            t.start()
        return self

    def _run(self, i: int) -> None:
        while not self.stopped.is_set():
            try:
                generate(self.cluster.gateway_url, NAME, PROMPTS[i % len(PROMPTS)], stream=True, host=self.host,
                         max_tokens=self.max_tokens, ignore_eos=True)
                self.done += 1
            except Exception as exc:
                self.errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(1)

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        for t in self.threads:
            t.join(timeout=300)


def _checkpoint(cluster: LocalCluster, namespace: str, root: Path) -> Path:
    bound_claim(cluster, namespace, "model-store", root, "ReadWriteMany")
    return Path(tiny_llama(str(root / "sources" / "tiny-llama")))


def replicas(admin: Kube, namespace: str) -> int:
    body = admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}
    return int((body.get("status", {}).get("scaling") or {}).get("desiredReplicas") or 0)


def test_concurrent_long_generations_scale_out_on_requests_waiting_and_back(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, tmp_path: Path,
) -> None:
    _checkpoint(cluster, namespace, tmp_path)
    manifest = llm_manifest(namespace)
    manifest["spec"]["serving"]["vllm"]["maxConcurrentSequences"] = 2  # a third request waits in the engine
    manifest["spec"]["scaling"] = {
        "minReplicas": 1, "maxReplicas": 2, "pollingInterval": "2s",
        "metric": {"type": "requestsWaiting", "target": 2, "window": "10s"},
        "behavior": {"scaleUp": {"stabilizationWindowSeconds": 0},
                     "scaleDown": {"stabilizationWindowSeconds": 10,
                                   "policies": [{"type": "Percent", "value": 100, "periodSeconds": 5}]}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    wait_ready(cluster, admin, namespace, NAME, timeout=900)
    wait_for("the autoscaler to hold 1 replica", lambda: replicas(admin, namespace) == 1 or None, timeout=120)
    through_gateway(cluster, namespace)

    # Eight long generations at once, two running: six wait, three a replica over the target of two: 1 -> 2.
    with Streams(cluster, f"{NAME}.{namespace}.local", count=8, max_tokens=300) as load:
        wait_for("the autoscaler to ask for 2 replicas", lambda: replicas(admin, namespace) == 2 or None,
                 timeout=180, interval=1)
        value = (admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {})["status"]["scaling"].get("currentValue")
    assert not load.errors, load.errors[:3]
    assert value, "the autoscaler read no requestsWaiting value"
    # The load ends; its last generations finish; nothing waits: back to 1.
    wait_for("the autoscaler to return to 1 replica", lambda: replicas(admin, namespace) == 1 or None,
             timeout=300, interval=1)


@pytest.mark.timeout(1200)  # two engines start on 2 cores, one of them while the other serves
def test_a_canary_with_a_slower_engine_is_rolled_back_on_time_to_first_token(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, tmp_path: Path,
) -> None:
    _checkpoint(cluster, namespace, tmp_path)
    manifest = llm_manifest(namespace)
    manifest["spec"]["rollout"] = {"strategy": "canary", "canary": {"steps": [{"setWeight": 50}], "analysis": {
        "interval": "10s", "failureLimit": 1, "minRequests": 3, "minSuccessRate": 99,
        "llm": {"timeToFirstToken": {"quantile": 0.9, "maxRatioToStable": 3}, "minGenerationSuccessRate": 99}}}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    body = wait_ready(cluster, admin, namespace, NAME, timeout=900)
    stable = body["status"]["revisions"]["stable"]["name"]
    through_gateway(cluster, namespace)

    # The new revision's engine runs one sequence at a time: under concurrent streams its first tokens wait for
    # whole generations ahead of them (a configuration regression that a success rate does not show).
    manifest["spec"]["serving"]["vllm"]["maxConcurrentSequences"] = 1
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))

    def canary_ready() -> bool | None:
        latest = ((admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}).get("status", {}).get("revisions") or {}).get(
            "latest") or {}
        return (latest.get("name") != stable and latest.get("readyReplicas", 0) >= 1) or None

    # The load starts once the canary's engine is up: on 2 cores, streams on the stable engine would starve its
    # start. Then the canary gets its share at the first step, and its first tokens wait.
    wait_for("the canary's pod to be Ready", canary_ready, timeout=900, interval=2)

    def progressing() -> dict[str, Any] | None:
        conds = {c["type"]: c for c in (admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}).get("status", {}).get(
            "conditions", [])}
        cond = conds.get("Progressing", {})
        return cond if cond.get("reason") == "CanaryRolledBack" else None

    with Streams(cluster, f"{NAME}.{namespace}.local", count=6, max_tokens=48) as load:
        rolled_back = wait_for("the canary to be rolled back", progressing, timeout=240, interval=2)
    assert "ttft-p90-vs-stable" in rolled_back["message"], rolled_back
    body = admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}
    assert body["status"]["revisions"]["stable"]["name"] == stable
    assert condition(body, "Ready")["status"] == "True"
    assert not load.errors, load.errors[:3]


def test_from_an_s3_store_the_pod_fetches_verified_weights_and_refuses_tampered_ones(
    cluster: LocalCluster, admin: Kube, operator_process: OperatorProcess, namespace: str, tmp_path: Path,
) -> None:
    """conversion.store on S3 (a real S3-compatible server, moto, on the host): the Job stages the weights and the
    repository in the bucket; each Triton pod's init container fetches both into the pod and verifies them there,
    and Triton serves that copy. A weights object replaced in the bucket is refused by the next pod."""
    checkpoint = _checkpoint(cluster, namespace, tmp_path)
    node = json.loads(cluster.kubectl("get", "nodes", "-l", "modelyard.dev/kubelet=process", "-o", "json").stdout)
    node_ip = next(a["address"] for a in node["items"][0]["status"]["addresses"] if a["type"] == "InternalIP")
    with moto_s3(tmp_path, listen="0.0.0.0") as endpoint:
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="models")
        cluster.kubectl("create", "secret", "generic", "store-creds", "-n", namespace,
                        "--from-literal=AWS_ACCESS_KEY_ID=modelyard", "--from-literal=AWS_DEFAULT_REGION=us-east-1",
                        f"--from-literal=AWS_SECRET_ACCESS_KEY={MOTO_SECRET}")
        manifest = llm_manifest(namespace)
        manifest["spec"]["conversion"].update({
            "store": "s3://models/llm", "storeEndpoint": f"http://{node_ip}:{endpoint.rsplit(':', 1)[1]}",
            "storeCredentialsSecretRef": {"name": "store-creds"}})
        cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))
        wait_ready(cluster, admin, namespace, NAME, timeout=900)
        objects = [o["Key"] for o in s3.list_objects_v2(Bucket="models", Prefix="llm/")["Contents"]]
        assert any(k.endswith("/model.safetensors") and "/weights/" in k for k in objects), objects

        through_gateway(cluster, namespace)
        want = in_process(checkpoint, PROMPTS[:1])["texts"]
        assert generate(cluster.gateway_url, NAME, PROMPTS[0], host=f"{NAME}.{namespace}.local")[0] == [
            PROMPTS[0] + want[0]]
        (pod,) = serving_pods(admin, namespace, NAME)
        verified = json.loads(pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["message"])
        assert verified["ok"] is True and verified["weights"].startswith("weights/"), verified

        s3.put_object(Bucket="models", Key=f"llm/{verified['weights']}/model.safetensors", Body=b"not the weights")
        refused_in_pod(admin, namespace, NAME, pod["metadata"]["name"])
    body = admin.get(MODEL_DEPLOYMENTS, namespace, NAME) or {}
    events = cluster.kubectl("get", "events", "-n", namespace, "-o", "json").stdout
    assert MOTO_SECRET not in json.dumps(body) + events + cluster.container_logs(namespace)
