"""spec.traffic's children: a Service per revision (the gateway's backend for it) and the model's HTTPRoute.

The weights come from the caller (blue/green: all to the serving revision; canary: the rollout's decision). A
revision listed at weight 0 keeps its backend Service and gets no request; a revision no longer listed loses it,
after the route stops naming it. Without spec.traffic, what an earlier spec.traffic made is removed.
"""

from __future__ import annotations

from collections.abc import Mapping

from modelyard.api.conditions import Reason
from modelyard.api.names import COMPONENT_SERVER, service_name
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.client import HTTP_ROUTES, SERVICES
from modelyard.reconcile.common import Stop, Writer, owned_by, owned_children
from modelyard.render.traffic import render_http_route, render_revision_service


def reconcile_traffic(writer: Writer, md: ModelDeployment, weights: Mapping[str, int]) -> str | None:
    """Bring the revision Services and the HTTPRoute in line; return the route's name (None without traffic)."""
    kube, ns, name = writer.kube, md.metadata.namespace, service_name(md)
    traffic = md.spec.traffic
    if traffic is None:
        if md.status.http_route:  # only a model that had a route is asked for one: no read per resync otherwise
            route = kube.get(HTTP_ROUTES, ns, md.status.http_route)
            if route is not None and owned_by(route, md):
                writer.delete(HTTP_ROUTES, ns, md.status.http_route)
            for svc in owned_children(kube, SERVICES, md, COMPONENT_SERVER).values():
                writer.delete(SERVICES, ns, svc["metadata"]["name"])
        return None

    route = kube.get(HTTP_ROUTES, ns, name)
    if route is not None and not owned_by(route, md):
        raise Stop(Reason.NAME_CONFLICT, f"HTTPRoute {ns}/{name} exists and is not owned by this ModelDeployment; "
                   "delete or rename it so the operator can create the model's route")
    services = owned_children(kube, SERVICES, md, COMPONENT_SERVER)
    for rev in weights:  # a backend exists before the route names it
        writer.ensure(services.get(rev), render_revision_service(md, rev))
    writer.ensure(route, render_http_route(md, traffic, weights))
    for rev, svc in services.items():  # and goes only once the route no longer names it
        if rev not in weights:
            writer.delete(SERVICES, ns, svc["metadata"]["name"])
    return name
