"""Names, labels, the field manager and the revision hash: conventions every layer shares."""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

from modelyard.api.v1alpha1 import API_VERSION, KIND, ModelDeployment, ModelDeploymentSpec

FIELD_MANAGER = "modelyard-operator"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_PART_OF = "app.kubernetes.io/part-of"
LABEL_DEPLOYMENT = "modelyard.dev/deployment"
"""Name of the owning ModelDeployment, on every child."""
LABEL_REVISION = "modelyard.dev/revision"
LABEL_METRICS = "modelyard.dev/metrics"
"""Marks pods and Services that expose Triton's Prometheus metrics (a PodMonitor/ServiceMonitor selects on it)."""
ANNOTATION_APPLIED = "modelyard.dev/applied-config-hash"
"""Hash of the configuration the operator last applied; unchanged hash + unchanged fields = no write."""
ANNOTATION_REPLICAS = "modelyard.dev/replicas"
"""On a Triton Deployment: `autoscaler` when spec.scaling owns its replica count (the operator's apply omits it)."""
ANNOTATION_PROMOTE = "rollout.modelyard.dev/promote"
"""Set by a person to a canary revision: promote it now (the operator never writes annotations)."""
ANNOTATION_ABORT = "rollout.modelyard.dev/abort"
"""Set by a person to a canary revision: roll it back now."""
ANNOTATION_RESUME = "rollout.modelyard.dev/resume"
"""Set by a person to <revision>/<step>: release the indefinite pause at that step (1-based) of that canary."""

MANAGED_BY = "modelyard"
REVISION_LENGTH = 10

HTTP_PORT = 8000
GRPC_PORT = 8001
METRICS_PORT = 8002


def _digest(data: Any) -> str:
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def revision_of(spec: ModelDeploymentSpec) -> str:
    """Content hash of the spec parts that change what is served.

    Replica count and scaling are left out: scaling a revision is not a new revision. So are traffic and rollout:
    how requests reach the model and how a revision replaces another do not change what a revision serves.
    """
    # exclude_none: a new optional field, unset, does not roll every deployed model to a new revision.
    served = spec.model_dump(mode="json", by_alias=True, exclude={"serving": {"replicas"}, "traffic": True,
                                                                    "rollout": True, "scaling": True},
                             exclude_none=True)
    return _digest(served)[:REVISION_LENGTH]


def config_hash(obj: dict[str, Any]) -> str:
    """Hash of a rendered object, recorded on it so that an unchanged object is not applied again."""
    return _digest(obj)[:16]


def revision_object_name(md: ModelDeployment, revision: str) -> str:
    """Name of a revision's Deployment: <modeldeployment>-<revision> (at most 40 + 1 + 10 characters)."""
    return f"{md.metadata.name}-{revision}"


def conversion_job_name(md: ModelDeployment, revision: str) -> str:
    """Name of a revision's conversion Job: <modeldeployment>-<revision>-convert (at most 59 characters)."""
    return f"{md.metadata.name}-{revision}-convert"


def service_name(md: ModelDeployment) -> str:
    return md.metadata.name


def selector_labels(md: ModelDeployment) -> dict[str, str]:
    """Labels that pick out every child of one ModelDeployment."""
    return {LABEL_DEPLOYMENT: md.metadata.name}


COMPONENT_SERVER = "inference-server"
COMPONENT_CONVERTER = "converter"


def server_selector(md: ModelDeployment, revision: str) -> dict[str, str]:
    """The Triton pods of one revision (and not its converter pod)."""
    return {**selector_labels(md), LABEL_COMPONENT: COMPONENT_SERVER, LABEL_REVISION: revision}


def common_labels(md: ModelDeployment, component: str = COMPONENT_SERVER) -> dict[str, str]:
    return {
        LABEL_NAME: "triton" if component == COMPONENT_SERVER else "modelyard-converter",
        LABEL_INSTANCE: md.metadata.name,
        LABEL_COMPONENT: component,
        LABEL_PART_OF: "modelyard",
        LABEL_MANAGED_BY: MANAGED_BY,
        **selector_labels(md),
    }


def owner_reference(md: ModelDeployment) -> dict[str, Any]:
    """Controller owner reference: deleting the ModelDeployment garbage-collects the child."""
    if not md.metadata.uid:
        raise ValueError("a ModelDeployment needs metadata.uid to own children (was it read from the API server?)")
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": md.metadata.name,
        "uid": md.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def child_metadata(md: ModelDeployment, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": md.metadata.namespace,
        "labels": labels,
        "ownerReferences": [owner_reference(md)],
    }


def url_of(md: ModelDeployment) -> str:
    return f"http://{service_name(md)}.{md.metadata.namespace}.svc:{HTTP_PORT}"


def traefik_backend(namespace: str, service: str, port: int) -> str:
    """Traefik's name for a Gateway API backend, the `service` label of its metrics (provider.Normalize of
    <namespace>-<service>-http-<port>: every run of other characters folded to '-')."""
    return "-".join(re.split(r"[^0-9A-Za-z]+", f"{namespace}-{service}-http-{port}")) + "@kubernetesgateway"

WEIGHTS_CONTAINER = "weights"
"""The LLM pod's init container that verifies the staged weights (its failures have reason WeightsUnverified)."""
