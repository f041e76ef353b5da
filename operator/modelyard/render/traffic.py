"""The canary's traffic objects: a Service per revision (the gateway's backend for it) and the model's HTTPRoute.

Pure, like every renderer; applied by modelyard.reconcile.traffic. The model's main Service (render/triton.py)
keeps selecting the stable revision for in-cluster clients that bypass the gateway.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from modelyard.api.names import (
    HTTP_PORT,
    LABEL_REVISION,
    child_metadata,
    common_labels,
    revision_object_name,
    server_selector,
    service_name,
)
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Traffic


def revision_service_name(md: ModelDeployment, revision: str) -> str:
    """<modeldeployment>-<revision>, as the revision's Deployment (another kind, so no clash)."""
    return revision_object_name(md, revision)


def render_revision_service(md: ModelDeployment, revision: str) -> dict[str, Any]:
    """A ClusterIP Service that selects one revision's Triton pods: the HTTPRoute's backend for that revision."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": child_metadata(md, revision_service_name(md, revision),
                                   {**common_labels(md), LABEL_REVISION: revision}),
        "spec": {
            "type": "ClusterIP",
            "selector": server_selector(md, revision),
            "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP",
                       "appProtocol": "http"}],
        },
    }


def render_http_route(md: ModelDeployment, traffic: Traffic, weights: Mapping[str, int]) -> dict[str, Any]:
    """The model's HTTPRoute: one rule, a backendRef per revision with its weight (percent).

    A revision at weight 0 stays listed: it gets no request, and moving traffic is a weight change only.
    """
    gw = traffic.gateway
    spec: dict[str, Any] = {
        "parentRefs": [r.model_dump(by_alias=True, exclude_none=True) for r in gw.parent_refs],
        "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": gw.path_prefix}}],
            "backendRefs": [
                {"name": revision_service_name(md, rev), "port": HTTP_PORT, "weight": weight}
                for rev, weight in sorted(weights.items())
            ],
        }],
    }
    if gw.hostnames:
        spec["hostnames"] = list(gw.hostnames)
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": child_metadata(md, service_name(md), common_labels(md)),
        "spec": spec,
    }
