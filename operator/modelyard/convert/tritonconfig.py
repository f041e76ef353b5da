"""config.pbtxt from Triton's own ModelConfig protobuf, written with protobuf's text_format: no templates."""

from __future__ import annotations

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from modelyard.api.v1alpha1 import DataType, Serving
from modelyard.convert.models import Tensor

PLATFORMS = {"onnx": "onnxruntime_onnx", "torchscript": "pytorch_libtorch", "tensorrt": "tensorrt_plan",
             "savedmodel": "tensorflow_savedmodel"}

_TYPES = {
    DataType.BOOL: mc.TYPE_BOOL, DataType.UINT8: mc.TYPE_UINT8, DataType.INT8: mc.TYPE_INT8,
    DataType.INT16: mc.TYPE_INT16, DataType.INT32: mc.TYPE_INT32, DataType.INT64: mc.TYPE_INT64,
    DataType.FP16: mc.TYPE_FP16, DataType.BF16: mc.TYPE_BF16, DataType.FP32: mc.TYPE_FP32,
    DataType.FP64: mc.TYPE_FP64, DataType.BYTES: mc.TYPE_STRING,
}


def model_config(name: str, artifact: str, inputs: list[Tensor], outputs: list[Tensor], serving: Serving,
                 backend: str | None = None) -> mc.ModelConfig:
    """The ModelConfig for one model. `backend` overrides the platform (the python backend for local CPU serving)."""
    cfg = mc.ModelConfig(name=name, max_batch_size=serving.max_batch_size)
    if backend:
        cfg.backend = backend
    else:
        cfg.platform = PLATFORMS[artifact]
    for t in inputs:
        cfg.input.add(name=t.name, data_type=_TYPES[t.data_type], dims=list(t.dims))
    for t in outputs:
        cfg.output.add(name=t.name, data_type=_TYPES[t.data_type], dims=list(t.dims))
    if serving.max_batch_size > 0 and serving.dynamic_batching.enabled:
        cfg.dynamic_batching.max_queue_delay_microseconds = serving.dynamic_batching.max_queue_delay_microseconds
        cfg.dynamic_batching.preferred_batch_size.extend(serving.dynamic_batching.preferred_batch_sizes or [])
    on_gpu = serving.gpus > 0 and backend is None
    cfg.instance_group.add(
        count=serving.instance_count, kind=mc.ModelInstanceGroup.KIND_GPU if on_gpu else mc.ModelInstanceGroup.KIND_CPU
    )
    return cfg


def to_pbtxt(cfg: mc.ModelConfig) -> str:
    return str(text_format.MessageToString(cfg))


def vllm_model_config(name: str) -> str:
    """config.pbtxt for Triton's vLLM backend, with the backend's inputs and output: decoupled (one response per
    generated piece when streaming), no Triton batching (the engine batches continuously), one engine per pod
    (KIND_MODEL: the engine places itself on the pod's GPUs), the backend's vllm: metrics reported."""
    cfg = mc.ModelConfig(name=name, backend="vllm", max_batch_size=0)
    cfg.model_transaction_policy.decoupled = True
    cfg.input.add(name="text_input", data_type=mc.TYPE_STRING, dims=[1])
    cfg.input.add(name="stream", data_type=mc.TYPE_BOOL, dims=[1], optional=True)
    cfg.input.add(name="sampling_parameters", data_type=mc.TYPE_STRING, dims=[1], optional=True)
    cfg.input.add(name="exclude_input_in_output", data_type=mc.TYPE_BOOL, dims=[1], optional=True)
    cfg.output.add(name="text_output", data_type=mc.TYPE_STRING, dims=[-1])
    cfg.instance_group.add(count=1, kind=mc.ModelInstanceGroup.KIND_MODEL)
    cfg.parameters["REPORT_CUSTOM_METRICS"].string_value = "true"
    return to_pbtxt(cfg)
