"""The local cluster's traffic path: Traefik (Gateway API) splits real requests between real pods by HTTPRoute
weights, and Prometheus sees the gateway's per-backend counts. What canary rollouts are built on."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections import Counter
from typing import Any

import pytest

from helpers import model_deployment, wait_for
from localcluster import GATEWAY_NAME, GATEWAY_NAMESPACE, LocalCluster
from modelyard.api.names import HTTP_PORT
from modelyard.api.v1alpha1 import ModelDeployment
from modelyard.api.v1alpha1.rollout import Analysis, Measurement, Traffic
from modelyard.kube.client import MODEL_DEPLOYMENTS, Kube
from modelyard.measure.prometheus import Prometheus, measure
from modelyard.measure.promql import Backend, latency_ms
from modelyard.render.traffic import render_http_route
from modelyard.rollout.canary import verdict
from processkubelet.kubelet import ON_PROCESS_NODE

pytestmark = pytest.mark.integration

def backend(name: str, namespace: str, *behaviour: str) -> list[dict[str, Any]]:
    """Revision `name` of model split: a testbox pod answering its own name on /who (failing or slow as
    `behaviour` says), behind a Service named as the operator names a revision's (split-<revision>)."""
    return [
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
         "spec": {**ON_PROCESS_NODE, "terminationGracePeriodSeconds": 2, "containers": [{
             "name": "main", "image": "modelyard.local/testbox:1", "args": ["serve", "$(POD_IP)", "8080", *behaviour],
             "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}],
             "ports": [{"name": "http", "containerPort": 8080}],
             "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 1}}]}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": f"split-{name}", "namespace": namespace},
         "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": HTTP_PORT, "targetPort": "http"}]}},
    ]


def owner(cluster: LocalCluster, admin: Kube, namespace: str) -> ModelDeployment:
    """ModelDeployment `split`, owner of the rendered route (no operator runs in this tier: it only owns)."""
    cluster.kubectl("apply", "-f", "-", input=json.dumps(model_deployment("split", namespace)))
    return ModelDeployment.model_validate(admin.get(MODEL_DEPLOYMENTS, namespace, "split"))


def route(md: ModelDeployment, weights: dict[str, int]) -> dict[str, Any]:
    """The operator's own HTTPRoute renderer: the API server validates it against the Gateway API schema."""
    traffic = Traffic.model_validate({"gateway": {
        "parentRefs": [{"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE}],
        "hostnames": [f"split.{md.metadata.namespace}.local"]}})
    return render_http_route(md, traffic, weights)


def ask(cluster: LocalCluster, namespace: str, n: int) -> Counter[str]:
    answers: Counter[str] = Counter()
    for _ in range(n):
        req = urllib.request.Request(f"{cluster.gateway_url}/who", headers={"Host": f"split.{namespace}.local"})
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                answers[resp.read().decode()] += 1
        except urllib.error.HTTPError as exc:
            answers[f"{exc.code} from {exc.read().decode()}"] += 1
        except OSError as exc:
            answers[f"error: {exc}"] += 1
    return answers


def test_the_gateway_splits_real_traffic_by_route_weights(cluster: LocalCluster, admin: Kube, namespace: str) -> None:
    md = owner(cluster, admin, namespace)
    items = [*backend("stable", namespace), *backend("canary", namespace), route(md, {"stable": 80, "canary": 20})]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    for name in ("stable", "canary"):
        cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}", "--timeout=60s")

    def accepted() -> bool:
        status = json.loads(cluster.kubectl("get", "httproute", "-n", namespace, "split", "-o", "json").stdout)
        parents = status.get("status", {}).get("parents", [])
        return any(c["type"] == "Accepted" and c["status"] == "True" for p in parents for c in p["conditions"])

    wait_for("Traefik to accept the HTTPRoute", accepted, timeout=60)
    seen: list[Counter[str]] = []

    def answering() -> bool:
        seen.append(ask(cluster, namespace, 1))
        return seen[-1].keys() <= {"stable", "canary"}

    try:
        wait_for("the route to answer", answering, timeout=60)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {seen[-1]}\n{cluster.log_tail('traefik')}") from None

    answers = ask(cluster, namespace, 200)
    assert set(answers) == {"stable", "canary"}, answers  # no errors
    # Weighted round robin over 200 requests: 20% within a wide margin, not a coin that always lands one way.
    assert 20 <= answers["canary"] <= 60, answers

    cluster.kubectl("apply", "-f", "-", input=json.dumps(route(md, {"stable": 0, "canary": 100})))
    wait_for("all traffic on the canary", lambda: ask(cluster, namespace, 20) == Counter({"canary": 20}),
             timeout=60, interval=1)

    # The gateway's own per-backend counters reach Prometheus: a canary analysis reads them there.
    def counted() -> list[dict[str, Any]] | None:
        result = cluster.prometheus_query(
            f'sum by (service) (traefik_service_requests_total{{service=~"{namespace}-split-canary-.*"}})')
        return result if result and float(result[0]["value"][1]) >= answers["canary"] + 20 else None

    assert wait_for("Prometheus to count the canary's requests at the gateway", counted, timeout=60, interval=1)


def test_the_analysis_measures_real_gateway_traffic_and_tells_no_data_from_zero(
    cluster: LocalCluster, admin: Kube, namespace: str
) -> None:
    """A canary that fails 30% of its requests and answers 50 ms late, beside a healthy stable revision."""
    md = owner(cluster, admin, namespace)
    items = [*backend("stable", namespace), *backend("canary", namespace, "--fail-percent", "30", "--delay-ms", "50"),
             route(md, {"stable": 50, "canary": 50})]
    cluster.kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": items}))
    for name in ("stable", "canary"):
        cluster.kubectl("wait", "-n", namespace, "--for=condition=Ready", f"pod/{name}", "--timeout=60s")
    from_both = {"stable", "canary", "503 from canary"}
    wait_for("both backends to answer through the route", lambda: (a := ask(cluster, namespace, 10)).keys() <= from_both
             and "stable" in a and ("canary" in a or "503 from canary" in a), timeout=60, interval=1)
    answers = ask(cluster, namespace, 200)
    assert not any(k.startswith("error") for k in answers), answers
    assert answers["503 from canary"] > 0 and not any(k.endswith("from stable") for k in answers), answers

    analysis = Analysis.model_validate({"minRequests": 20, "minSuccessRate": 99,
                                        "latency": {"maxMs": 40, "maxRatioToStable": 2}})
    stable, canary = (Backend(namespace, f"split-{n}", HTTP_PORT, n) for n in ("stable", "canary"))
    prometheus = Prometheus(cluster.prometheus_url)

    def measured() -> Measurement | None:
        m = measure(prometheus, analysis, canary, stable, "1m", now=0)
        return m if m.requests >= 0.9 * answers.total() / 2 and all(c.value is not None for c in m.checks) else None

    m = wait_for("Prometheus to hold the interval's numbers", measured, timeout=60, interval=1)
    values = {c.name: c.value for c in m.checks}
    assert 60 <= (values["success-rate"] or 0) <= 80, m  # 30% failures, as the client saw them
    assert (values["latency-p99"] or 0) > 40, m  # every canary request sleeps 50 ms
    # The ratio is the canary's p99 over the stable's. Not "> 2": how fast the stable revision is depends on how
    # busy the machine is, and the suite makes no timing assertions.
    stable_p99 = prometheus.value(latency_ms(stable, 0.99, "1m"))
    assert stable_p99 and values["latency-p99-vs-stable"] == pytest.approx((values["latency-p99"] or 0) / stable_p99,
                                                                            rel=0.05), (m, stable_p99)
    outcome, summary = verdict(m, analysis)
    assert outcome == "failed" and "success-rate" in summary and "latency-p99" in summary, summary

    healthy = measure(prometheus, analysis.model_copy(update={"latency": None}), stable, canary, "1m", now=0)
    assert verdict(healthy, analysis)[0] == "passed", healthy
    # A backend without traffic has no data: inconclusive, never a 0% success rate that fails it.
    silent = measure(prometheus, analysis, Backend(namespace, "split-absent", HTTP_PORT, "absent"), stable, "1m", now=0)
    assert silent.requests == 0 and all(c.value is None and c.passed is None for c in silent.checks), silent
    assert verdict(silent, analysis)[0] == "inconclusive"
