"""The analysis checks as PromQL (their numbers are tested against real Traefik series in test_gateway.py)."""

from __future__ import annotations

from modelyard.api.v1alpha1.rollout import Analysis
from modelyard.measure.promql import Backend, checks, custom, success_rate, traefik_service

CANARY = Backend("team-a", "resnet-b28f5967ad", 8000, "b28f5967ad")
STABLE = Backend("team-a", "resnet-1aa7a97de4", 8000, "1aa7a97de4")


def test_traefiks_name_for_a_gateway_backend() -> None:
    assert traefik_service(CANARY) == "team-a-resnet-b28f5967ad-http-8000@kubernetesgateway"
    assert traefik_service(Backend("a.b", "c_d", 80, "r")) == "a-b-c-d-http-80@kubernetesgateway"


def test_success_rate_counts_everything_but_5xx() -> None:
    assert success_rate(CANARY, "30s") == (
        '100 * sum(rate(traefik_service_requests_total{service="team-a-resnet-b28f5967ad-http-8000@kubernetesgateway",'
        'code!~"5.."}[30s])) / sum(rate(traefik_service_requests_total{service="team-a-resnet-b28f5967ad-http-8000'
        '@kubernetesgateway"}[30s]))')


def test_checks_follow_the_analysis_spec() -> None:
    analysis = Analysis.model_validate({"minSuccessRate": 99.5, "latency": {"maxMs": 200, "maxRatioToStable": 1.5},
                                        "custom": [{"name": "queue", "query": "q{rev=\"$canary\"}", "max": 5000}]})
    got = checks(analysis, CANARY, STABLE, "1m")
    assert [(c.name, c.threshold) for c in got] == [
        ("success-rate", ">= 99.5%"), ("latency-p99", "<= 200 ms"), ("latency-p99-vs-stable", "<= 1.5x"),
        ("queue", "<= 5000")]
    assert [c.passes(v) for c, v in zip(got, (99.5, 201, 1.4, 5000), strict=True)] == [True, False, True, True]
    assert "1aa7a97de4" in got[2].query and got[3].query == 'q{rev="b28f5967ad"}'
    assert Analysis.model_validate({"minSuccessRate": None}).min_success_rate is None


def test_custom_queries_name_the_revisions_and_their_backends() -> None:
    assert custom('x{s="$canary_service"} / y{r="$stable"}', CANARY, STABLE) == (
        'x{s="team-a-resnet-b28f5967ad-http-8000@kubernetesgateway"} / y{r="1aa7a97de4"}')
