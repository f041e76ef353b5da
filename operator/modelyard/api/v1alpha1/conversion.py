"""spec.conversion: what the converter makes of a source model, how it proves the result, where it publishes.

When the section is present, each new revision first runs a conversion Job; its Triton pods are created only
after the converted model passed validation (docs/conversion.md).
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from modelyard.api.v1alpha1.common import ResourceRequirements, SecretReference, Spec, Toleration, cel


class Target(StrEnum):
    ONNX = "onnx"
    TORCHSCRIPT = "torchscript"
    TENSORRT = "tensorrt"


class Precision(StrEnum):
    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"


class Int8Mode(StrEnum):
    STATIC = "static"
    """Weights and activations in INT8, activation ranges calibrated on the samples (QDQ format)."""
    DYNAMIC = "dynamic"
    """Weights in INT8, activation scales computed per request (suits transformer MatMuls)."""


DEFAULT_TOLERANCE: dict[Precision, tuple[float, float]] = {
    Precision.FP32: (1e-4, 1e-3),
    Precision.FP16: (2e-2, 2e-2),
    Precision.INT8: (2.5e-1, 2.5e-1),
}
"""(atol, rtol) per precision: |converted - source| <= atol + rtol * |source| on every element."""

DEFAULT_MIN_TOP1 = {Precision.FP32: 1.0, Precision.FP16: 0.99, Precision.INT8: 0.9}


class Tolerance(Spec):
    atol: float | None = Field(default=None, ge=0, description="Absolute tolerance; the precision's default if unset.")
    rtol: float | None = Field(default=None, ge=0, description="Relative tolerance; the precision's default if unset.")
    min_top1_agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="For classifier outputs (2-D, one score per class): an output outside atol/rtol still passes "
        "when this share of samples keeps the source's arg-max class. Default: 1.0 fp32, 0.99 fp16, 0.9 int8.",
    )


class Samples(Spec):
    uri: str | None = Field(
        default=None,
        description="An .npz file with one array per input name (first axis: samples); generated from the "
        "signature when unset.",
    )
    count: int = Field(default=32, ge=1, le=4096, description="How many samples to generate.")
    seed: int = Field(default=0, description="Seed for generated samples, so a conversion is repeatable.")
    int_range: list[int] = Field(
        default=[0, 100],
        min_length=2,
        max_length=2,
        description="[low, high) of generated integer inputs (token ids must stay in the vocabulary).",
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

    target: Target = Field(default=Target.ONNX, description="onnx, torchscript or tensorrt (needs a GPU node).")
    precision: Precision = Field(default=Precision.FP32, description="fp32, fp16 or int8.")
    int8_mode: Int8Mode = Field(default=Int8Mode.STATIC, description="With int8: static (calibrated) or dynamic.")
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
        pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$",
        description="For format pytorch: the importable class (module:Class) whose state_dict the source file holds; "
        "it is loaded with torch.load(weights_only=True), never unpickled as code.",
    )

    def min_top1(self) -> float:
        if self.tolerance.min_top1_agreement is not None:
            return self.tolerance.min_top1_agreement
        return DEFAULT_MIN_TOP1[self.precision]

    def tolerances(self) -> tuple[float, float]:
        atol, rtol = DEFAULT_TOLERANCE[self.precision]
        return (
            self.tolerance.atol if self.tolerance.atol is not None else atol,
            self.tolerance.rtol if self.tolerance.rtol is not None else rtol,
        )
