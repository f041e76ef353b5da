"""A small typed layer over the kubernetes client: one field manager, server-side apply, plain dicts in and out."""

from __future__ import annotations

import copy
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Self

from kubernetes import client, config

from modelyard import __version__
from modelyard.api.names import FIELD_MANAGER
from modelyard.api.v1alpha1 import GROUP, PLURAL, VERSION

USER_AGENT = f"modelyard-operator/{__version__}"
Obj = dict[str, Any]


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def path(self, namespace: str, name: str | None = None, subresource: str | None = None) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        out = f"{base}/namespaces/{namespace}/{self.plural}"
        if name:
            out += f"/{name}"
        if subresource:
            out += f"/{subresource}"
        return out


DEPLOYMENTS = Resource("apps", "v1", "deployments")
SERVICES = Resource("", "v1", "services")
PODS = Resource("", "v1", "pods")
EVENTS = Resource("events.k8s.io", "v1", "events")
JOBS = Resource("batch", "v1", "jobs")
SECRETS = Resource("", "v1", "secrets")
HTTP_ROUTES = Resource("gateway.networking.k8s.io", "v1", "httproutes")
SCALED_OBJECTS = Resource("keda.sh", "v1alpha1", "scaledobjects")
HPAS = Resource("autoscaling", "v2", "horizontalpodautoscalers")
MODEL_DEPLOYMENTS = Resource(GROUP, VERSION, PLURAL)

_BY_KIND = {("apps/v1", "Deployment"): DEPLOYMENTS, ("v1", "Service"): SERVICES, ("batch/v1", "Job"): JOBS,
            ("gateway.networking.k8s.io/v1", "HTTPRoute"): HTTP_ROUTES,
            ("keda.sh/v1alpha1", "ScaledObject"): SCALED_OBJECTS,
            ("autoscaling/v2", "HorizontalPodAutoscaler"): HPAS}


def resource_of(obj: Obj) -> Resource:
    return _BY_KIND[(obj["apiVersion"], obj["kind"])]


def _items(listing: Obj) -> list[Obj]:
    """A list's items, each with the apiVersion and kind that list responses leave out of them."""
    kind = str(listing.get("kind", "")).removesuffix("List")
    return [{"apiVersion": listing.get("apiVersion"), "kind": kind, **item} for item in listing.get("items", [])]


def load_api_client(kubeconfig: str | None = None, pool_size: int | None = None) -> client.ApiClient:
    """An ApiClient from a kubeconfig file, the in-cluster service account, or ~/.kube/config, in that order;
    `pool_size` connections kept open (the client's default: 5 a core)."""
    cfg = client.Configuration()
    if pool_size is not None:
        cfg.connection_pool_maxsize = pool_size
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
    else:
        try:
            config.load_incluster_config(client_configuration=cfg)
        except config.ConfigException:
            config.load_kube_config(client_configuration=cfg)
    api = client.ApiClient(cfg)
    api.user_agent = USER_AGENT
    return api


REQUEST_TIMEOUT = (10.0, 60.0)
"""Seconds to connect, and to wait for a response, on each call: a connection that stops answering fails the call
(retried with back-off) instead of holding a reconcile worker, and the model it reconciles, for ever."""


class Kube:
    """Reads and writes the objects the operator manages. Every write is a server-side apply, a delete or an event;
    the leader election's Lease alone is created and replaced (compare-and-swap on its resourceVersion)."""

    def __init__(self, api: client.ApiClient, field_manager: str = FIELD_MANAGER) -> None:
        self.api = api
        self.field_manager = field_manager
        self.request_timeout = REQUEST_TIMEOUT

    def with_timeout(self, seconds: float) -> Self:
        """The same client, whose calls each give up after `seconds` (the leader election's, within its renew
        deadline: a leader must not wait on a call past the moment another replica may take the Lease)."""
        other = copy.copy(self)
        other.request_timeout = (min(REQUEST_TIMEOUT[0], seconds), seconds)
        return other

    def _call(self, method: str, path: str, *, body: Any = None, query: list[tuple[str, str]] | None = None,
              content_type: str = "application/json") -> Obj:
        result = self.api.call_api(
            path,
            method,
            query_params=query or [],
            header_params={"Content-Type": content_type, "Accept": "application/json"},
            body=body,
            response_type="object",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=True,
            _request_timeout=self.request_timeout,
        )
        return result if isinstance(result, dict) else {}

    def get(self, res: Resource, namespace: str, name: str) -> Obj | None:
        try:
            return self._call("GET", res.path(namespace, name))
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def list_by_labels(self, res: Resource, namespace: str, labels: dict[str, str]) -> list[Obj]:
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        return _items(self._call("GET", res.path(namespace), query=[("labelSelector", selector)]))

    def list_all_namespaces(self, res: Resource) -> list[Obj]:
        base = f"/apis/{res.group}/{res.version}" if res.group else f"/api/{res.version}"
        return _items(self._call("GET", f"{base}/{res.plural}"))

    def list_in(self, res: Resource, namespaces: list[str]) -> list[Obj]:
        """Every object of `res` in these namespaces (one request each), or in all namespaces when none are given:
        an operator told to watch some namespaces never reads the others."""
        if not namespaces:
            return self.list_all_namespaces(res)
        return [item for ns in namespaces for item in _items(self._call("GET", res.path(ns)))]

    def apply(self, obj: Obj, subresource: str | None = None, field_manager: str | None = None) -> Obj:
        """Server-side apply with this operator's field manager (or `field_manager`, for a field the operator hands
        to another manager), taking ownership of conflicting fields."""
        res = resource_of(obj) if subresource is None else MODEL_DEPLOYMENTS
        meta = obj["metadata"]
        return self._call(
            "PATCH",
            res.path(meta["namespace"], meta["name"], subresource),
            body=obj,
            query=[("fieldManager", field_manager or self.field_manager), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )

    def apply_status(self, obj: Obj) -> Obj:
        return self.apply(obj, subresource="status")

    def create(self, res: Resource, namespace: str, body: Obj) -> Obj | None:
        """Create, or None when the object exists already: a compare-and-swap for the leader election's Lease."""
        try:
            return self._call("POST", res.path(namespace), body=body)
        except client.ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def replace(self, res: Resource, namespace: str, name: str, body: Obj) -> Obj | None:
        """Update at the body's resourceVersion, or None when it moved: the leader election's compare-and-swap."""
        try:
            return self._call("PUT", res.path(namespace, name), body=body)
        except client.ApiException as exc:
            if exc.status == 409:
                return None
            raise

    def delete(self, res: Resource, namespace: str, name: str) -> None:
        try:
            self._call("DELETE", res.path(namespace, name), body={"propagationPolicy": "Background"})
        except client.ApiException as exc:
            if exc.status != 404:
                raise

    def event(self, regarding: Obj, *, type_: str, reason: str, note: str, action: str = "Reconcile") -> None:
        """Record an events.k8s.io/v1 Event about a ModelDeployment (shown by `kubectl describe`)."""
        meta = regarding["metadata"]
        moment = datetime.now(UTC)
        now = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        self._call(
            "POST",
            EVENTS.path(meta["namespace"]),
            body={
                "apiVersion": "events.k8s.io/v1",
                "kind": "Event",
                # Named as client-go names events: <object>.<hex nanoseconds>.
                "metadata": {"name": f"{meta['name']}.{time.time_ns():x}", "namespace": meta["namespace"]},
                "eventTime": now,
                "reportingController": f"{GROUP}/operator",
                "reportingInstance": socket.gethostname()[:128],
                "action": action,
                "reason": reason,
                "note": note[:1024],
                "type": type_,
                "regarding": {
                    "apiVersion": regarding["apiVersion"],
                    "kind": regarding["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta.get("uid", ""),
                },
            },
        )
