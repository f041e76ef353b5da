"""spec.conversion: what the converter makes of a source model, how it proves the result, where it publishes.

When the section is present, each new revision first runs a conversion Job; its Triton pods are created only
after the converted model passed validation (docs/conversion.md).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

from pydantic import Field
from pydantic.config import JsonDict

from modelyard.api.v1alpha1.common import (
    BYTE_SIZE_PATTERN,
    ResourceRequirements,
    SecretReference,
    Spec,
    Toleration,
    byte_size,
    cel,
)

IMPORTABLE = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"
"""module:Name, as Python imports it (modelClass, kerasCustomObjects)."""


class Target(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    TENSORRT = "tensorrt"
    TENSORFLOW_SAVEDMODEL = "tensorflow-savedmodel"
    """A SavedModel served as it is by Triton's TensorFlow backend: nothing converted, nothing validated."""


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Int8Mode(StrEnum):
    STATIC = "static"
    """Weights and activations in INT8, activation ranges calibrated on the samples (QDQ format)."""
    DYNAMIC = "dynamic"
    """Weights in INT8, activation scales computed per request (suits transformer MatMuls)."""


class Calibration(StrEnum):
    MINMAX = "minmax"
    """Each activation's range is its minimum and maximum over the calibration samples."""
    PERCENTILE = "percentile"
    """The 99.999th percentile of each activation's magnitude: rare outliers are clipped."""
    ENTROPY = "entropy"
    """The range that keeps the activation's histogram closest (KL divergence) to the float one."""


DEFAULT_TOLERANCE: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (1e-4, 1e-3),
    Precision.FP16: (2e-2, 2e-2),
    Precision.INT8: (2.5e-1, 0.0),
}
"""(atol, rtol) per precision: |converted - source| <= atol * spread + rtol * |source| on every element, where
spread is the standard deviation of the source's output over the samples (an absolute atol set in the spec
replaces atol * spread)."""

DEFAULT_MAX_SOURCE_SIZE = "20Gi"
DEFAULT_MAX_SAMPLES_SIZE = "1Gi"
"""Unset (so that a new field does not roll every converted model to a new revision), these apply."""

DEFAULT_MIN_TOP1 = {Precision.FP32: 1.0, Precision.FP16: 0.99, Precision.INT8: 0.99}

DEFAULT_RMS = {Precision.FP32: 1e-4, Precision.FP16: 1e-2, Precision.INT8: 1e-1}
"""For classifier outputs: the root-mean-square error, as a share of the output's spread."""


class Tolerance(Spec):
    atol: float | None = Field(
        default=None, ge=0,
        description="Absolute tolerance. Unset: the precision's default times the output's spread (the standard "
        "deviation of the source's output over the samples): fp32 1e-4, fp16 2e-2, int8 0.25.",
    )
    rtol: float | None = Field(
        default=None, ge=0, description="Relative tolerance. Unset: fp32 1e-3, fp16 2e-2, int8 0.",
    )
    classifier_outputs: list[str] | None = Field(
        default=None,
        max_length=16,
        description="Outputs that hold one score per class (samples x classes). These are judged by top-1 "
        "agreement with the source (minTop1Agreement) and by their root-mean-square error (rms) instead of "
        "element-wise atol/rtol; no other output is judged by top-1.",
    )
    min_top1_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="For classifierOutputs: the share of samples that must keep the source's arg-max class. "
        "Default: 1.0 fp32, 0.99 fp16 and int8.",
    )
    rms: float | None = Field(
        default=None, ge=0,
        description="For classifierOutputs: the largest root-mean-square error, as a share of the output's spread. "
        "Default: fp32 1e-4, fp16 1e-2, int8 0.1.",
    )
    max_perplexity_ratio: float | None = Field(
        default=None, ge=1, le=100,
        description="For a huggingface checkpoint whose weights the engine casts (serving.vllm.dtype): the largest "
        "ratio of the cast model's perplexity on the prompts to the checkpoint's. Default 1.05. Its next-token "
        "top-1 agreement over the prompts' positions is held to minTop1Agreement (default 0.98 there).",
    )


SAMPLES_PATH_RULES: JsonDict = {"x-kubernetes-validations": [cel(
    "self.matches('^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?)?/') && !self.matches('[[:cntrl:]]') && "
    "!self.matches('(^|/)[.][.](/|$)')",
    "a samples file is pvc://<claim>/<path> (the source's claim) or an absolute path under the source's mount "
    "(/mnt/source/...), without '..' segments or control characters",
)]}


class Samples(Spec):
    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel("self.intRange[0] < self.intRange[1]",
                    "conversion.samples.intRange is [low, high) with low < high, such as [0, 30522]"),
                cel("!has(self.intRanges) || self.intRanges.all(k, self.intRanges[k][0] < self.intRanges[k][1])",
                    "each conversion.samples.intRanges entry is [low, high) with low < high"),
            ]
        }
    }

    uri: str | None = Field(
        default=None,
        max_length=1024,
        description="An .npz file with one array per input name (first axis: samples); generated from the "
        "signature when unset. In the conversion Job it is read from the source's claim only: pvc://<claim>/<path> "
        "or /mnt/source/<path>. With int8 static and no calibrationUri, its first quarter calibrates and the rest "
        "validates, so no sample does both.",
        json_schema_extra=SAMPLES_PATH_RULES,
    )
    calibration_uri: str | None = Field(
        default=None, max_length=1024,
        description="An .npz file like uri, for INT8 calibration only (the user's own data).",
        json_schema_extra=SAMPLES_PATH_RULES,
    )
    count: int = Field(
        default=128, ge=1, le=4096,
        description="How many validation samples to generate (128: one changed top-1 is 0.8%, under int8's 1%).",
    )
    calibration_count: int = Field(
        default=64, ge=1, le=4096,
        description="How many INT8 calibration samples to generate, drawn apart from the validation samples.",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1,
                      description="Seed for generated samples, so a conversion is repeatable.")
    int_range: list[int] = Field(
        default=[0, 100],
        min_length=2,
        max_length=2,
        description="[low, high) of generated integer inputs (token ids must stay in the vocabulary). Inputs "
        "named like attention masks, token types or positions get masks, 0/1 and positions instead.",
    )
    int_ranges: dict[str, Annotated[list[int], Field(min_length=2, max_length=2)]] | None = Field(
        default=None,
        max_length=64,
        description="[low, high) for named integer inputs, over intRange and the name rules.",
    )
    prompts: list[Annotated[str, Field(min_length=1, max_length=8192)]] | None = Field(
        default=None,
        max_length=64,
        description="For a huggingface checkpoint: the prompts the gate checks before anything serves (the "
        "tokenizer round-trips them, each generates tokens, greedy generation repeats) and, for a dtype cast, "
        "measures the cast on. Unset: eight built-in prompts (docs/llm.md).",
    )
    lengths: list[Annotated[int, Field(ge=1, le=65536)]] = Field(
        default=[8, 16, 11, 5],
        min_length=1,
        max_length=16,
        description="Lengths given to variable (-1) dimensions of generated inputs, one per batch in turn, so a "
        "model that fixed its length at export fails validation.",
    )


class Pruning(Spec):
    sparsity: float = Field(gt=0, lt=1, description="Share of the smallest-magnitude weights set to zero.")


class Conversion(Spec):
    """What to make of the source model and how to prove it."""

    model_config = Spec.model_config | {
        "json_schema_extra": {
            "x-kubernetes-validations": [
                cel(
                    "(!has(self.storeEndpoint) && !has(self.storeCredentialsSecretRef)) || "
                    "(has(self.store) && self.store.startsWith('s3://'))",
                    "conversion.storeEndpoint and conversion.storeCredentialsSecretRef go with an s3:// store",
                ),
            ]
        }
    }

    target: Target = Field(
        default=Target.ONNX,
        description="onnx, torchscript, tensorrt (needs a GPU node), or tensorflow-savedmodel: a SavedModel source "
        "served as it is by Triton's TensorFlow backend (a SavedModel with target onnx is converted by tf2onnx).",
    )
    precision: Precision = Field(default=Precision.FP32, description="fp32, fp16 or int8.")
    int8_mode: Int8Mode = Field(default=Int8Mode.STATIC, description="With int8: static (calibrated) or dynamic.")
    int8_calibration: Calibration = Field(
        default=Calibration.MINMAX, description="With int8 static: how activation ranges are chosen from the "
        "calibration samples (minmax, percentile or entropy).",
    )
    int8_fallback_attempts: int = Field(
        default=4, ge=0, le=8,
        description="With int8, when validation fails: how many more quantizations to try, each keeping more of "
        "the nodes most sensitive to int8 (1, 2, 4, 8, ...) in fp32; in dynamic mode the first of them keeps every "
        "node int8 with 7-bit weights (no saturation on x86 CPUs without VNNI). 0: none.",
    )
    opset: int = Field(default=17, ge=13, le=23, description="ONNX opset of the exported model.")
    tolerance: Tolerance = Field(default_factory=Tolerance, description="How close the result must stay.")
    samples: Samples = Field(default_factory=Samples, description="Inputs for validation and INT8 calibration.")
    store: str | None = Field(
        default=None,
        max_length=1024,
        description="Where converted repositories are published, under <store>/<key>/: pvc://<claim>/<path> (the "
        "Job writes it, the Triton pods mount it read-only: ReadWriteMany, or one node) or s3://<bucket>/<prefix> "
        "(Triton reads it natively). Required when the operator converts; `modelyard convert` takes --out instead.",
        json_schema_extra={"x-kubernetes-validations": [cel(
            "self.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$') || "
            "self.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')",
            "conversion.store is pvc://<claim-name>/<path> or s3://<bucket>/<prefix>",
        ), cel(
            "!self.matches('[[:cntrl:][:space:]]') && !self.matches('/\\\\.\\\\.(/|$)')",
            "conversion.store may not contain spaces, control characters or '..' path segments",
        )]},
    )
    store_endpoint: str | None = Field(
        default=None,
        max_length=512,
        pattern=r"^https?://[A-Za-z0-9.-]+(:[0-9]+)?$",
        description="With an s3:// store outside AWS (MinIO, Ceph): the endpoint, such as http://minio.storage:9000.",
    )
    store_credentials_secret_ref: SecretReference | None = Field(
        default=None,
        description="With an s3:// store: Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and optionally "
        "AWS_DEFAULT_REGION, for the converter (which writes) and the Triton pods (which read).",
    )
    timeout_seconds: int = Field(
        default=3600, ge=60, le=86400, description="The conversion Job's activeDeadlineSeconds."
    )
    max_source_size: str | None = Field(
        default=None,
        pattern=BYTE_SIZE_PATTERN,
        max_length=16,
        description="The most the source may hold (all its files); default 20Gi. A larger one is refused as it "
        "streams (SourceRefused, with the size). The converter's scratch volume (/tmp) is sized from it: twice "
        "this plus 1Gi, room for the source and what is made of it.",
    )
    max_samples_size: str | None = Field(
        default=None,
        pattern=BYTE_SIZE_PATTERN,
        max_length=16,
        description="The most a samples file (samples.uri, samples.calibrationUri) may unpack to; default 1Gi. It "
        "is read from the archive before any array is: a small .npz that inflates to many GiB is refused, not loaded.",
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory for the converter container (default 1 CPU, 4Gi)."
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Node labels the converter pod requires.")
    tolerations: list[Toleration] | None = Field(
        default=None, description="Tolerations for the converter pod.", max_length=64
    )
    pruning: Pruning | None = Field(default=None, description="Magnitude pruning before export (torch sources).")
    model_class: str | None = Field(
        default=None,
        pattern=IMPORTABLE,
        description="For format pytorch: the importable class (module:Class) whose state_dict the source file holds; "
        "it is loaded with torch.load(weights_only=True), never unpickled as code. A factory function (module:build) "
        "that returns the module works the same. Its code must be in the converter image (docs/conversion.md).",
    )
    model_class_args: dict[str, Any] | None = Field(
        default=None,
        description="Keyword arguments for modelClass, as JSON (numbers, strings, lists, objects): a config, say. "
        "A factory function can turn them into the config object its class takes.",
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    keras_custom_objects: list[Annotated[str, Field(pattern=IMPORTABLE, max_length=253)]] | None = Field(
        default=None,
        max_length=64,
        description="For format keras: the classes from outside Keras that the model uses (custom layers, "
        "activations, initializers), each an importable module:Class. They are imported and handed to Keras's loader "
        "(custom_objects); a class registered with @keras.saving.register_keras_serializable is found by its "
        "registered name too. Safe mode stays on: a Lambda layer's code is never run. Their code must be in the "
        "converter image (docs/conversion.md).",
    )

    def source_limit(self) -> int:
        """maxSourceSize in bytes."""
        return byte_size(self.max_source_size or DEFAULT_MAX_SOURCE_SIZE)

    def samples_limit(self) -> int:
        """maxSamplesSize in bytes."""
        return byte_size(self.max_samples_size or DEFAULT_MAX_SAMPLES_SIZE)

    def min_top1(self) -> float:
        if self.tolerance.min_top1_agreement is not None:
            return self.tolerance.min_top1_agreement
        return DEFAULT_MIN_TOP1[self.precision]

    def tolerances(self) -> tuple[float | None, float, float]:
        """(absolute atol or None, atol as a share of the spread, rtol)."""
        atol, rtol = DEFAULT_TOLERANCE[self.precision]
        return (self.tolerance.atol, atol, self.tolerance.rtol if self.tolerance.rtol is not None else rtol)

    def rms(self) -> float:
        return self.tolerance.rms if self.tolerance.rms is not None else DEFAULT_RMS[self.precision]
