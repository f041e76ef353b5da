"""spec.serving.runtime and spec.serving.vllm: large language models on Triton's vLLM backend.

A `format: huggingface` checkpoint (config.json, *.safetensors, the tokenizer) is staged once by the conversion
Job, checked, and served by Triton's vLLM backend; these are the engine's settings, written into the model
repository's `1/model.json` (docs/llm.md).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from modelyard.api.v1alpha1.common import Spec


class Runtime(StrEnum):
    TENSOR = "tensor"
    """Triton's tensor backends (ONNX Runtime, TensorRT, libtorch, TensorFlow, python): fixed-shape tensor models."""
    VLLM = "vllm"
    """Triton's vLLM backend: a Hugging Face causal language model, generated token by token, streamed."""


class LLMDType(StrEnum):
    AUTO = "auto"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


class KVCacheDType(StrEnum):
    AUTO = "auto"
    FP8 = "fp8"
    FP8_E4M3 = "fp8_e4m3"
    FP8_E5M2 = "fp8_e5m2"


class LLMQuantization(StrEnum):
    AWQ = "awq"
    GPTQ = "gptq"
    FP8 = "fp8"
    COMPRESSED_TENSORS = "compressed-tensors"


DEFAULT_MAX_NUM_SEQS = 256
LLM_TERMINATION_GRACE_SECONDS = 300
"""serving.terminationGracePeriodSeconds unset, for runtime vllm: streams in flight get this long to finish."""
DEFAULT_GPU_MEMORY_UTILIZATION = 0.9


class VLLMEngine(Spec):
    """The vLLM engine's settings. Unset fields take vLLM's own default, written out in model.json."""

    max_model_length: int | None = Field(
        default=None, ge=16, le=1 << 21,
        description="Longest sequence, prompt and output together, in tokens. Unset: the model's own "
        "(max_position_embeddings in config.json). A shorter one leaves more KV cache for concurrent sequences.",
    )
    max_concurrent_sequences: int = Field(
        default=DEFAULT_MAX_NUM_SEQS, ge=1, le=4096,
        description="Sequences the engine runs at once (vLLM's max_num_seqs); more requests wait in its queue "
        "(the requestsWaiting scaling metric).",
    )
    gpu_memory_utilization: float = Field(
        default=DEFAULT_GPU_MEMORY_UTILIZATION, gt=0, le=1,
        description="Share of each GPU's memory the engine may take for weights, activations and the KV cache.",
    )
    dtype: LLMDType = Field(
        default=LLMDType.AUTO,
        description="Weights and activations: auto (the checkpoint's torch_dtype; float32 checkpoints run in "
        "float16 on GPUs), float16, bfloat16 or float32. A dtype other than the checkpoint's is a cast, measured "
        "against the checkpoint by the gate (docs/llm.md).",
    )
    kv_cache_dtype: KVCacheDType = Field(
        default=KVCacheDType.AUTO,
        description="KV-cache element type: auto (the model's dtype), or fp8 / fp8_e4m3 / fp8_e5m2 (half the "
        "memory per token, on GPUs that have fp8).",
    )
    prefix_caching: bool = Field(
        default=True,
        description="Reuse the KV cache of a prompt prefix that an earlier request computed (system prompts, "
        "chat history).",
    )
    quantization: LLMQuantization | None = Field(
        default=None,
        description="The method of a pre-quantized checkpoint: awq, gptq, fp8 or compressed-tensors. It must match "
        "the checkpoint's quantization_config; unset, vLLM reads it from there.",
    )
    tensor_parallel_size: int | None = Field(
        default=None, ge=1, le=16,
        description="GPUs one copy of the model is split across (tensor parallelism). Unset: serving.gpus (1 on "
        "CPU). It must divide serving.gpus; a divisor below it splits the layers across the rest "
        "(pipeline parallelism: gpus / tensorParallelSize stages).",
    )

    def tensor_parallel(self, gpus: int) -> int:
        return self.tensor_parallel_size or max(gpus, 1)

    def pipeline_parallel(self, gpus: int) -> int:
        return max(gpus, 1) // self.tensor_parallel(gpus)
