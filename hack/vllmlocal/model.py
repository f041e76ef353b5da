"""The local stand-in for Triton's vLLM backend: `backends/vllm/model.py` of the local Triton.

Production runs Triton's vLLM image, whose backend is a Python model that drives vLLM's async engine on the GPUs.
Locally the same tritonserver (from the nvidia-pytriton wheel) loads this file for `backend: "vllm"` and runs the
real engine, vLLM's CPU build (hack/vllm-cpu/build.sh), in its own venv. It honours the backend's contract:

- model.json beside the version directory holds the engine arguments; on CPU, what a CPU cannot honour is
  replaced and said in the log: dtype float32, eager mode, one process (tensor and pipeline parallel size 1);
- inputs text_input, stream, sampling_parameters (JSON; numbers may come as strings), exclude_input_in_output,
  or, through the generate endpoints, the same as request parameters;
  output text_output: with stream, one response per new piece of text; without, one response with the whole text
  (the prompt first unless exclude_input_in_output); decoupled: the final flag ends every request;
- the backend's metric names (vllm:num_requests_running, vllm:num_requests_waiting, vllm:kv_cache_usage_perc,
  vllm:time_to_first_token_seconds, vllm:time_per_output_token_seconds, vllm:e2e_request_latency_seconds,
  vllm:prompt_tokens_total, vllm:generation_tokens_total, vllm:request_success_total), with the labels model and
  version, on Triton's metrics port.

MODELYARD_VLLM_DELAY_MS (test hook, the canary's "slower engine"): sleep this long before each request is handed
to the engine, which lengthens its time to first token as a slower engine would.
"""

from __future__ import annotations

import asyncio
import json

# Triton's backend stub starts Python without the environment's locale (ASCII): torch and vLLM read their own
# UTF-8 files with the default encoding.
import locale
import os
import sys
import threading
import time
import uuid
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils

locale.setlocale(locale.LC_CTYPE, "C.UTF-8")

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
                40.0, 80.0]
TPOT_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0]
E2E_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0]
INT_PARAMS = ("max_tokens", "min_tokens", "n", "best_of", "top_k", "seed", "logprobs")
FLOAT_PARAMS = ("temperature", "top_p", "min_p", "presence_penalty", "frequency_penalty", "repetition_penalty")
BOOL_PARAMS = ("ignore_eos", "skip_special_tokens")


def local_engine_args(args: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The engine arguments a CPU can honour, and what was changed."""
    out, changed = dict(args), []
    for key, want in (("dtype", "float32"), ("tensor_parallel_size", 1), ("pipeline_parallel_size", 1),
                      ("enforce_eager", True), ("kv_cache_dtype", "auto")):
        if out.get(key, want) != want:
            changed.append(f"{key} {out[key]} -> {want}")
        out[key] = want
    out.pop("gpu_memory_utilization", None)  # the CPU engine's KV cache is VLLM_CPU_KVCACHE_SPACE GiB
    return out, changed


def sampling_dict(raw: str | None) -> dict[str, Any]:
    """sampling_parameters as the backend takes them: JSON whose numbers may be strings."""
    params = json.loads(raw) if raw else {}
    for key in INT_PARAMS:
        if key in params:
            params[key] = int(params[key])
    for key in FLOAT_PARAMS:
        if key in params:
            params[key] = float(params[key])
    for key in BOOL_PARAMS:
        if key in params and isinstance(params[key], str):
            params[key] = params[key].lower() in ("1", "true")
    return params


class Metrics:
    def __init__(self, labels: dict[str, str]) -> None:
        M = pb_utils.MetricFamily
        self.families: list[Any] = []  # a family must outlive its metrics

        def family(name: str, kind: Any, text: str) -> Any:
            self.families.append(M(name=name, description=text, kind=kind))
            return self.families[-1]

        self.running = family("vllm:num_requests_running", M.GAUGE, "Requests the engine is running.").Metric(labels)
        self.waiting = family("vllm:num_requests_waiting", M.GAUGE, "Requests waiting for the engine.").Metric(labels)
        self.kv = family("vllm:kv_cache_usage_perc", M.GAUGE, "KV-cache usage; 1 is full.").Metric(labels)
        self.prompt = family("vllm:prompt_tokens_total", M.COUNTER, "Prompt tokens processed.").Metric(labels)
        self.generated = family("vllm:generation_tokens_total", M.COUNTER, "Tokens generated.").Metric(labels)
        self.success = family("vllm:request_success_total", M.COUNTER, "Requests that finished.").Metric(labels)
        self.ttft = family("vllm:time_to_first_token_seconds", M.HISTOGRAM,
                           "Time to first token in seconds.").Metric(labels, buckets=TTFT_BUCKETS)
        self.tpot = family("vllm:time_per_output_token_seconds", M.HISTOGRAM,
                           "Time per output token in seconds.").Metric(labels, buckets=TPOT_BUCKETS)
        self.e2e = family("vllm:e2e_request_latency_seconds", M.HISTOGRAM,
                          "End-to-end request latency in seconds.").Metric(labels, buckets=E2E_BUCKETS)


class TritonPythonModel:
    def initialize(self, args: dict[str, str]) -> None:
        self.logger = pb_utils.Logger
        self.model_config = json.loads(args["model_config"])
        assert pb_utils.using_decoupled_model_transaction_policy(self.model_config), \
            "the vLLM backend needs model_transaction_policy { decoupled: true }"
        path = os.path.join(args["model_repository"], args["model_version"], "model.json")
        with open(path) as fh:
            engine_args, changed = local_engine_args(json.load(fh))
        if changed:
            self.logger.log_info(f"[vllm local] on CPU: {', '.join(changed)}")
        self.delay = float(os.environ.get("MODELYARD_VLLM_DELAY_MS", "0")) / 1000
        self.metrics = Metrics({"model": args["model_name"], "version": args["model_version"]})
        # The engine starts its core and worker processes with multiprocessing spawn; inside Triton's backend stub
        # sys.executable is not a Python, so the children run the engine venv's interpreter.
        import multiprocessing

        multiprocessing.set_executable(os.environ.get("MODELYARD_VLLM_PYTHON", sys.executable))
        self.ongoing = 0  # requests handed to the engine whose final response is not sent yet
        self.ongoing_lock = threading.Lock()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vllm-loop", daemon=True)
        self.thread.start()
        self.engine = asyncio.run_coroutine_threadsafe(self._start(engine_args), self.loop).result()

    async def _start(self, engine_args: dict[str, Any]) -> Any:
        from vllm import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        return AsyncLLM.from_engine_args(AsyncEngineArgs(**engine_args), stat_loggers=[_stat_logger(self.metrics)])

    def execute(self, requests: list[Any]) -> None:
        for request in requests:
            with self.ongoing_lock:
                self.ongoing += 1
            asyncio.run_coroutine_threadsafe(self._generate(request), self.loop)
        return None

    async def _generate(self, request: Any) -> None:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        sender = request.get_response_sender()
        arrived = time.monotonic()
        ok = False
        try:
            prompt = _string(request, "text_input")
            # The generate endpoints carry the settings as request parameters; the infer protocol as inputs.
            extra = json.loads(request.parameters() or "{}")
            stream = _bool(request, "stream", bool(extra.pop("stream", False)))
            exclude = _bool(request, "exclude_input_in_output", bool(extra.pop("exclude_input_in_output", False)))
            raw = _string(request, "sampling_parameters", None)
            sampling = sampling_dict(raw) if raw is not None else sampling_dict(json.dumps(extra))
            # Pieces as they come either way: the metrics see each token's time, a stream sends each piece.
            params = SamplingParams(**sampling, output_kind=RequestOutputKind.DELTA)
            if self.delay:
                await asyncio.sleep(self.delay)
            first = last = None
            tokens = 0
            text = ""
            async for out in self.engine.generate(prompt, params, uuid.uuid4().hex):
                now = time.monotonic()
                piece = out.outputs[0]
                new_tokens = len(piece.token_ids)
                if new_tokens and first is None:
                    first = now
                    self.metrics.ttft.observe(now - arrived)
                    if out.prompt_token_ids:
                        self.metrics.prompt.increment(len(out.prompt_token_ids))
                elif new_tokens and last is not None:
                    self.metrics.tpot.observe((now - last) / new_tokens)
                if new_tokens:
                    last = now
                    tokens += new_tokens
                    self.metrics.generated.increment(new_tokens)
                if stream:
                    if piece.text:
                        sender.send(_response(piece.text))
                else:
                    text += piece.text
            if not stream:
                sender.send(_response(text if exclude else prompt + text))
            ok = True
        except Exception as exc:
            sender.send(pb_utils.InferenceResponse(output_tensors=[], error=pb_utils.TritonError(str(exc))))
        finally:
            sender.send(flags=pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL)
            self.metrics.e2e.observe(time.monotonic() - arrived)
            if ok:
                self.metrics.success.increment(1)
            with self.ongoing_lock:
                self.ongoing -= 1

    def finalize(self) -> None:
        # As the backend does: the generations in flight finish before the engine stops (Triton's
        # --exit-timeout-secs, and the pod's grace period, bound the wait).
        said = 0.0
        while getattr(self, "ongoing", 0) > 0:
            if time.monotonic() - said >= 5:
                self.logger.log_info(f"[vllm local] awaiting {self.ongoing} requests in flight")
                said = time.monotonic()
            time.sleep(0.1)
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.shutdown()
        self.loop.call_soon_threadsafe(self.loop.stop)


def _stat_logger(metrics: Metrics) -> Any:
    """A vLLM stat logger that puts the engine scheduler's own numbers on Triton's metrics: requests running and
    waiting, KV-cache usage (what the backend reports)."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class TritonStats(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
                   engine_idx: int = 0) -> None:
            if scheduler_stats is not None:
                metrics.running.set(scheduler_stats.num_running_reqs)
                metrics.waiting.set(scheduler_stats.num_waiting_reqs)
                metrics.kv.set(scheduler_stats.kv_cache_usage)

        def log_engine_initialized(self) -> None:
            pass

        def log(self) -> None:
            pass

    return TritonStats


def _string(request: Any, name: str, default: str | None = "") -> str | None:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return default
    value = tensor.as_numpy().reshape(-1)[0]
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _bool(request: Any, name: str, default: bool) -> bool:
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return default if tensor is None else bool(tensor.as_numpy().reshape(-1)[0])


def _response(text: str) -> Any:
    return pb_utils.InferenceResponse(output_tensors=[
        pb_utils.Tensor("text_output", np.asarray([text.encode("utf-8")], dtype=np.object_))])
