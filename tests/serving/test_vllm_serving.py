"""Triton's vllm backend, locally: the real tritonserver loads the converter's repository for a tiny Llama and the
stand-in backend (hack/vllmlocal/model.py) runs vLLM's CPU engine. Its answers are the engine's own, called
in-process on the same checkpoint; streaming delivers the first piece before the last; the inputs, the request
parameters of the generate endpoints and the metric names are the backend's."""

from __future__ import annotations

import json
import queue
import signal
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

import llm_support
from llm_support import PROMPTS, in_process
from modelyard.api.v1alpha1 import ModelSource, Serving
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.convert.pipeline import Request, convert
from samplemodels import tiny_llama
from tritonlocal import Triton

pytestmark = [pytest.mark.triton, pytest.mark.vllm, pytest.mark.filterwarnings("ignore")]


DRAIN_TOKENS = {"http": 200, "grpc": 450}
"""Seconds of generation each: all six streams are running in the engine when SIGTERM comes, and the gRPC ones
outlast the HTTP connections Triton waits for first."""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Triton, Path]]:
    d = tmp_path_factory.mktemp("llm")
    checkpoint = Path(tiny_llama(str(d / "tiny-llama")))
    request = Request("tiny", ModelSource.model_validate({"uri": str(checkpoint), "format": "huggingface"}),
                      Conversion.model_validate({"samples": {"prompts": PROMPTS}}),
                      Serving.model_validate({"runtime": "vllm", "gpus": 0,
                                              "vllm": {"maxModelLength": 512, "maxConcurrentSequences": 8}}))
    manifest = convert(request, d / "store")
    triton = Triton(Path(manifest["repository"]), d, vllm=True)
    try:
        triton.start(timeout=600)
    except Exception:
        print(triton.log_tail(8000), file=sys.stderr)
        raise
    yield triton, checkpoint
    triton.stop()


def generate(triton: Triton, prompt: str, stream: bool = False, **params: Any) -> tuple[list[str], list[float]]:
    return llm_support.generate(f"http://127.0.0.1:{triton.http_port}", "tiny", prompt, stream, **params)


def test_greedy_answers_are_the_engines_own_called_in_process(served: tuple[Triton, Path]) -> None:
    triton, checkpoint = served
    want = in_process(checkpoint, PROMPTS)["texts"]
    got = [generate(triton, p)[0][0] for p in PROMPTS]
    assert got == [p + w for p, w in zip(PROMPTS, want, strict=True)]  # the prompt first, as the backend does
    assert [generate(triton, p, exclude_input_in_output=True)[0][0] for p in PROMPTS] == want


def test_streaming_delivers_the_first_piece_before_the_last(served: tuple[Triton, Path]) -> None:
    triton, _ = served
    whole = generate(triton, PROMPTS[0], exclude_input_in_output=True)[0][0]
    pieces, times = generate(triton, PROMPTS[0], stream=True)
    assert len(pieces) >= 3, pieces
    assert "".join(pieces) == whole
    assert times[0] < times[-1]


def grpc_stream(port: int, prompt: str, max_tokens: int, **sampling: Any) -> list[str]:
    """The backend's inputs over gRPC streaming: text_input, stream, sampling_parameters (numbers as strings, as
    clients send them), exclude_input_in_output; the pieces of text_output until the final response."""
    results: queue.Queue[Any] = queue.Queue()
    client = grpcclient.InferenceServerClient(f"127.0.0.1:{port}")
    client.start_stream(callback=lambda result, error: results.put(error or result))

    def tensor(name: str, value: Any, dtype: str) -> grpcclient.InferInput:
        t = grpcclient.InferInput(name, [1], dtype)
        t.set_data_from_numpy(np.array([value], dtype=np.object_ if dtype == "BYTES" else bool))
        return t

    params = {"temperature": "0", "max_tokens": str(max_tokens), **{k: str(v) for k, v in sampling.items()}}
    inputs = [tensor("text_input", prompt.encode(), "BYTES"), tensor("stream", True, "BOOL"),
              tensor("sampling_parameters", json.dumps(params).encode(), "BYTES"),
              tensor("exclude_input_in_output", True, "BOOL")]
    client.async_stream_infer("tiny", inputs, enable_empty_final_response=True)
    pieces = []
    try:
        while True:
            result = results.get(timeout=120)
            assert not isinstance(result, Exception), result
            output = result.as_numpy("text_output")
            if output is not None:
                pieces.append(output[0].decode())
            if result.get_response().parameters["triton_final_response"].bool_param:
                return pieces
    finally:
        client.stop_stream()


def test_the_backends_inputs_over_grpc_streaming(served: tuple[Triton, Path]) -> None:
    triton, _ = served
    pieces = grpc_stream(triton.grpc_port, PROMPTS[1], max_tokens=5)
    assert "".join(pieces) == generate(triton, PROMPTS[1], exclude_input_in_output=True, max_tokens=5)[0][0]


def test_streams_in_flight_when_triton_is_stopped_run_to_their_end(served: tuple[Triton, Path],
                                                                  tmp_path: Path) -> None:
    """A pod that is stopped (scaled in, a replaced or rolled-back revision) gets SIGTERM with generations in
    flight: Triton takes no new request, waits for those it holds (--exit-timeout-secs bounds it; the stand-in's
    finalize waits for them as the backend's does), then unloads the engine and exits 0. Every stream, HTTP and
    gRPC, ends whole: the text it gets when nothing stops."""
    triton, _ = served
    want = {f"{kind} {p}": generate(triton, p, exclude_input_in_output=True, max_tokens=n, ignore_eos=True)[0][0]
            for p in PROMPTS for kind, n in DRAIN_TOKENS.items()}
    stopping = Triton(triton.repository, tmp_path, vllm=True, args=["--exit-timeout-secs=120"])
    stopping.start(timeout=600)
    assert stopping.proc is not None
    got: dict[str, str] = {}
    errors: list[str] = []

    def http(prompt: str) -> None:
        try:
            pieces, _ = llm_support.generate(f"http://127.0.0.1:{stopping.http_port}", "tiny", prompt, True,
                                             max_tokens=DRAIN_TOKENS["http"], ignore_eos=True)
            got[f"http {prompt}"] = "".join(pieces)
        except Exception as exc:
            errors.append(f"http {prompt!r}: {type(exc).__name__}: {exc}")

    def grpc(prompt: str) -> None:
        try:
            pieces = grpc_stream(stopping.grpc_port, prompt, DRAIN_TOKENS["grpc"], ignore_eos=True)
            got[f"grpc {prompt}"] = "".join(pieces)
        except Exception as exc:
            errors.append(f"grpc {prompt!r}: {type(exc).__name__}: {exc}")

    try:
        threads = [threading.Thread(target=f, args=(p,)) for p in PROMPTS for f in (http, grpc)]
        for t in threads:
            t.start()
        metrics = f"http://127.0.0.1:{stopping.metrics_port}/metrics"
        deadline = time.monotonic() + 60
        while llm_support.running(metrics, "tiny") < len(threads) and time.monotonic() < deadline and not got:
            time.sleep(0.05)
        in_flight = llm_support.running(metrics, "tiny")
        stopping.proc.send_signal(signal.SIGTERM)
        assert not got and in_flight == len(threads), f"{in_flight} running, {sorted(got)} done before SIGTERM"
        for t in threads:
            t.join(timeout=300)
        code = stopping.proc.wait(timeout=300)
        assert not errors, (errors, stopping.log_tail(6000))
        assert got == want
        assert code == 0, stopping.log_tail(6000)
    finally:
        stopping.stop()


def test_the_backends_metrics_are_on_tritons_port(served: tuple[Triton, Path]) -> None:
    triton, _ = served
    generate(triton, PROMPTS[2], stream=True)
    text = urllib.request.urlopen(f"http://127.0.0.1:{triton.metrics_port}/metrics", timeout=10).read().decode()
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:time_per_output_token_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:request_success_total"):
        assert f'{name}{{model="tiny"' in text, name
    generated = next(float(line.split()[-1]) for line in text.splitlines()
                     if line.startswith('vllm:generation_tokens_total{model="tiny"'))
    assert generated >= 16


def test_every_architecture_the_gate_accepts_is_one_the_engine_serves() -> None:
    """hfcheck.SERVED_ARCHITECTURES against vLLM's own registry: the gate never promises a model the engine lacks."""
    import subprocess

    from modelyard.convert.hfcheck import SERVED_ARCHITECTURES
    from tritonlocal import vllm_venv

    proc = subprocess.run([str(vllm_venv() / "bin" / "python"), "-c",
                           "import json; from vllm import ModelRegistry; "
                           "print('ARCHS ' + json.dumps(sorted(ModelRegistry.get_supported_archs())))"],
                          capture_output=True, text=True, timeout=300, check=True)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("ARCHS "))
    assert set(json.loads(line.removeprefix("ARCHS "))) >= SERVED_ARCHITECTURES, (
        sorted(SERVED_ARCHITECTURES - set(json.loads(line.removeprefix("ARCHS ")))))
