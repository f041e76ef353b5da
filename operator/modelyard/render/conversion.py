"""The conversion Job of one revision: runs the converter, which leaves its result in the termination message."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from modelyard.api.names import COMPONENT_CONVERTER, LABEL_REVISION, child_metadata, common_labels, conversion_job_name
from modelyard.api.v1alpha1 import API_VERSION, KIND, ModelDeployment, ModelFormat
from modelyard.codepolicy import DEFAULT_ALLOWED_MODULES
from modelyard.render.triton import MODEL_MOUNT, STORE_ENV_PREFIX, restricted_security, split_pvc

STORE_MOUNT = "/mnt/store"
SOURCE_MOUNT = "/mnt/source"
CONVERTER_UID = 65532
EXIT_CONVERSION_ERROR = 1
EXIT_INVALID_REQUEST = 2
STORE_PREFIX = STORE_ENV_PREFIX
"""Environment prefix of the store's credentials in the converter pod (STORE_AWS_ACCESS_KEY_ID, ...)."""


SCRATCH_MARGIN = 1 << 30
"""/tmp holds the source and what is made of it: twice conversion.maxSourceSize, plus this."""


@dataclass(frozen=True)
class Converter:
    """The conversion Jobs' image and what the operator's administrator allows them (chart values converter.*)."""

    image: str
    allowed_modules: tuple[str, ...] = DEFAULT_ALLOWED_MODULES
    """Modules that conversion.modelClass and kerasCustomObjects may name."""
    allowed_cidrs: tuple[str, ...] = ()
    """Non-public address ranges that http(s) sources may reach."""


def conversion_request(md: ModelDeployment) -> dict[str, Any]:
    """The manifest the converter reads: the ModelDeployment's name and spec, nothing else."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "metadata": {"name": md.metadata.name, "namespace": md.metadata.namespace},
        "spec": md.spec.model_dump(mode="json", by_alias=True, exclude_none=True),
    }


def render_conversion_job(md: ModelDeployment, revision: str, converter: Converter) -> dict[str, Any]:
    conv = md.spec.conversion
    assert conv is not None and conv.store, "render_conversion_job needs spec.conversion with a store"
    labels = {**common_labels(md, COMPONENT_CONVERTER), LABEL_REVISION: revision}
    scratch = 2 * conv.source_limit() + SCRATCH_MARGIN
    volumes: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {"sizeLimit": f"{scratch // (1 << 20)}Mi"}}]
    mounts: list[dict[str, Any]] = [{"name": "tmp", "mountPath": "/tmp"}]
    env_from: list[dict[str, Any]] = []
    if conv.store.startswith("s3://"):
        store_args = ["--store", conv.store]
        if conv.store_endpoint:
            store_args += ["--store-endpoint", conv.store_endpoint]
        if md.spec.model.format == ModelFormat.HUGGINGFACE:  # the Triton pod fetches the weights to its volume
            store_args += ["--served-store", MODEL_MOUNT]
        if conv.store_credentials_secret_ref:
            # Prefixed, so that the store's credentials and the source's (AWS_*) can differ.
            env_from.append({"secretRef": {"name": conv.store_credentials_secret_ref.name}, "prefix": STORE_PREFIX})
    else:
        claim, sub = split_pvc(conv.store)
        volumes.insert(0, {"name": "store", "persistentVolumeClaim": {"claimName": claim}})
        mounts.insert(0, {"name": "store", "mountPath": STORE_MOUNT})
        store_args = ["--store", "/".join(p for p in (STORE_MOUNT, sub) if p)]
        if md.spec.model.format == ModelFormat.HUGGINGFACE:  # model.json names the weights where Triton sees them
            store_args += ["--served-store", "/".join(p for p in (MODEL_MOUNT, sub) if p)]
    source = md.spec.model.uri
    if source.startswith("pvc://"):
        source_claim, _ = split_pvc(source)
        volumes.append({"name": "source", "persistentVolumeClaim": {"claimName": source_claim, "readOnly": True}})
        mounts.append({"name": "source", "mountPath": SOURCE_MOUNT, "readOnly": True})
    resources = {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"memory": "4Gi"}}
    if conv.resources:
        resources = {k: {n: str(v) for n, v in sorted(q.items())}
                     for k, q in (("requests", conv.resources.requests), ("limits", conv.resources.limits)) if q}
    container: dict[str, Any] = {
        "name": "converter",
        "image": converter.image,
        "args": [
            "--manifest-json", json.dumps(conversion_request(md), sort_keys=True, separators=(",", ":")),
            *store_args,
            "--source-root", SOURCE_MOUNT,
            "--confine",
            "--allowed-modules", ",".join(converter.allowed_modules),
            "--allowed-cidrs", ",".join(converter.allowed_cidrs),
            "--termination-log", "/dev/termination-log",
        ],
        # The image recorded in each manifest it writes: which converter made an artifact.
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "MODELYARD_CONVERTER_IMAGE", "value": converter.image}],
        "resources": resources,
        "securityContext": restricted_security(CONVERTER_UID, read_only_root=True),
        # The result is JSON in the termination message; a crash leaves the tail of the log there instead.
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": mounts,
    }
    if md.spec.model.credentials_secret_ref and source.startswith("s3://"):
        # Only where the scheme reads credentials: a Secret named beside another scheme (admission refuses that
        # since it was allowed, but an old object may still say it) is never handed to the converter.
        env_from.insert(0, {"secretRef": {"name": md.spec.model.credentials_secret_ref.name}})
    if env_from:
        container["envFrom"] = env_from
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True,
            "fsGroup": CONVERTER_UID,
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [container],
        "volumes": volumes,
    }
    if conv.node_selector:
        pod_spec["nodeSelector"] = dict(sorted(conv.node_selector.items()))
    if conv.tolerations:
        pod_spec["tolerations"] = [t.model_dump(by_alias=True, exclude_none=True) for t in conv.tolerations]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": child_metadata(md, conversion_job_name(md, revision), labels),
        "spec": {
            # A conversion or validation failure (exit 1) or a bad request (exit 2) will not pass on a retry;
            # anything else (an evicted pod, a flaky download) gets two more tries.
            "backoffLimit": 2,
            "podFailurePolicy": {"rules": [{
                "action": "FailJob",
                "onExitCodes": {"containerName": "converter", "operator": "In",
                                "values": [EXIT_CONVERSION_ERROR, EXIT_INVALID_REQUEST]},
            }]},
            "activeDeadlineSeconds": conv.timeout_seconds,
            "template": {"metadata": {"labels": dict(labels)}, "spec": pod_spec},
        },
    }
