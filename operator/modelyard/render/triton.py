"""The Triton Inference Server Deployment of one revision, and the Service in front of the serving revision."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from modelyard.api.names import (
    ANNOTATION_REPLICAS,
    GRPC_PORT,
    HTTP_PORT,
    LABEL_METRICS,
    LABEL_REVISION,
    METRICS_PORT,
    WEIGHTS_CONTAINER,
    child_metadata,
    common_labels,
    revision_object_name,
    server_selector,
    service_name,
)
from modelyard.api.v1alpha1 import ModelDeployment, ModelFormat
from modelyard.api.v1alpha1.llm import LLM_TERMINATION_GRACE_SECONDS, Runtime
from modelyard.api.v1alpha1.types import DEFAULT_TRITON_IMAGE, DEFAULT_VLLM_IMAGE

MODEL_MOUNT = "/models"
TRITON_UID = 1000
"""The tritonserver images' `triton-server` user."""


class UnservableSource(ValueError):
    """The model source cannot be served as it is (the message says why and what to do)."""


@dataclass(frozen=True)
class ModelRepository:
    """Where Triton reads its model repository, and what the pod needs for that."""

    path: str
    volumes: tuple[dict[str, Any], ...] = ()
    mounts: tuple[dict[str, Any], ...] = ()
    env_from: tuple[dict[str, Any], ...] = ()


def split_pvc(uri: str) -> tuple[str, str]:
    """pvc://claim/some/path -> ("claim", "some/path")."""
    parts = urlsplit(uri)
    return parts.netloc, parts.path.strip("/")


def triton_s3_path(store: str, key: str, endpoint: str | None) -> str:
    """Triton's S3 repository path; outside AWS the endpoint goes in front: s3://http://host:port/bucket/path."""
    parts = urlsplit(store)
    location = "/".join(p for p in (parts.netloc, parts.path.strip("/"), key) if p)
    return f"s3://{endpoint.rstrip('/')}/{location}" if endpoint else f"s3://{location}"


def model_repository(md: ModelDeployment, converted: str | None = None) -> ModelRepository:
    """Map the model's location to Triton's --model-repository and the pod's volumes.

    With conversion, `converted` is the repository key the converter published under conversion.store, mounted
    read-only. Without it: pvc:// mounts the claim read-only; s3:// uses Triton's native S3 repository support,
    with credentials from the referenced Secret as environment variables (never in the pod spec itself).
    """
    conv = md.spec.conversion
    if conv is not None:
        if not converted or not conv.store:
            raise UnservableSource("the converted model repository is not known yet")
        if conv.store.startswith("s3://") and md.spec.model.format == ModelFormat.HUGGINGFACE:
            # The init container `weights` fetches the repository and the weights it names into the pod's volume
            # and verifies them there; Triton reads that verified copy, never the bucket.
            volume = {"name": "model-repository", "emptyDir": {}}
            mount = {"name": "model-repository", "mountPath": MODEL_MOUNT, "readOnly": True}
            return ModelRepository(path=f"{MODEL_MOUNT}/{converted}", volumes=(volume,), mounts=(mount,))
        if conv.store.startswith("s3://"):
            secret = conv.store_credentials_secret_ref
            return ModelRepository(
                path=triton_s3_path(conv.store, converted, conv.store_endpoint),
                env_from=({"secretRef": {"name": secret.name}},) if secret else (),
            )
        claim, sub = split_pvc(conv.store)
        volume = {"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model-repository", "mountPath": MODEL_MOUNT, "readOnly": True}
        path = "/".join(p for p in (MODEL_MOUNT, sub, converted) if p)
        return ModelRepository(path=path, volumes=(volume,), mounts=(mount,))
    uri = md.spec.model.uri
    parts = urlsplit(uri)
    if parts.scheme == "pvc":
        claim, sub = parts.netloc, parts.path.strip("/")
        volume = {"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
        mount = {"name": "model-repository", "mountPath": MODEL_MOUNT, "readOnly": True}
        return ModelRepository(
            path=f"{MODEL_MOUNT}/{sub}" if sub else MODEL_MOUNT, volumes=(volume,), mounts=(mount,)
        )
    if parts.scheme == "s3":
        secret = md.spec.model.credentials_secret_ref
        env_from = ({"secretRef": {"name": secret.name}},) if secret else ()
        return ModelRepository(path=uri, env_from=env_from)
    raise UnservableSource(
        f"{parts.scheme}:// sources are fetched by the conversion stage, which this operator version does not "
        "have yet; publish the model as a Triton model repository on a PVC (pvc://claim/path) or in S3 "
        "(s3://bucket/path)"
    )


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _resources(md: ModelDeployment) -> dict[str, Any]:
    serving = md.spec.serving
    requests = dict(serving.resources.requests or {}) if serving.resources else {}
    limits = dict(serving.resources.limits or {}) if serving.resources else {}
    if serving.gpus:
        limits[serving.gpu_resource_name] = str(serving.gpus)
    out: dict[str, Any] = {}
    if requests:
        out["requests"] = {k: str(v) for k, v in sorted(requests.items())}
    if limits:
        out["limits"] = {k: str(v) for k, v in sorted(limits.items())}
    return out


def revision_labels(md: ModelDeployment, revision: str) -> dict[str, str]:
    return {**common_labels(md), LABEL_REVISION: revision, LABEL_METRICS: "triton"}


def is_llm(md: ModelDeployment) -> bool:
    return md.spec.serving.runtime == Runtime.VLLM


def serving_image(md: ModelDeployment) -> str:
    """serving.image; with runtime vllm and the image left at the tensor default, Triton's vLLM image."""
    image = md.spec.serving.image
    return DEFAULT_VLLM_IMAGE if is_llm(md) and image == DEFAULT_TRITON_IMAGE else image


LLM_ENV = (
    # The engine reads the staged weights only: no hub, no telemetry.
    {"name": "HF_HUB_OFFLINE", "value": "1"},
    {"name": "TRANSFORMERS_OFFLINE", "value": "1"},
    {"name": "HF_HOME", "value": "/tmp/huggingface"},
    {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
    {"name": "DO_NOT_TRACK", "value": "1"},
)
LLM_STARTUP_MINUTES = 30
STORE_ENV_PREFIX = "STORE_"
"""The store's credentials' prefix in the converter image's environment (modelyard.convert.store)."""
"""An LLM's weights load and its engine profiles memory and captures graphs before the model is ready: the startup
probe allows this long."""


def shm_size(md: ModelDeployment) -> str:
    """/dev/shm: 1Gi for one process; with tensor or pipeline parallelism the engine's workers exchange
    activations through it (NCCL falls back to shared memory), 4Gi per GPU."""
    serving = md.spec.serving
    if is_llm(md) and serving.gpus > 1:
        return f"{4 * serving.gpus}Gi"
    return "1Gi"


EXIT_MARGIN_SECONDS = 5
"""Between Triton's --exit-timeout-secs and the pod's grace period: for unloading the model after the wait."""


def termination_grace(md: ModelDeployment) -> int | None:
    """The pod's terminationGracePeriodSeconds: the spec's; for an LLM, long enough for streams in flight; for a
    tensor model, None (Kubernetes' 30 s, Triton's own 30 s exit timeout)."""
    if md.spec.serving.termination_grace_period_seconds is not None:
        return md.spec.serving.termination_grace_period_seconds
    return LLM_TERMINATION_GRACE_SECONDS if is_llm(md) else None


def restricted_security(uid: int, read_only_root: bool = False) -> dict[str, Any]:
    """A container's securityContext that passes Pod Security "restricted", as user and group `uid`."""
    return {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        **({"readOnlyRootFilesystem": True} if read_only_root else {}),
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def weights_init_container(md: ModelDeployment, converted: str, image: str) -> dict[str, Any]:
    """The LLM pod's init container: verifies (from an s3:// store: fetches, then verifies) the repository and the
    staged weights it names before Triton starts (modelyard.convert.weights)."""
    conv = md.spec.conversion
    assert conv is not None and conv.store
    s3 = conv.store.startswith("s3://")
    if s3:
        root = MODEL_MOUNT
        endpoint = ["--store-endpoint", conv.store_endpoint] if conv.store_endpoint else []
        store_args = ["--store", conv.store, *endpoint, "--to", MODEL_MOUNT]
    else:
        root = "/".join(p for p in (MODEL_MOUNT, split_pvc(conv.store)[1]) if p)
        store_args = ["--store", root]
    container: dict[str, Any] = {
        "name": WEIGHTS_CONTAINER,
        "image": image,
        "command": ["python", "-m", "modelyard.convert.weights"],
        "args": [*store_args, "--key", converted, "--name", md.metadata.name, "--served-root", root,
                 "--termination-log", "/dev/termination-log"],
        "env": [{"name": "HOME", "value": "/tmp"}],
        "resources": {"requests": {"cpu": "500m", "memory": "256Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": restricted_security(TRITON_UID, read_only_root=True),
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # From a claim it only reads; into the pod's volume it writes the copy Triton then reads read-only.
        "volumeMounts": [{"name": "model-repository", "mountPath": MODEL_MOUNT, "readOnly": not s3},
                         {"name": "tmp", "mountPath": "/tmp"}],
    }
    if s3 and conv.store_credentials_secret_ref:
        container["envFrom"] = [{"secretRef": {"name": conv.store_credentials_secret_ref.name},
                                 "prefix": STORE_ENV_PREFIX}]
    return container


def render_triton_deployment(md: ModelDeployment, revision: str, converted: str | None = None,
                             weights_image: str | None = None) -> dict[str, Any]:
    """The Deployment that runs Triton for one revision of the model (`converted`: its repository key;
    `weights_image`: the converter image, whose init container verifies an LLM's staged weights)."""
    serving = md.spec.serving
    repo = model_repository(md, converted)
    labels = revision_labels(md, revision)
    pod_selector = server_selector(md, revision)
    llm = is_llm(md)
    if llm:
        # Loading an LLM takes minutes; once started, Ready means the model is ready, not just the server.
        probes = {"startupProbe": _probe("/v2/health/ready", 10, LLM_STARTUP_MINUTES * 6),
                  "readinessProbe": _probe(f"/v2/models/{md.metadata.name}/ready", 5, 3)}
    else:
        # Loading a large model can take minutes: the startup probe holds liveness off for up to 10 minutes.
        probes = {"startupProbe": _probe("/v2/health/ready", 10, 60),
                  "readinessProbe": _probe("/v2/health/ready", 5, 3)}
    container: dict[str, Any] = {
        "name": "triton",
        "image": serving_image(md),
        "command": ["tritonserver"],
        "args": [
            f"--model-repository={repo.path}",
            f"--http-port={HTTP_PORT}",
            f"--grpc-port={GRPC_PORT}",
            f"--metrics-port={METRICS_PORT}",
            "--strict-readiness=true",
            "--exit-on-error=true",
        ],
        "ports": [
            {"name": "http", "containerPort": HTTP_PORT, "protocol": "TCP"},
            {"name": "grpc", "containerPort": GRPC_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        **probes,
        "livenessProbe": _probe("/v2/health/live", 10, 3),
        "securityContext": restricted_security(TRITON_UID),
        "volumeMounts": [
            *repo.mounts,
            # The python backend and CUDA IPC exchange tensors through /dev/shm; the default 64 MiB is too small.
            {"name": "dshm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    grace = termination_grace(md)
    if grace is not None:  # Triton exits on its own, having finished what it could, before the pod is killed
        container["args"].append(f"--exit-timeout-secs={grace - EXIT_MARGIN_SECONDS}")
    resources = _resources(md)
    if resources:
        container["resources"] = resources
    if repo.env_from:
        container["envFrom"] = list(repo.env_from)
    if llm:
        container["env"] = list(LLM_ENV)

    pod_spec: dict[str, Any] = {
        "containers": [container],
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": TRITON_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "volumes": [
            *repo.volumes,
            {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm_size(md)}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }
    if grace is not None:
        pod_spec["terminationGracePeriodSeconds"] = grace
    if llm and md.spec.conversion is not None:
        if not weights_image or not converted:
            raise UnservableSource("the converter image that verifies the staged weights is not known")
        pod_spec["initContainers"] = [weights_init_container(md, converted, weights_image)]
    if serving.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(serving.node_selector.items()))
    if serving.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in serving.tolerations]
    if serving.affinity:
        pod_spec["affinity"] = serving.affinity.model_dump(by_alias=True, exclude_none=True)

    # With spec.scaling the replica count is the autoscaler's: the operator's apply leaves the field out, so that
    # server-side apply never takes it back (modelyard.reconcile.scaling hands it over).
    replicas = {} if md.spec.scaling is not None else {"replicas": md.spec.fixed_replicas}
    metadata = child_metadata(md, revision_object_name(md, revision), labels)
    if md.spec.scaling is not None:
        metadata["annotations"] = {ANNOTATION_REPLICAS: "autoscaler"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            **replicas,
            "selector": {"matchLabels": pod_selector},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "progressDeadlineSeconds": (LLM_STARTUP_MINUTES + 5) * 60 if llm else 900,
            "template": {
                "metadata": {
                    "labels": dict(labels),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(METRICS_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }


def render_service(md: ModelDeployment, serving_revision: str) -> dict[str, Any]:
    """The model's Service; it selects the pods of the revision that serves traffic."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(md, service_name(md), {**common_labels(md), LABEL_METRICS: "triton"}),
        "spec": {
            "type": "ClusterIP",
            "selector": server_selector(md, serving_revision),
            "ports": [
                {"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
                # gRPC is HTTP/2 without TLS: the Kubernetes-defined appProtocol for that is kubernetes.io/h2c.
                {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                 "appProtocol": "kubernetes.io/h2c"},
                {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP"},
            ],
        },
    }
