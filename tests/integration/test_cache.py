"""Integration: the watch-fed caches (kube/cache.py) against a real API server, as the operator's user with the
chart's RBAC. The reconcile reads only from them: once the model is served, a reconcile makes no request at all."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import pytest

from helpers import model_deployment, wait_for
from localcluster import LocalCluster
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.kube.cache import CachedKube, Caches, EventHandler
from modelyard.kube.client import DEPLOYMENTS, MODEL_DEPLOYMENTS, PODS, SERVICES, Kube, Obj, load_api_client
from modelyard.reconcile.model_deployment import Outcome, reconcile_model_deployment

pytestmark = pytest.mark.integration


class Seen:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[str, str, str]] = []

    def handler(self, kind: str) -> EventHandler:
        def handle(type_: str, obj: Obj) -> None:
            with self.lock:
                self.events.append((kind, type_, obj["metadata"]["name"]))
        return handle

    def of(self, kind: str, type_: str) -> list[str]:
        with self.lock:
            return [name for k, t, name in self.events if k == kind and t == type_]


@pytest.fixture
def cached(cluster: LocalCluster, namespace: str) -> Iterator[tuple[CachedKube, Seen]]:
    seen = Seen()
    api = load_api_client(str(cluster.operator_kubeconfig))
    caches = Caches(api, [namespace], {MODEL_DEPLOYMENTS: seen.handler("md"),
                                       DEPLOYMENTS: seen.handler("deployment")}).start()
    try:
        for res in caches.informers:  # the kinds watched on first use too: the operator's RBAC must allow each
            caches.usable(res)
        assert caches.wait_synced(60), "the caches did not list within 60 s"
        for res, informers in caches.informers.items():
            assert all(i.available for i in informers), f"{res.plural} cannot be listed as the operator"
        yield CachedKube(load_api_client(str(cluster.operator_kubeconfig)), "modelyard-operator", caches), seen
    finally:
        caches.stop()


def operator_requests(cluster: LocalCluster, since: int, namespace: str) -> list[str]:
    return [f"{e['verb']} {e['requestURI']}" for e in cluster.audit_events()[since:]
            if e.get("user", {}).get("username") == "modelyard-operator" and e.get("verb") != "watch"
            and f"/namespaces/{namespace}/" in e.get("requestURI", "")]


def reconcile(kube: CachedKube, namespace: str, name: str) -> Outcome:
    body = kube.get(MODEL_DEPLOYMENTS, namespace, name)
    assert body is not None
    return reconcile_model_deployment(kube, ModelDeployment.model_validate(body))


def test_a_served_model_reconciles_from_the_caches_without_a_request(
    cluster: LocalCluster, admin: Kube, namespace: str, cached: tuple[CachedKube, Seen]
) -> None:
    kube, seen = cached
    cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("cached", namespace, gpus=0)))
    wait_for("the model in the cache", lambda: kube.caches.stores[MODEL_DEPLOYMENTS].get(namespace, "cached"))
    assert "cached" in seen.of("md", "ADDED")
    wait_for("the model to be Ready from cached reads", lambda: reconcile(kube, namespace, "cached").ready,
             timeout=90, interval=0.5)
    time.sleep(1)  # the watch delivers the operator's own last writes: they must not look like changes
    mark = len(cluster.audit_events())
    for _ in range(3):
        outcome = reconcile(kube, namespace, "cached")
        assert outcome.ready and outcome.writes == 0, outcome
    time.sleep(1)  # the audit log is written as requests complete
    assert operator_requests(cluster, mark, namespace) == []

    # Pods and Deployments come from the cache as the API server has them.
    live = admin.list_by_labels(PODS, namespace, {"modelyard.dev/deployment": "cached"})
    assert {p["metadata"]["name"] for p in kube.list_by_labels(PODS, namespace, {"modelyard.dev/deployment":
                                                                               "cached"})} == \
        {p["metadata"]["name"] for p in live}

    # A child someone else deletes leaves the cache, wakes its model, and the next reconcile puts it back.
    deployment = admin.list_by_labels(DEPLOYMENTS, namespace, {"modelyard.dev/deployment": "cached"})[0]
    name = deployment["metadata"]["name"]
    admin.delete(DEPLOYMENTS, namespace, name)
    wait_for("the deletion in the cache", lambda: kube.caches.stores[DEPLOYMENTS].get(namespace, name) is None)
    assert name in seen.of("deployment", "DELETED")
    outcome = reconcile(kube, namespace, "cached")
    assert outcome.writes >= 1
    wait_for("the Deployment to be back", lambda: admin.get(DEPLOYMENTS, namespace, name) is not None)


def test_what_the_operator_deletes_leaves_the_cache_at_once_and_stays_gone(
    cluster: LocalCluster, namespace: str, cached: tuple[CachedKube, Seen]
) -> None:
    kube, _ = cached
    cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("gone", namespace, gpus=0)))
    wait_for("the model in the cache", lambda: kube.caches.stores[MODEL_DEPLOYMENTS].get(namespace, "gone"))
    reconcile(kube, namespace, "gone")
    assert kube.get(SERVICES, namespace, "gone") is not None  # written through: no watch event needed
    kube.delete(SERVICES, namespace, "gone")
    assert kube.caches.stores[SERVICES].get(namespace, "gone") is None
    time.sleep(2)  # the watch's MODIFIED/DELETED copies arrive meanwhile
    assert kube.caches.stores[SERVICES].get(namespace, "gone") is None


def test_a_read_the_cache_cannot_answer_yet_goes_to_the_api_server(
    cluster: LocalCluster, namespace: str
) -> None:
    """Until a kind's informers have listed, CachedKube asks the API server (as the operator, under the chart's
    rules): the handler's read of a model right after start-up gets the object, not None."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("early", namespace)))
    api = load_api_client(str(cluster.operator_kubeconfig))
    for _ in range(5):  # the informer's first list may win the race on a fast machine: then try again
        caches = Caches(api, [namespace])  # not started: the first read starts the informer, it has not listed
        try:
            mark = len(cluster.audit_events())
            body = CachedKube(api, "modelyard-operator", caches).get(MODEL_DEPLOYMENTS, namespace, "early")
            assert body is not None and body["metadata"]["name"] == "early"
            if any(r.startswith("get ") for r in operator_requests(cluster, mark, namespace)):
                return
        finally:
            caches.stop()
    raise AssertionError("in 5 tries the cache always answered first: the fallback read was never made")
