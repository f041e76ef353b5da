"""The LLM renderers and the pure decisions behind them: the Triton pod for the vLLM runtime (image, probes, shm,
env), the conversion Job's arguments, config.pbtxt and model.json for the engine, the served dtype."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from modelyard.api.v1alpha1.llm import VLLMEngine
from modelyard.api.v1alpha1.types import DEFAULT_VLLM_IMAGE
from modelyard.cli import render_manifest
from modelyard.convert.llm import engine_args, served_dtype
from modelyard.convert.tritonconfig import vllm_model_config
from modelyard.settings import DEFAULT_CONVERTER_IMAGE

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = Path(__file__).parent / "golden"


def _tp4() -> dict:
    return yaml.safe_load((ROOT / "examples" / "llm" / "llama-70b-tp4.yaml").read_text())


def test_the_tp4_pod_runs_the_vllm_image_with_minute_probes_shared_memory_and_no_hub() -> None:
    job, deployment, _service = render_manifest(_tp4())
    pod = deployment["spec"]["template"]["spec"]
    triton = pod["containers"][0]
    assert triton["image"] == DEFAULT_VLLM_IMAGE
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert triton["startupProbe"]["failureThreshold"] * triton["startupProbe"]["periodSeconds"] == 30 * 60
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/models/llama-70b/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {"name": "HF_HUB_OFFLINE", "value": "1"} in triton["env"]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert next(m for m in triton["volumeMounts"] if m["name"] == "model-repository")["readOnly"] is True
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--served-store") + 1] == "/models/converted"


def _init(deployment: dict) -> dict:
    (init,) = deployment["spec"]["template"]["spec"]["initContainers"]
    assert init["name"] == "weights" and init["command"] == ["python", "-m", "modelyard.convert.weights"]
    assert init["securityContext"]["runAsNonRoot"] and init["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    return init


def test_the_weights_are_verified_in_the_pod_before_triton_starts() -> None:
    _job, deployment, _service = render_manifest(_tp4())
    init = _init(deployment)
    assert init["image"] == DEFAULT_CONVERTER_IMAGE
    assert init["args"] == ["--store", "/models/converted", "--key", "<key>", "--name", "llama-70b",
                            "--served-root", "/models/converted", "--termination-log", "/dev/termination-log"]
    assert init["volumeMounts"][0] == {"name": "model-repository", "mountPath": "/models", "readOnly": True}
    assert "envFrom" not in init


def test_from_an_s3_store_the_pod_fetches_and_verifies_and_triton_reads_that_copy() -> None:
    doc = _tp4()
    doc["spec"]["conversion"].update({"store": "s3://models/llm", "storeEndpoint": "http://minio:9000",
                                      "storeCredentialsSecretRef": {"name": "store-creds"}})
    job, deployment, _service = render_manifest(doc)
    pod = deployment["spec"]["template"]["spec"]
    init = _init(deployment)
    assert init["args"][:7] == ["--store", "s3://models/llm", "--store-endpoint", "http://minio:9000", "--to",
                                "/models", "--key"]
    assert init["args"][init["args"].index("--served-root") + 1] == "/models"
    assert init["envFrom"] == [{"secretRef": {"name": "store-creds"}, "prefix": "STORE_"}]
    assert init["volumeMounts"][0] == {"name": "model-repository", "mountPath": "/models", "readOnly": False}
    assert next(v for v in pod["volumes"] if v["name"] == "model-repository") == {"name": "model-repository",
                                                                                  "emptyDir": {}}
    triton = pod["containers"][0]
    assert "--model-repository=/models/<key>" in triton["args"] and "envFrom" not in triton
    assert next(m for m in triton["volumeMounts"] if m["name"] == "model-repository")["readOnly"] is True
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--served-store") + 1] == "/models"


def test_an_image_set_by_the_user_is_kept() -> None:
    doc = _tp4()
    doc["spec"]["serving"]["image"] = "registry.example.com/triton-vllm:25.10"
    _job, deployment, _service = render_manifest(doc)
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.example.com/triton-vllm:25.10"


def test_vllm_config_pbtxt_matches_golden() -> None:
    text = vllm_model_config("llama-70b")
    path = GOLDEN / "llm-config.pbtxt"
    import os

    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.write_text(text)
    assert text == path.read_text()


@pytest.mark.parametrize(("gpus", "tp", "want"), [(4, None, (4, 1)), (4, 2, (2, 2)), (4, 1, (1, 4)), (0, None, (1, 1)),
                                                  (1, None, (1, 1)), (8, 8, (8, 1))])
def test_tensor_and_pipeline_parallel_sizes(gpus: int, tp: int | None, want: tuple[int, int]) -> None:
    engine = VLLMEngine(tensor_parallel_size=tp)
    assert (engine.tensor_parallel(gpus), engine.pipeline_parallel(gpus)) == want


@pytest.mark.parametrize(("checkpoint", "dtype", "gpus", "want"), [
    ("bfloat16", "auto", 1, "bfloat16"),
    ("float32", "auto", 1, "float16"),  # vLLM runs a float32 checkpoint in float16 on GPUs
    ("float32", "auto", 0, "float32"),
    ("bfloat16", "float16", 4, "float16"),
    ("float16", "float32", 0, "float32"),
])
def test_served_dtype(checkpoint: str, dtype: str, gpus: int, want: str) -> None:
    assert served_dtype(checkpoint, VLLMEngine(dtype=dtype), gpus) == want


def test_engine_args_write_every_setting_and_never_trust_remote_code() -> None:
    engine = VLLMEngine.model_validate({"maxModelLength": 4096, "maxConcurrentSequences": 64, "kvCacheDtype": "fp8",
                                        "quantization": "awq", "prefixCaching": False, "tensorParallelSize": 2})
    args = engine_args(engine, "/models/c/weights/abc", 4, "float16")
    assert args == {
        "model": "/models/c/weights/abc", "tokenizer": "/models/c/weights/abc", "trust_remote_code": False,
        "load_format": "safetensors", "dtype": "float16", "kv_cache_dtype": "fp8", "max_num_seqs": 64,
        "gpu_memory_utilization": 0.9, "enable_prefix_caching": False, "tensor_parallel_size": 2,
        "pipeline_parallel_size": 2, "disable_log_stats": False, "max_model_len": 4096, "quantization": "awq",
    }



def _resnet() -> dict:
    return yaml.safe_load((ROOT / "examples" / "resnet-gpu.yaml").read_text())


@pytest.mark.parametrize(("manifest", "grace", "want"), [
    (_tp4, None, (300, "--exit-timeout-secs=295")),  # an LLM: streams in flight get minutes to finish
    (_tp4, 900, (900, "--exit-timeout-secs=895")),
    (_resnet, None, (None, None)),  # a tensor model: Kubernetes' 30 s and Triton's own exit timeout, as before
    (_resnet, 60, (60, "--exit-timeout-secs=55")),
])
def test_a_stopped_pod_has_the_time_to_finish_what_it_holds(manifest, grace: int | None, want: tuple) -> None:
    body = manifest()
    if grace is not None:
        body["spec"]["serving"]["terminationGracePeriodSeconds"] = grace
    deployment = next(o for o in render_manifest(body) if o["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    exit_timeout = [a for a in pod["containers"][0]["args"] if a.startswith("--exit-timeout-secs=")]
    assert (pod.get("terminationGracePeriodSeconds"), exit_timeout[0] if exit_timeout else None) == want
