"""A real tritonserver loads the converter's repository and answers, over HTTP and gRPC, like the source model."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from convert_models import (
    CNN,
    CNN_SIGNATURE,
    ENCODER_SIGNATURE,
    keras_cnn,
    keras_images,
    save_exported_encoder,
    save_torchscript,
    source,
)
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.pipeline import Request, convert
from modelyard.convert.shadow import python_shadow
from tritonlocal import Triton

pytestmark = [pytest.mark.triton, pytest.mark.filterwarnings("ignore")]
warnings.filterwarnings("ignore")

CPU = Serving.model_validate({"gpus": 0, "maxBatchSize": 8, "dynamicBatching": {"maxQueueDelayMicroseconds": 20_000}})
"""A request waits up to 20 ms for others to join its batch: the batching test's concurrent requests are batched
however fast this server is against its clients (with the default 100 us, a run once executed all 32 alone)."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Triton, dict[str, torch.nn.Module]]]:
    d = tmp_path_factory.mktemp("triton")
    cnn = save_torchscript(CNN, d / "cnn.pt")
    encoder = save_exported_encoder(d / "encoder.pt2")
    keras_model = keras_cnn(d / "cnn.keras")
    images = keras_images(d / "images.npz")
    repo = d / "repository"
    repo.mkdir()
    for name, src, conv in (
        ("cnn", source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE), {}),
        ("cnn_int8", source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE), {"precision": "int8"}),
        ("encoder", source(str(d / "encoder.pt2"), "pytorch", ENCODER_SIGNATURE), {"precision": "fp16"}),
        ("keras_cnn", source(str(d / "cnn.keras"), "keras", None), {"samples": {"uri": str(images)}}),
    ):
        manifest = convert(Request(name, ModelSource.model_validate(src), Conversion.model_validate(conv), CPU,
                                   flavour="python"), d / "store")
        (repo / name).symlink_to(Path(manifest["repository"]) / name)
    # A native TorchScript repository (pytorch_libtorch), served through its python-backend shadow.
    ts = convert(Request("cnn_ts", ModelSource.model_validate(source(str(d / "cnn.pt"), "torchscript", CNN_SIGNATURE)),
                         Conversion.model_validate({"target": "torchscript"}), CPU), d / "store")
    python_shadow(Path(ts["repository"]), d / "shadow")
    (repo / "cnn_ts").symlink_to(d / "shadow" / "cnn_ts")
    triton = Triton(repo, d).start()
    try:
        yield triton, {"cnn": cnn, "cnn_int8": cnn, "cnn_ts": cnn, "encoder": encoder, "keras_cnn": keras_model}
    finally:
        triton.stop()


def _source_out(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize(("name", "atol", "rtol"), [("cnn", 1e-4, 1e-3), ("cnn_int8", 0.25, 0.25)])
def test_cnn_over_http_matches_the_source(served: tuple[Triton, dict[str, torch.nn.Module]], name: str,
                                          atol: float, rtol: float) -> None:
    triton, models = served
    x = np.random.default_rng(7).standard_normal((4, 3, 32, 32)).astype(np.float32)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer(name, [inp]).as_numpy("logits")
    want = _source_out(models[name], x)
    assert got.shape == want.shape == (4, 10)
    # The converter's own defaults for fp32 and int8: what it validated, the server must deliver.
    np.testing.assert_allclose(got, want, atol=atol, rtol=rtol)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.75


def test_torchscript_shadow_over_http_matches_the_source(
    served: tuple[Triton, dict[str, torch.nn.Module]]
) -> None:
    triton, models = served
    x = np.random.default_rng(5).standard_normal((2, 3, 32, 32)).astype(np.float32)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    inp = httpclient.InferInput("INPUT__0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("cnn_ts", [inp]).as_numpy("OUTPUT__0")
    np.testing.assert_allclose(got, _source_out(models["cnn_ts"], x), atol=1e-5, rtol=1e-4)


def test_encoder_over_grpc_matches_the_source(served: tuple[Triton, dict[str, torch.nn.Module]]) -> None:
    triton, models = served
    ids = np.random.default_rng(3).integers(0, 100, (2, 12)).astype(np.int64)
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{triton.grpc_port}")
    inp = grpcclient.InferInput("ids", list(ids.shape), "INT64")
    inp.set_data_from_numpy(ids)
    got = client.infer("encoder", [inp]).as_numpy("pooled")
    want = _source_out(models["encoder"], ids)
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=2e-2)


def test_the_keras_cnn_is_served_like_keras_computes_it(served: tuple[Triton, dict[str, Any]]) -> None:
    """The seeds' kind of model: a Keras binary classifier, converted to ONNX and answered by tritonserver."""
    triton, models = served
    x = np.random.default_rng(9).uniform(0, 255, (3, 64, 64, 3)).astype(np.float32)
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    inp = httpclient.InferInput("image", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    got = client.infer("keras_cnn", [inp]).as_numpy("output_0")
    want = np.asarray(models["keras_cnn"].predict(x, verbose=0))
    assert got.shape == want.shape == (3, 1)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)


def test_triton_reports_the_models_ready_and_exposes_metrics(served: tuple[Triton, dict[str, torch.nn.Module]]) -> None:
    triton, _ = served
    client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
    for name in ("cnn", "cnn_int8", "encoder", "keras_cnn"):
        assert client.is_model_ready(name)
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as resp:
        assert b"nv_inference_request_success" in resp.read()


def _exec_and_inference_counts(triton: Triton, model: str) -> tuple[float, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    counts = {}
    for line in text.splitlines():
        for name in ("nv_inference_exec_count", "nv_inference_count"):
            if line.startswith(name + "{") and f'model="{model}"' in line:
                counts[name] = float(line.rsplit(" ", 1)[1])
    return counts["nv_inference_exec_count"], counts["nv_inference_count"]


@pytest.mark.parametrize(("name", "input_name", "output_name", "make"), [
    ("cnn", "image", "logits",
     lambda i: np.random.default_rng(i).standard_normal((1 + i % 3, 3, 32, 32)).astype(np.float32)),
    # Several sequence lengths at once: only requests of one shape are stacked together.
    ("encoder", "ids", "pooled", lambda i: np.random.default_rng(i).integers(0, 100, (1 + i % 2, 6 + 4 * (i % 3)))
     .astype(np.int64)),
])
def test_requests_batched_together_each_get_their_own_answer(
    served: tuple[Triton, dict[str, torch.nn.Module]], name: str, input_name: str, output_name: str, make: Any
) -> None:
    """Triton's dynamic batcher hands the python model several requests at once; it runs them as one onnxruntime
    call per input shape and splits the outputs back: each request gets the answer to its own input."""
    from concurrent.futures import ThreadPoolExecutor

    triton, models = served
    # Sent grouped by shape beyond the batch axis (the batch sizes still differ): Triton's batcher closes a batch at
    # the first queued request of another shape, so interleaved lengths would rarely meet their like.
    inputs = sorted((make(i) for i in range(32)), key=lambda x: x.shape[1:])
    execs_before, inferences_before = _exec_and_inference_counts(triton, name)

    def infer(x: np.ndarray) -> np.ndarray:
        client = httpclient.InferenceServerClient(f"127.0.0.1:{triton.http_port}")
        inp = httpclient.InferInput(input_name, list(x.shape), "FP32" if x.dtype == np.float32 else "INT64")
        inp.set_data_from_numpy(x)
        return client.infer(name, [inp]).as_numpy(output_name)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(infer, inputs))
    for x, got in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(got, _source_out(models[name], x), atol=2e-2, rtol=2e-2)
    execs, inferences = _exec_and_inference_counts(triton, name)
    assert inferences - inferences_before == sum(len(x) for x in inputs)
    assert execs - execs_before < len(inputs), "no two requests were ever executed together: nothing was batched"
