"""ModelDeployment v1alpha1: the spec a user writes and the status the operator reports.

These models are the single source of truth: `modelyard crd` turns them into the CRD's OpenAPI schema, so a
`Field(description=...)` here is what `kubectl explain modeldeployment.spec...` prints, and a CEL rule in
`x-kubernetes-validations` is what `kubectl apply` answers with when a manifest breaks it.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from modelyard.api.conditions import Condition
from modelyard.api.v1alpha1.common import (
    Affinity,
    Observed,
    ResourceRequirements,
    SecretReference,
    Spec,
    Toleration,
    cel,
)
from modelyard.api.v1alpha1.conversion import Conversion
from modelyard.api.v1alpha1.llm import LLM_TERMINATION_GRACE_SECONDS, Runtime, VLLMEngine
from modelyard.api.v1alpha1.rollout import Rollout, RolloutStatus, Traffic
from modelyard.api.v1alpha1.scaling import Scaling, ScalingStatus

GROUP = "modelyard.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAME = "mdep"
CATEGORY = "modelyard"

DEFAULT_TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:24.10-py3"
"""Triton 2.51, the same server version the test suite runs (nvidia-pytriton 0.7.0 ships it)."""
DEFAULT_VLLM_IMAGE = "nvcr.io/nvidia/tritonserver:25.10-vllm-python-py3"
"""Triton's vLLM container: the server, its vllm backend and vLLM with CUDA. Used for serving.runtime vllm while
serving.image is left at its default (the tensor image)."""


def _defaults(model: type[BaseModel]) -> dict[str, Any]:
    """A section's defaults in full, as the CRD default of the section (the API server validates it with CEL)."""
    return model().model_dump(mode="json", by_alias=True, exclude_none=True)


# --- spec.model ------------------------------------------------------------------------------------------------


class ModelFormat(StrEnum):
    PYTORCH = "pytorch"
    TORCHSCRIPT = "torchscript"
    ONNX = "onnx"
    TENSORFLOW_SAVEDMODEL = "tensorflow-savedmodel"
    KERAS = "keras"
    HUGGINGFACE = "huggingface"
    """A Hugging Face checkpoint directory: config.json, *.safetensors, the tokenizer (served by runtime vllm)."""


class DataType(StrEnum):
    """Tensor element types, named as on Triton's KServe v2 wire protocol."""

    BOOL = "BOOL"
    UINT8 = "UINT8"
    INT8 = "INT8"
    INT16 = "INT16"
    INT32 = "INT32"
    INT64 = "INT64"
    FP16 = "FP16"
    BF16 = "BF16"
    FP32 = "FP32"
    FP64 = "FP64"
    BYTES = "BYTES"


class TensorSpec(Spec):
    name: str = Field(description="Tensor name as the model declares it.", min_length=1, max_length=128)
    data_type: DataType = Field(description="Element type, as on Triton's wire protocol (FP32, INT64, BYTES, ...).")
    shape: list[int] = Field(
        description="Dimensions without the batch dimension; -1 marks a variable dimension.",
        max_length=16,
        json_schema_extra={"items": {"type": "integer", "minimum": -1}},
    )


class ModelSignature(Spec):
    inputs: list[TensorSpec] = Field(
        description="Input tensors, in the order the model takes them.",
        min_length=1,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )
    outputs: list[TensorSpec] = Field(
        description="Output tensors, in the order the model returns them.",
        min_length=1,
        max_length=64,
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]},
    )


class ModelSource(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "self.uri.matches('^(s3|pvc|http|https)://.+')",
                    "model.uri must start with s3://, pvc://, http:// or https:// and name a location",
                ),
                cel(
                    "!self.uri.startsWith('pvc://') || self.uri.matches('^pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?(/.*)?$')",
                    "a pvc:// URI is pvc://<claim-name>/<path> where <claim-name> is a PersistentVolumeClaim name "
                    "(lower case letters, digits and '-')",
                ),
                cel(
                    "!self.uri.matches('[[:cntrl:][:space:]]')",
                    "model.uri may not contain spaces or control characters (percent-encode them in http(s) URLs)",
                ),
                cel(
                    "!self.uri.matches('^(s3|pvc)://') || !self.uri.matches('/\\\\.\\\\.(/|$)')",
                    "model.uri may not contain '..' path segments: the path is read inside the bucket or claim",
                ),
                cel(
                    "!self.uri.startsWith('s3://') || self.uri.matches('^s3://[a-z0-9][a-z0-9.-]{1,61}[a-z0-9](/.*)?$')",
                    "an s3:// URI is s3://<bucket>/<key>, and a bucket name is 3 to 63 lower case letters, digits, "
                    "'.' and '-'",
                ),
                cel(
                    "!self.uri.matches('^https?://[^/]*@')",
                    "an http(s):// model.uri may not carry credentials (user:password@): every reader of the "
                    "ModelDeployment would see them; use an s3:// source with model.credentialsSecretRef",
                ),
                cel(
                    "!self.uri.matches('^https?://') || isURL(self.uri)",
                    "an http(s):// model.uri must be a URL such as https://host/path/model.onnx",
                ),
                cel(
                    "!has(self.credentialsSecretRef) || self.uri.startsWith('s3://')",
                    "model.credentialsSecretRef applies to s3:// sources only: a pvc:// source is read through the "
                    "volume mount and an http(s):// source without credentials (a Secret named here would be "
                    "handed to the converter for nothing)",
                ),
            ]
        }
    )

    uri: str = Field(
        description=(
            "Where the model is: s3://bucket/path, pvc://claim/path or http(s)://host/path. Until the conversion "
            "stage exists, an s3:// or pvc:// location must hold a Triton model repository."
        ),
        min_length=1,
        max_length=2048,
    )
    format: ModelFormat = Field(
        description="The artifact's format: pytorch, torchscript, onnx, keras (a .keras or .h5 file, converted "
        "to ONNX), tensorflow-savedmodel (served as it is), or huggingface: a language model's checkpoint "
        "directory (config.json, *.safetensors, tokenizer files) on pvc:// or under an s3:// prefix, served by "
        "serving.runtime vllm."
    )
    credentials_secret_ref: SecretReference | None = Field(
        default=None,
        description=(
            "Secret with the credentials to read an s3:// source: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and "
            "optionally AWS_SESSION_TOKEN, AWS_DEFAULT_REGION, AWS_ENDPOINT_URL."
        ),
    )
    signature: ModelSignature | None = Field(
        default=None, description="Input and output tensors. Optional where the format records them (ONNX)."
    )


# --- spec.serving ----------------------------------------------------------------------------------------------

_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_PATH_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
IMAGE_REFERENCE = (
    rf"^(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*(?::[0-9]+)?/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$"
)
"""The distribution reference grammar (github.com/distribution/reference), without IPv6 registry addresses."""


def _cel_string(regex: str) -> str:
    """A regular expression as a single-quoted CEL string literal."""
    assert "'" not in regex
    return "'" + regex.replace("\\", "\\\\") + "'"



_MODEL_CONFIG_NOTE = (
    " Written into the model's config.pbtxt by the conversion stage (spec.conversion); without it, the "
    "config.pbtxt in the model repository decides."
)


class DynamicBatching(Spec):
    enabled: bool = Field(default=True, description="Let Triton merge concurrent requests into one batch.")
    preferred_batch_sizes: list[int] | None = Field(
        default=None,
        description="Batch sizes Triton tries to form; each at most serving.maxBatchSize.",
        max_length=16,
        json_schema_extra={"items": {"type": "integer", "minimum": 1}},
    )
    max_queue_delay_microseconds: int = Field(
        default=100, ge=0, le=10_000_000, description="How long a request may wait for a batch to fill."
    )


class Serving(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    f"self.image.matches({_cel_string(IMAGE_REFERENCE)})",
                    "serving.image must be an image reference such as nvcr.io/nvidia/tritonserver:24.10-py3: a "
                    "lower-case repository path, an optional :tag and @digest, no spaces",
                ),
                cel(
                    "self.gpuResourceName.contains('/') && "
                    "!self.gpuResourceName.matches('^([^/]*[.])?kubernetes[.]io/')",
                    "serving.gpuResourceName must be an extended resource such as nvidia.com/gpu (a domain-prefixed "
                    "name outside kubernetes.io), not a standard resource such as cpu or memory",
                ),
                cel(
                    "self.maxBatchSize > 0 || !self.dynamicBatching.enabled",
                    "serving.dynamicBatching needs serving.maxBatchSize > 0 "
                    "(Triton batches only models that take a batch dimension); set dynamicBatching.enabled: false",
                ),
                cel(
                    "!has(self.dynamicBatching.preferredBatchSizes) || "
                    "self.dynamicBatching.preferredBatchSizes.all(s, s <= self.maxBatchSize)",
                    "every serving.dynamicBatching.preferredBatchSizes entry must be at most serving.maxBatchSize",
                ),
                cel(
                    "!has(self.vllm) || (has(self.runtime) && self.runtime == 'vllm')",
                    "serving.vllm holds the vLLM engine's settings: it needs serving.runtime: vllm",
                ),
                cel(
                    "!has(self.vllm) || !has(self.vllm.tensorParallelSize) || (self.gpus == 0 ? "
                    "self.vllm.tensorParallelSize == 1 : self.gpus % self.vllm.tensorParallelSize == 0)",
                    "serving.vllm.tensorParallelSize must divide serving.gpus (one copy of the model is split "
                    "across that many GPUs of the replica); on CPU (serving.gpus 0) it is 1",
                ),
                cel(
                    "!has(self.resources) || ("
                    "(!has(self.resources.limits) || !(self.gpuResourceName in self.resources.limits)) && "
                    "(!has(self.resources.requests) || !(self.gpuResourceName in self.resources.requests)))",
                    "ask for GPUs with serving.gpus, not serving.resources: the operator sets the "
                    "serving.gpuResourceName limit itself",
                ),
            ]
        }
    )

    image: str = Field(
        default=DEFAULT_TRITON_IMAGE,
        description="Triton Inference Server image. With runtime vllm, left at this default, Triton's vLLM image "
        f"({DEFAULT_VLLM_IMAGE}) serves instead.",
        min_length=1, max_length=512,
    )
    runtime: Runtime | None = Field(
        default=None,
        description="What serves the model in Triton: tensor (the default: ONNX Runtime, TensorRT, libtorch, "
        "TensorFlow) or vllm (Triton's vLLM backend, for model.format huggingface: generation, streaming, "
        "continuous batching).",
    )
    vllm: VLLMEngine | None = Field(
        default=None,
        description="With runtime vllm: the engine's settings (its model.json). Unset, each takes its default.",
    )
    gpus: int = Field(default=1, ge=0, le=16, description="GPUs per replica; 0 serves on CPU.")
    gpu_resource_name: str = Field(
        default="nvidia.com/gpu",
        description="Extended resource that counts GPUs on the nodes (nvidia.com/gpu, or a MIG profile resource).",
        pattern=r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[a-zA-Z0-9]([-a-zA-Z0-9_.]*[a-zA-Z0-9])?$",
        max_length=253,
    )
    replicas: int | None = Field(
        default=None, ge=1, le=1000,
        description="Triton pods for the serving revision; 1 when unset. Leave it unset with spec.scaling: the "
        "autoscaler sets the count.")
    termination_grace_period_seconds: int | None = Field(
        default=None, ge=5, le=3600,
        description="How long a Triton pod that is stopped (scaled in, a replaced or rolled-back revision) has to "
        "finish the requests it holds, streamed generations included: Triton takes no new request and waits for "
        "those in flight up to this less 5 seconds (--exit-timeout-secs), then exits; the pod is killed at this. "
        f"Unset: {LLM_TERMINATION_GRACE_SECONDS} with runtime vllm (a long generation streams for minutes), "
        "otherwise Kubernetes' 30.",
    )
    max_batch_size: int = Field(
        default=8,
        ge=0,
        le=4096,
        description="Largest batch Triton forms; 0 for models without a batch dimension." + _MODEL_CONFIG_NOTE,
    )
    dynamic_batching: DynamicBatching = Field(
        default_factory=DynamicBatching,
        description="Triton's dynamic batcher." + _MODEL_CONFIG_NOTE,
        json_schema_extra={"default": _defaults(DynamicBatching)},
    )
    instance_count: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Model instances per GPU (per pod on CPU), Triton's instance_group count." + _MODEL_CONFIG_NOTE,
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="CPU and memory for the Triton container. GPUs come from serving.gpus."
    )
    node_selector: dict[str, str] | None = Field(default=None, description="Node labels the Triton pods require.")
    tolerations: list[Toleration] | None = Field(
        default=None, description="Tolerations for the Triton pods, for example of a GPU node taint.", max_length=64
    )
    affinity: Affinity | None = Field(
        default=None,
        description="Pod affinity, as on a Pod (nodeAffinity, podAffinity, podAntiAffinity), typed as core/v1 has it.",
    )


class ModelDeploymentSpec(Spec):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                cel(
                    "!has(self.conversion) || has(self.conversion.store)",
                    "conversion.store (pvc://<claim>/<path>) is required: it is where the converted model is "
                    "published for the Triton pods",
                ),
                cel(
                    "!has(self.rollout) || self.rollout.strategy != 'canary' || has(self.traffic)",
                    "rollout.strategy canary needs traffic.gateway: the canary's share of requests is set by the "
                    "weights of the model's HTTPRoute",
                ),
                cel(
                    "!has(self.scaling) || !has(self.serving.replicas)",
                    "serving.replicas and scaling are mutually exclusive: with scaling, the autoscaler sets the "
                    "replica count between scaling.minReplicas and scaling.maxReplicas",
                ),
                cel(
                    "!has(self.scaling) || self.scaling.minReplicas > 0 || has(self.traffic)",
                    "scaling.minReplicas 0 needs traffic.gateway: at zero, a request through the gateway is what "
                    "wakes the model (its counter exists when no Triton pod does)",
                ),
                cel(
                    "self.model.format != 'huggingface' || (has(self.serving.runtime) && "
                    "self.serving.runtime == 'vllm')",
                    "model.format huggingface is served by Triton's vLLM backend: set serving.runtime: vllm",
                ),
                cel(
                    "!has(self.serving.runtime) || self.serving.runtime != 'vllm' || "
                    "self.model.format == 'huggingface'",
                    "serving.runtime vllm serves a Hugging Face checkpoint: set model.format: huggingface (a "
                    "directory with config.json, *.safetensors and the tokenizer files)",
                ),
                cel(
                    "self.model.format != 'huggingface' || (has(self.conversion) && "
                    "self.model.uri.matches('^(pvc|s3)://'))",
                    "a huggingface checkpoint is a directory on pvc:// or under an s3:// prefix, staged and checked "
                    "by the conversion stage before it serves: add conversion.store",
                ),
                cel(
                    "self.model.format != 'huggingface' || !has(self.model.signature)",
                    "model.signature is for tensor models: a huggingface checkpoint takes text (text_input) and "
                    "returns text (text_output)",
                ),
                cel(
                    "self.model.format != 'huggingface' || !has(self.conversion) || "
                    "(self.conversion.target == 'onnx' && self.conversion.precision == 'fp32' && "
                    "!has(self.conversion.pruning) && !has(self.conversion.modelClass) && "
                    "!has(self.conversion.kerasCustomObjects) && (!has(self.conversion.samples) || "
                    "(!has(self.conversion.samples.uri) && !has(self.conversion.samples.calibrationUri))))",
                    "conversion.target, precision, pruning, modelClass, kerasCustomObjects and samples.uri are "
                    "tensor-model settings: for a huggingface checkpoint the weights' dtype is serving.vllm.dtype "
                    "and its samples are conversion.samples.prompts",
                ),
                cel(
                    "self.model.format == 'huggingface' || !has(self.conversion) || "
                    "!has(self.conversion.samples) || !has(self.conversion.samples.prompts)",
                    "conversion.samples.prompts are for a huggingface checkpoint; a tensor model's samples are "
                    "conversion.samples.uri (an .npz) or generated",
                ),
                cel(
                    "!has(self.scaling) || !(self.scaling.metric.type in ['requestsWaiting', 'kvCacheUsage', "
                    "'timeToFirstToken']) || (has(self.serving.runtime) && self.serving.runtime == 'vllm')",
                    "scaling.metric requestsWaiting, kvCacheUsage and timeToFirstToken are the vLLM engine's: they "
                    "need serving.runtime vllm (a tensor model scales on queueTime, pendingRequests, inferenceRate or "
                    "gpuUtilization)",
                ),
                cel(
                    "!has(self.rollout) || !has(self.rollout.canary) || !has(self.rollout.canary.analysis) || "
                    "!has(self.rollout.canary.analysis.llm) || "
                    "(has(self.serving.runtime) && self.serving.runtime == 'vllm')",
                    "rollout.canary.analysis.llm checks the vLLM engine's metrics: it needs serving.runtime vllm",
                ),
                cel(
                    "has(self.conversion) || !self.model.uri.matches('^https?://')",
                    "an http(s):// model is fetched by the conversion stage: add a conversion section (with a "
                    "store), or publish the model as a Triton repository on pvc:// or s3://",
                ),
            ]
        }
    )

    model: ModelSource = Field(description="The model to serve and where to read it.")
    serving: Serving = Field(
        default_factory=Serving, description="How Triton serves it.", json_schema_extra={"default": _defaults(Serving)}
    )
    conversion: Conversion | None = Field(
        default=None,
        description="Convert, compress and validate the model before serving it. Without it, model.uri must hold "
        "a Triton model repository.",
    )
    traffic: Traffic | None = Field(
        default=None,
        description="Serve the model through a Gateway API Gateway: the operator owns one HTTPRoute for it, with a "
        "backend Service per revision. The model's own Service keeps selecting the stable revision.",
    )
    rollout: Rollout | None = Field(
        default=None,
        description="How a new revision replaces the serving one: blueGreen (the default: switch once it is ready) "
        "or canary (a share of the gateway's requests in steps, measured at each; needs traffic.gateway).",
    )
    scaling: Scaling | None = Field(
        default=None,
        description="Autoscale the serving revision on Triton's own metrics (queue time, pending requests, "
        "inference rate, GPU utilisation) or your PromQL, through KEDA (down to zero) or an HPA.",
    )

    @property
    def fixed_replicas(self) -> int:
        """The replica count without an autoscaler: serving.replicas, 1 when unset."""
        return self.serving.replicas if self.serving.replicas is not None else 1


# --- status ----------------------------------------------------------------------------------------------------


class RevisionStatus(Observed):
    name: str = Field(description="Revision: a hash of the spec parts that change what is served.")
    replicas: int = Field(default=0, description="Pods this revision asks for.")
    ready_replicas: int = Field(default=0, description="Pods of this revision that pass their readiness probe.")
    traffic_percent: int = Field(default=0, ge=0, le=100, description="Share of requests this revision receives.")
    model_repository: str | None = Field(
        default=None, description="The converted model repository this revision serves (with conversion)."
    )


class RetiredRevision(Observed):
    name: str = Field(description="The revision that served until a blue/green switch.")
    since: float = Field(description="When it stopped serving (epoch seconds).")


class RevisionsStatus(Observed):
    stable: RevisionStatus | None = Field(default=None, description="The revision that serves traffic.")
    latest: RevisionStatus | None = Field(
        default=None, description="The revision the current spec asks for; equals stable once it has rolled out."
    )
    retired: RetiredRevision | None = Field(
        default=None, description="After a blue/green switch: the revision that served before, kept (no longer "
        "selected, at weight 0 behind the gateway) for the drain period so that requests routed to it just before "
        "the switch are answered; then it is removed.")


class ModelDeploymentStatus(Observed):
    observed_generation: int | None = Field(default=None, description="The generation this status describes.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Ready and, as later stages land, the state of each stage.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    revisions: RevisionsStatus | None = Field(default=None, description="Revisions and their traffic.")
    replicas: int | None = Field(default=None, description="Pods the serving revision should have.")
    ready_replicas: int | None = Field(default=None, description="Pods of the serving revision that are ready.")
    url: str | None = Field(default=None, description="In-cluster URL of Triton's HTTP endpoint.")
    http_route: str | None = Field(default=None, description="The HTTPRoute the operator keeps for spec.traffic.")
    rollout: RolloutStatus | None = Field(
        default=None, description="The canary rollout in progress, or the one that ended for the latest revision.")
    scaling: ScalingStatus | None = Field(
        default=None, description="The autoscaler: its target revision, replicas, range and its own conditions.")


class ObjectMeta(Observed):
    name: str
    namespace: str = "default"
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class ModelDeployment(Observed):
    api_version: Literal["modelyard.dev/v1alpha1"] = "modelyard.dev/v1alpha1"
    kind: Literal["ModelDeployment"] = "ModelDeployment"
    metadata: ObjectMeta
    spec: ModelDeploymentSpec
    status: ModelDeploymentStatus = Field(default_factory=ModelDeploymentStatus)
